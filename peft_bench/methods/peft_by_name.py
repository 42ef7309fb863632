"""Any PEFT method by its PeftType: `method=peft method.peft_type=OFT method.config={oft_block_size: 16}`.
The config class comes from PEFT's own mapping (PEFT_TYPE_TO_CONFIG_MAPPING), so a type PEFT adds runs
here without a list of ours to keep in sync. What a method can do with a model (merge, a 4-bit base,
GPT-2's Conv1D layers) is found by trying it, not declared: the adapter is built on the model's
architecture on the meta device (PEFT's own checks of targets and shapes run there), and on one layer of
the smallest adapted shape, where merging must give the unmerged outputs. Types that cannot run as a
single-task fine-tuning method are refused with the reason (NOT_APPLICABLE, mirrored in docs/methods.md)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import lru_cache

import torch
from peft import PeftConfig, PeftType, PromptLearningConfig, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from torch import nn
from transformers.pytorch_utils import Conv1D

from peft_bench.config import PeftByNameConfig
from peft_bench.methods.adapter import AdapterModule
from peft_bench.models import load_model_config, targeted

# PeftTypes that are not a method to fine-tune one model on one task, with the reason; every other type
# runs by name (tests/test_peft_types.py tries each on the tiny models)
NOT_APPLICABLE = {
    "XLORA": "a mixture of LoRA experts that must be trained first (it learns to route between them)",
    "POLY": "multi-task routing between LoRA modules: it needs a task id per example",
    "MULTITASK_PROMPT_TUNING": "a prompt shared across tasks, trained on several at once: needs task ids",
    "CARTRIDGE": "a KV-cache prefix distilled from a corpus (self-study), not trained on labelled data",
    "TRAINABLE_TOKENS": "trains the embeddings of named token ids (new special tokens), not a task adapter",
    "CPT": "context-aware prompt tuning: the prompt holds few-shot examples given by token ids, with "
    "its own loss on them (causal LM only)",
    "SHADOW": "fails in PEFT 0.21.2's forward on BERT and Llama alike ('ShadowCarrier' object has no "
    "attribute 'view')",
}

# types that need more than PEFT's config to run right, so only as an option of their own
ONLY_AS_OPTION = {
    "ADALORA": "use method=adalora: its rank budget is moved by allocator calls during training (and "
    "its rank is target_r), which the option makes",
}

# fields of a PEFT config that peft_bench sets itself (method.config may not set them)
OWN_FIELDS = ("task_type", "peft_type", "modules_to_save", "inference_mode", "base_model_name_or_path")


def config_class(peft_type: str) -> type[PeftConfig]:
    """PEFT's config class for a PeftType name; ValueError naming the valid ones."""
    try:
        kind = PeftType(str(peft_type).upper())
    except ValueError:
        valid = sorted(t.value for t in PeftType if t.value not in NOT_APPLICABLE)
        raise ValueError(
            f"method.peft_type={peft_type!r} is not a PEFT type; valid types are {valid}"
        ) from None
    if kind.value in NOT_APPLICABLE:
        raise ValueError(
            f"method.peft_type={kind.value} is not applicable here: {NOT_APPLICABLE[kind.value]}"
        )
    if kind.value in ONLY_AS_OPTION:
        raise ValueError(f"method.peft_type={kind.value} does not run by name: {ONLY_AS_OPTION[kind.value]}")
    return PEFT_TYPE_TO_CONFIG_MAPPING[kind]


