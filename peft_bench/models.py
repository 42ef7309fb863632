"""Loading backbones and tokenizers from the `model` config: pretrained (Hub id or local folder) or
randomly initialised from an architecture spec (tiny models for tests), with the head of the task
(sequence classification or causal LM)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig
from transformers.pytorch_utils import Conv1D

from peft_bench.config import ModelConfig
from peft_bench.errors import PeftBenchError, prepare_command
from peft_bench.tasks import CLASSIFICATION, Task


def offline_hint() -> str:
    return (
        "not in the local cache and the Hugging Face Hub cannot be reached: where there is network (a login "
        f"node), `{prepare_command()}` fetches and caches it; or point model.pretrained at a local folder"
    )


def is_local(model: ModelConfig) -> bool:
    """Whether `pretrained` names a local folder rather than a Hub id."""
    return model.pretrained is not None and model.pretrained.startswith(("/", "./", "../", "~"))


# what each architecture calls the dropout on its attention probabilities (BERT; DistilBERT, Llama; GPT-2)
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")


def load_model_config(model: ModelConfig, num_labels: int | None) -> PretrainedConfig:
    """The architecture config alone (config.json): enough to know module names, no weights; with
    model.attention_dropout applied."""
    kwargs = {"num_labels": num_labels} if num_labels else {}
    if model.architecture is not None:
        spec = dict(model.architecture)
        config = AutoConfig.for_model(spec.pop("model_type"), **kwargs, **spec)
    else:
        if is_local(model) and not Path(model.pretrained).expanduser().is_dir():
            hint = f"; `{prepare_command()}` creates it" if model.prepare_with else ""
            raise PeftBenchError(f"model {model.name}: no folder {model.pretrained}{hint}")
        try:
            config = AutoConfig.from_pretrained(model.pretrained, **kwargs)
        except OSError as e:
            raise PeftBenchError(
                f"model {model.name}: cannot load the config of {model.pretrained!r}: "
                f"{offline_hint()} ({e.__class__.__name__})"
            ) from None
    if model.attention_dropout is not None:
        keys = [k for k in ATTENTION_DROPOUT_KEYS if hasattr(config, k)]
        if not keys:
            raise PeftBenchError(
                f"model.attention_dropout={model.attention_dropout}: model {model.name} "
                f"({config.model_type}) has none of the settings {list(ATTENTION_DROPOUT_KEYS)}; "
                "set model.attention_dropout=null to keep its own"
            )
        for k in keys:
            setattr(config, k, model.attention_dropout)
    return config


def adaptable_module_names(config: PretrainedConfig, task: Task = CLASSIFICATION) -> list[str]:
    """Qualified names of the Linear (and GPT-2 Conv1D) modules, built on the meta device."""
    with torch.device("meta"):
        model = task.auto_class().from_config(config)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear | Conv1D)]


def load_backbone(model: ModelConfig, task: Task, num_labels: int | None, **kwargs) -> nn.Module:
    """The model with the task's head; kwargs go to from_pretrained."""
    auto = task.auto_class()
    if model.architecture is not None:
        return auto.from_config(load_model_config(model, num_labels))
    config = load_model_config(model, num_labels)
    try:
        return auto.from_pretrained(model.pretrained, config=config, **kwargs)
    except OSError as e:
        raise PeftBenchError(
            f"model {model.name}: cannot load {model.pretrained!r}: {offline_hint()} ({e})"
        ) from None


def load_tokenizer(model: ModelConfig):
    name = model.tokenizer or model.pretrained
    try:
        return AutoTokenizer.from_pretrained(name)
    except OSError as e:
        raise PeftBenchError(
            f"model {model.name}: cannot load tokenizer {name!r}: {offline_hint()} ({e})"
        ) from None
