"""Loading backbones and tokenizers from the `model` config: pretrained (Hub id or local folder) or
randomly initialised from an architecture spec (tiny models for tests), with the head of the task
(sequence classification or causal LM)."""

from __future__ import annotations

import re
import tempfile
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


def adaptable_modules(
    config: PretrainedConfig, task: Task = CLASSIFICATION
) -> tuple[dict[str, bool], int, dict[str, tuple[int, int]]]:
    """({qualified name: is a GPT-2 Conv1D} of the Linear and Conv1D modules, the parameters in bias
    terms, {name: (in features, out features)} of those modules), from the model built on the meta
    device."""
    with torch.device("meta"):
        model = task.auto_class().from_config(config)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear | Conv1D)}
    kinds = {n: isinstance(m, Conv1D) for n, m in layers.items()}
    # nn.Linear keeps its weight as (out, in), GPT-2's Conv1D as (in, out)
    shapes = {n: tuple(m.weight.shape[::-1] if not kinds[n] else m.weight.shape) for n, m in layers.items()}
    return kinds, sum(p.numel() for n, p in model.named_parameters() if n.endswith(".bias")), shapes


def targeted(names, targets) -> list[str]:
    """The module names PEFT's target_modules select: a module name, or a suffix after a dot, of each in
    a list; a string is a regular expression the whole name must match (PEFT's rules)."""
    if not targets:
        return []
    if isinstance(targets, str):
        return [n for n in names if re.fullmatch(targets, n)]
    return [n for n in names if any(n == t or n.endswith("." + t) for t in targets)]


def adaptable_module_names(config: PretrainedConfig, task: Task = CLASSIFICATION) -> list[str]:
    """Qualified names of the Linear (and GPT-2 Conv1D) modules."""
    return list(adaptable_modules(config, task)[0])


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


# ------------------------------------------------------------------------------ 4-bit loading


def load_base(
    model: ModelConfig,
    task: Task,
    num_labels: int | None,
    device: str = "cpu",
    keep_full_precision: bool = False,
):
    """The base a method adapts: the model with its task head, its frozen base in 4 bits when
    model.quantization says so (a new task head stays in full precision). Returns the model and, for a
    4-bit base, its size in memory. Built the same way by a run and by whoever reloads its export.
    `keep_full_precision` (a 4-bit base): also return the Linear weights it was quantized from, by
    module name (LoftQ's init reads them)."""
    if model.quantization is None:
        return load_backbone(model, task, num_labels), None
    heads = list(model.head_modules) if task.trains_head else []
    return load_quantized_backbone(model, task, num_labels, heads, device, keep_full_precision)


def load_quantized_backbone(
    model: ModelConfig,
    task: Task,
    num_labels: int | None,
    skip_modules: list[str],
    device: str,
    keep_full_precision: bool = False,
):
    """The model with its frozen base in 4 bits (bitsandbytes through transformers' BitsAndBytesConfig:
    model.quantization nf4/fp4, double quantization per model.double_quant), ready for k-bit training.
    `skip_modules` (a new task head) stay in full precision: quantized, they could not be trained.
    Compute in bf16 on a bf16 GPU, fp32 elsewhere; placed on `device` (the run's, decided once).
    Returns the model and the base's size in memory (before adapters); with `keep_full_precision`,
    also the full-precision weight of each Linear module the 4-bit model quantized."""
    import bitsandbytes as bnb
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    cuda = device == "cuda"
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=model.quantization,
        bnb_4bit_use_double_quant=model.double_quant,
        bnb_4bit_compute_dtype=torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32,
        # a language model keeps transformers' default (lm_head and tied embeddings unquantized)
        llm_int8_skip_modules=skip_modules or None,
    )
    device_map = {"": torch.cuda.current_device() if cuda else "cpu"}
    full_precision = None
    if model.pretrained is not None and not keep_full_precision:
        loaded = load_backbone(model, task, num_labels, quantization_config=quant, device_map=device_map)
    else:  # quantization happens on loading: save the full-precision model and load it back
        with tempfile.TemporaryDirectory() as tmp:
            fp = load_backbone(model, task, num_labels)
            fp.save_pretrained(tmp)
            loaded = task.auto_class().from_pretrained(tmp, quantization_config=quant, device_map=device_map)
        if keep_full_precision:
            quantized = {n for n, m in loaded.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
            full_precision = {n: m.weight.detach() for n, m in fp.named_modules() if n in quantized}
        del fp
    for module in loaded.modules():
        # bitsandbytes 0.50 repacks 4-bit CPU weights for inference on the first eval forward (the
        # sanity check) and keeps that layout, whose kernel then breaks the next training step
        # ("a view of a leaf Variable ... in-place operation"): keep the trainable layout throughout.
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    base_bytes = loaded.get_memory_footprint()  # before adapters are added
    prepared = prepare_model_for_kbit_training(loaded, use_gradient_checkpointing=False)
    if keep_full_precision:
        return prepared, base_bytes, full_precision
    return prepared, base_bytes


def quantization_figures(
    trained: nn.Module, base_bytes: int, model: ModelConfig, task: Task, num_labels: int | None
) -> dict:
    """What 4-bit storage saved: the quantized Linear weights (packed values + quantization state) and
    the whole base, each against the same model in fp32."""
    import bitsandbytes as bnb

    config = load_model_config(model, num_labels)
    with torch.device("meta"):
        reference = task.auto_class().from_config(config)
    full_bytes = sum(p.numel() * 4 for p in reference.parameters())
    layers = [m for m in trained.modules() if isinstance(m, bnb.nn.Linear4bit)]
    quantized = sum(quantized_bytes(m.weight) for m in layers)
    quantized_fp32 = sum(4 * m.in_features * m.out_features for m in layers)
    return {
        "quant_type": model.quantization,
        "double_quant": model.double_quant,
        "base_weight_bytes": base_bytes,
        "base_weight_bytes_fp32": full_bytes,
        "base_weight_ratio": base_bytes / full_bytes,
        "quantized_linear_modules": len(layers),
        "quantized_linear_weight_bytes": quantized,
        "quantized_linear_weight_bytes_fp32": quantized_fp32,
        "quantized_linear_weight_ratio": quantized / max(1, quantized_fp32),
        "linear_modules": len(adaptable_module_names(config, task)),
    }


def quantized_bytes(weight) -> int:
    """Storage of a 4-bit weight: the packed values plus its quantization state (absmax, nested state)."""
    state = weight.quant_state.as_dict(packed=True)
    return weight.data.nbytes + sum(v.nbytes for v in state.values() if isinstance(v, torch.Tensor))
