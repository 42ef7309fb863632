"""Loading backbones and tokenizers from the `model` config: pretrained (Hub id or local folder) or
randomly initialised from an architecture spec (tiny models for tests)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PretrainedConfig
from transformers.pytorch_utils import Conv1D

from peft_bench.config import ModelConfig, PeftBenchError

OFFLINE_HINT = ("the Hugging Face Hub cannot be reached: fetch it once where there is network "
                "(it is then cached), or point at a local folder; set HF_HUB_OFFLINE=1 to use the cache only")


def load_model_config(model: ModelConfig, num_labels: int) -> PretrainedConfig:
    """The architecture config alone (config.json): enough to know module names, no weights."""
    if model.architecture is not None:
        spec = dict(model.architecture)
        return AutoConfig.for_model(spec.pop("model_type"), num_labels=num_labels, **spec)
    try:
        return AutoConfig.from_pretrained(model.pretrained, num_labels=num_labels)
    except OSError as e:
        raise PeftBenchError(f"model {model.name}: cannot load the config of {model.pretrained!r}: "
                             f"{OFFLINE_HINT} ({e.__class__.__name__})") from None


def adaptable_module_names(config: PretrainedConfig) -> list[str]:
    """Qualified names of the Linear (and GPT-2 Conv1D) modules, built on the meta device."""
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear | Conv1D)]


def load_backbone(model: ModelConfig, num_labels: int, **kwargs) -> nn.Module:
    """Sequence-classification model with its task head; kwargs go to from_pretrained."""
    if model.architecture is not None:
        return AutoModelForSequenceClassification.from_config(load_model_config(model, num_labels))
    try:
        return AutoModelForSequenceClassification.from_pretrained(model.pretrained, num_labels=num_labels, **kwargs)
    except OSError as e:
        raise PeftBenchError(f"model {model.name}: cannot load {model.pretrained!r}: {OFFLINE_HINT} ({e})") from None


def load_tokenizer(model: ModelConfig):
    name = model.tokenizer or model.pretrained
    try:
        return AutoTokenizer.from_pretrained(name)
    except OSError as e:
        raise PeftBenchError(f"model {model.name}: cannot load tokenizer {name!r}: {OFFLINE_HINT} ({e})") from None