def peft_kwargs(m: PeftByNameConfig, task_type: str, head: list[str]) -> dict:
    """The keyword arguments of the type's config class: method.config, then what peft_bench sets (the
    task type, the trained head, the target modules and layers where the class takes them, the rank into
    method.rank_field). ValueError, saying which, for a key the class does not have."""
    cls = config_class(m.peft_type)
    fields = {f.name for f in dataclasses.fields(cls)}
    if m.config is not None and not isinstance(m.config, dict):
        raise ValueError(
            f"method.config={m.config!r}: give the PEFT config's fields as a mapping, e.g. {{r: 8}}"
        )
    given = dict(m.config or {})
    unknown = sorted(set(given) - fields)
    if unknown:
        settable = sorted(fields - set(OWN_FIELDS) - {"peft_version", "auto_mapping", "revision"})
        raise ValueError(f"method.config: {cls.__name__} has no field {unknown}; its fields are {settable}")
    own = sorted(set(given) & set(OWN_FIELDS))
    if own:
        raise ValueError(f"method.config: {own} are set by peft_bench (the task's head and type), not here")
    if m.rank_field is not None and m.rank_field in given:
        raise ValueError(
            f"method.config.{m.rank_field}: the rank sets it (rank=, or method.r=); give it there, or "
            "method.rank_field=null to set it in method.config"
        )
    out = {"task_type": task_type, **given}
    if "modules_to_save" in fields and head:
        out["modules_to_save"] = head
    # a method.layers that is not a list of indices is checks.module_problems' to say
    layers = m.layers if isinstance(m.layers, list) and all(isinstance(i, int) for i in m.layers) else None
    if issubclass(cls, PromptLearningConfig) and layers:
        raise ValueError(
            f"method.layers: {cls.__name__} adds virtual tokens, no layer; set method.layers=null"
        )
    if not issubclass(cls, PromptLearningConfig):
        if "target_modules" in fields and "target_modules" not in given:
            out["target_modules"] = list(m.target_modules)
        if layers:
            if "layers_to_transform" not in fields:
                raise ValueError(f"method.layers: {cls.__name__} adapts every layer; set method.layers=null")
            out["layers_to_transform"] = layers
    if m.rank_field is not None:
        if m.rank_field not in fields:
            raise ValueError(
                f"method.rank_field={m.rank_field!r}: {cls.__name__} has no such field; name the field the "
                "top-level rank sets (e.g. r, num_virtual_tokens), or method.rank_field=null for a method "
                "without a rank"
            )
        out[m.rank_field] = m.r
    return out


def prompt_dims(model_config, kwargs: dict) -> dict:
    """A prompt method's model dimensions where PEFT does not find them itself (DistilBERT names them
    dim, n_heads, n_layers): the embedding width, heads and layers, from the model's config."""
    if not issubclass(config_class(kwargs["_type"]), PromptLearningConfig):
        return kwargs
    names = {
        "token_dim": ("hidden_size", "dim", "d_model", "n_embd"),
        "num_attention_heads": ("num_attention_heads", "n_heads", "n_head"),
        "num_layers": ("num_hidden_layers", "n_layers", "n_layer"),
    }
    out = dict(kwargs)
    for key, options in names.items():
        if out.get(key) is None:
            value = next((getattr(model_config, n) for n in options if getattr(model_config, n, None)), None)
            if value is not None:
                out[key] = value
    return out


def build_config(kwargs: dict) -> PeftConfig:
    """The config of kwargs (with `_type`: the PeftType name), or ValueError with PEFT's own reason (its
    __post_init__ checks values)."""
    args = dict(kwargs)
    cls = config_class(args.pop("_type"))
    try:
        return cls(**args)
    except (TypeError, ValueError) as e:
        raise ValueError(f"PEFT refuses {cls.__name__}({json.dumps(args, default=str)}): {e}") from None


def config_json(m: PeftByNameConfig, task_type: str, head: list[str]) -> str:
    """The config's keyword arguments with its type, as JSON: the key of the trials' caches."""
    return json.dumps({"_type": str(m.peft_type).upper(), **peft_kwargs(m, task_type, head)})


# --------------------------------------------------------------------------- what it can do, by trying


@dataclass(frozen=True)
class Capabilities:
    mergeable: bool  # merging one adapted layer gives its unmerged outputs
    conv1d: str | None  # None: it adapts GPT-2's Conv1D; else PEFT's reason it cannot
    four_bit: str | None  # None: it adapts a bitsandbytes 4-bit Linear; else the reason


class _OneLayer(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.proj = layer

    def forward(self, x):
        return self.proj(x)


def _inject(cfg_json: str, layer: nn.Module) -> nn.Module:
    """PEFT's model of one layer with the method's adapter on it (get_peft_model, not
    inject_adapter_in_model: VeRA-like types keep shared state on the tuner, which the latter refuses)."""
    kwargs = json.loads(cfg_json)
    for key in ("task_type", "modules_to_save", "layers_to_transform"):
        kwargs.pop(key, None)
    kwargs["target_modules"] = ["proj"]
    if "feedforward_modules" in {f.name for f in dataclasses.fields(config_class(kwargs["_type"]))}:
        kwargs["feedforward_modules"] = []  # IA3: the probe's layer as an attention projection
    return get_peft_model(_OneLayer(layer), build_config(kwargs))


def _trained(model: nn.Module) -> None:
    """Move every adapter weight off its initial value (many start as a no-op: B = 0, an identity
    rotation), so merging is tested on an update that changes the outputs."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.is_floating_point():
                p.add_(0.02 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def capabilities(cfg_json: str, fan_in: int, fan_out: int, bias: bool) -> Capabilities:
    """_capabilities on a forked RNG: trying a method must not move the run's random stream (a run
    that tried it, and one that found the answer cached, must train alike)."""
    with torch.random.fork_rng(devices=[]):
        return _capabilities(cfg_json, fan_in, fan_out, bias)


@lru_cache(maxsize=256)
def _capabilities(cfg_json: str, fan_in: int, fan_out: int, bias: bool) -> Capabilities:
    """What the method does with a Linear of (fan_in, fan_out), with or without a bias: merge it and
    unmerge it again (merged inference is measured in place, then undone), on a trained-looking adapter
    and random inputs; adapt a Conv1D of that shape; adapt a 4-bit Linear. (A virtual-token method
    targets no Linear: its callers find no shape to try.)"""
    torch.manual_seed(0)
    peft_model = _inject(cfg_json, nn.Linear(fan_in, fan_out, bias=bias)).eval()
    model = peft_model.get_base_model()  # the layer's module, adapted in place
    _trained(model)
    x = torch.randn(4, fan_in, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)
        try:  # the calls AdapterModule.merged makes
            peft_model.merge_adapter(safe_merge=True)
            merged = model(x)
            peft_model.unmerge_adapter()
            mergeable = torch.allclose(merged, before, rtol=1e-3, atol=1e-4) and torch.allclose(
                model(x), before, rtol=1e-3, atol=1e-4
            )
        except (NotImplementedError, ValueError, AttributeError, RuntimeError, TypeError):
            mergeable = False
    return Capabilities(
        mergeable=mergeable,
        conv1d=_refusal(cfg_json, _conv1d, fan_in, fan_out),
        four_bit=_refusal(cfg_json, _linear4bit, fan_in, fan_out),
    )


def _conv1d(fan_in: int, fan_out: int) -> nn.Module:
    return Conv1D(fan_out, fan_in)


def _linear4bit(fan_in: int, fan_out: int) -> nn.Module:
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(fan_in, fan_out, quant_type="nf4", compute_dtype=torch.float32)
    return layer.to("cpu")  # bitsandbytes quantizes the weight when it is moved to a device


def _refusal(cfg_json: str, make, fan_in: int, fan_out: int) -> str | None:
    """None if the method trains on the layer `make` builds (PEFT wraps it, a forward and a backward
    reach the adapter's weights); else the reason, in one line. Wrapping alone is not enough: a method
    without a 4-bit layer of its own wraps bitsandbytes' Linear4bit as a plain Linear and fails on its
    packed weight."""
    try:
        model = _inject(cfg_json, make(fan_in, fan_out)).get_base_model()
        _trained(model)
        # a batch of sequences, needing a gradient as it does inside a network
        x = torch.randn(2, 3, fan_in, generator=torch.Generator().manual_seed(2)).requires_grad_()
        model(x).float().sum().backward()
        if not any(p.grad is not None for p in model.parameters() if p.requires_grad):
            return "no adapter weight receives a gradient"
        return None
    except Exception as e:  # PEFT refuses a layer type in several ways (ValueError, TypeError, ...)
        return str(e).splitlines()[0][:200] or type(e).__name__


_META: dict[tuple[str, str], str | None] = {}  # (config, model) -> the problem: a sweep's jobs ask once


def meta_build_problem(cfg_json: str, model_key: str, make_model) -> str | None:
    """PEFT's own checks of the adapter on the model's architecture (targets, shapes, a decoder-only
    method on an encoder), built and run forward on the meta device: None, or its reason. A failure of
    the meta device itself (an SVD at init) says nothing of the method and is not reported."""
    key = (cfg_json, model_key)
    if key not in _META:
        problem = None
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            try:
                model = get_peft_model(make_model(), build_config(json.loads(cfg_json)))
                ids = torch.ones((2, 8), dtype=torch.long)  # a forward too: prefix tuning checks there
                model(input_ids=ids, attention_mask=torch.ones_like(ids))
            except NotImplementedError:
                pass
            except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as e:
                if "meta" not in str(e).lower():
                    problem = str(e).splitlines()[0][:300]
        _META[key] = problem
    return _META[key]


class PeftByNameModule(AdapterModule):
    method_cfg: PeftByNameConfig
    uses_layers = True  # where the type's config takes layers_to_transform (else refused up front)
    rank_bounded_by_width = False  # what the rank field means is the type's own; PEFT checks its values
    supports_4bit = True  # found by trying (trial_problems), not declared
    supports_conv1d = True

    @classmethod
    def trial_problems(cls, run, facts, task) -> list[str]:
        """The method tried on the model before it loads: the config PEFT would build, the adapter on the
        architecture (meta device), and a 4-bit base or Conv1D targets on one layer of their shape."""
        m = run.method
        head = list(run.model.head_modules) if task.trains_head else []
        try:
            cfg = config_json(m, task.peft_task_type, head)
            config = build_config(json.loads(cfg))
        except (ValueError, TypeError) as e:
            return [str(e)]
        kind = config.peft_type.value

        model_config = load_model_config(run.model, run.dataset.num_labels)
        cfg = json.dumps(prompt_dims(model_config, json.loads(cfg)))

        def make_model():
            return task.auto_class().from_config(model_config)

        problem = meta_build_problem(cfg, repr((run.model, run.dataset.num_labels, task.name)), make_model)
        if problem is not None:
            return [f"method={m.name} ({kind}) cannot adapt model {run.model.name}: {problem}"]
        targets = getattr(config, "target_modules", None)
        shapes = [facts.shapes[n] for n in targeted(facts.shapes, targets)]
        unmergeable = [
            f"method.export_merged=true: {kind} does not fold into the base weights (PEFT cannot merge it "
            "and unmerge it again here), so there is no merged model to export; set "
            "method.export_merged=false"
        ]
        if not shapes:  # virtual tokens (or no Linear targeted): nothing to merge
            return unmergeable if m.export_merged else []
        try:
            caps = capabilities(cfg, *min(shapes, key=min), True)
        except Exception as e:  # whatever PEFT raises on trying it is the reason it cannot
            return [f"method={m.name} ({kind}) cannot adapt one layer of model {run.model.name}'s shape: {e}"]
        out = unmergeable if m.export_merged and not caps.mergeable else []
        if run.model.quantization is not None and caps.four_bit:
            out.append(
                f"method={m.name} cannot train on a 4-bit base (model.quantization="
                f"{run.model.quantization}): PEFT has no bitsandbytes layer for {kind} ({caps.four_bit}); "
                "set model.quantization=null"
            )
        if targeted(facts.conv1d_names, targets) and caps.conv1d:
            out.append(
                f"method={m.name} cannot adapt {run.model.name}'s Conv1D layers (GPT-2 style): PEFT has no "
                f"Conv1D layer for {kind} ({caps.conv1d}); use a Llama-style model"
            )
        return out

    def peft_config(self, model_config=None) -> PeftConfig:
        """PEFT's config of this run (the model's dimensions filled in for a prompt method)."""
        cfg = config_json(self.method_cfg, self.task.task_type(), self.head_modules())
        self.config_json = json.dumps(prompt_dims(model_config, json.loads(cfg))) if model_config else cfg
        return build_config(json.loads(self.config_json))

    def build_model(self, backbone: nn.Module) -> nn.Module:
        """PEFT's model; whether it merges, found by trying on one layer of the smallest adapted shape."""
        linear = {  # (in, out, has a bias) of each Linear (GPT-2's Conv1D: its weight is (in, out))
            n: (
                *(mod.weight.shape if isinstance(mod, Conv1D) else mod.weight.shape[::-1]),
                mod.bias is not None,
            )
            for n, mod in backbone.named_modules()
            if isinstance(mod, nn.Linear | Conv1D)
        }
        config = self.peft_config(backbone.config)
        model = get_peft_model(backbone, config)
        self.prompt_learning = isinstance(config, PromptLearningConfig)
        # transformers' generate with cached virtual tokens parts from the forward (prompt tuning, measured
        # by check_generation): virtual-token methods generate without the KV cache
        self.use_kv_cache = not self.prompt_learning
        shapes = [linear[n] for n in targeted(linear, getattr(config, "target_modules", None))]
        smallest = min(shapes, key=lambda s: min(s[:2])) if shapes else None
        try:
            self.mergeable = bool(shapes) and capabilities(self.config_json, *smallest).mergeable
        except (ValueError, TypeError):  # accepted on the model, refused on one layer alone: not tried
            self.mergeable = False
        return model

    def forward(self, batch: dict) -> torch.Tensor:
        """The logits of the batch's own tokens: prompt tuning and P-tuning put their virtual tokens in
        front of a causal LM's sequence, and PEFT returns logits for them too."""
        logits = super().forward(batch)
        n = batch["input_ids"].shape[1]
        return logits[:, -n:] if logits.dim() == 3 and logits.shape[1] > n else logits
