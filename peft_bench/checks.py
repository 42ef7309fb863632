"""Semantic checks of a composed config, run before any data or weights are touched: every problem
is collected and raised at once as one ConfigError. Also `compose_job`, the config Hydra builds for a
job's overrides (tests, prepare, the benchmarks)."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import shutil
import time
import typing
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

from peft_bench.config import CONF_DIR, SEED_MAX, RunConfig
from peft_bench.errors import ConfigError, PeftBenchError
from peft_bench.models import adaptable_modules, load_model_config, targeted
from peft_bench.tasks import task_for


def compose_job(overrides: list[str], run_dir: str | Path = "/dev/null") -> DictConfig:
    """The job config Hydra builds for these command-line overrides (one job), with HydraConfig set
    as inside a job (resolvers and hints read it) and the hydra node dropped, as a job sees it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # quoted: a folder named from overrides (tune/<command>/...) holds '=' and ',' that Hydra would parse
        quoted = str(run_dir).replace("'", "\\'")
        cfg = compose("config", overrides=[*overrides, f"run_dir='{quoted}'"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def check_config(cfg: DictConfig) -> RunConfig:
    """Resolve and check a composed config; raise one ConfigError listing every problem.

    Touches no data and no weights: the target-module check builds the model on the meta device
    from its config alone."""
    try:
        run: RunConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except (MissingMandatoryValue, InterpolationToMissingValueError) as e:  # a ??? left unset
        key = re.search(r"Missing mandatory value: ?([\w.]+)", str(e))
        name = key.group(1) if key else getattr(e, "full_key", "") or "a value"
        raise ConfigError(
            [f"{name} is not set (the config leaves it ???): give it, e.g. {name}=..."]
        ) from None
    problems = [
        *run.method.problems(),
        *run.dataset.problems(),
        *run.model.problems(),
        *trainer_problems(run),
    ]
    if not run.model.problems():
        problems += module_problems(run)
    if problems:
        raise ConfigError(problems)
    return run


# trainer.strategy values that run: each process runs the whole command (train.py: rank 0 owns the folder)
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true")


def trainer_problems(run: RunConfig) -> list[str]:
    """Trainer and run values that would fail deep inside Lightning, or train nothing and still
    'complete' with the untrained model's scores."""
    t, out = run.trainer, []
    if not 0 <= run.seed <= SEED_MAX:
        out.append(f"seed={run.seed}: must be in [0, {SEED_MAX}]")
    if run.checkpoint_every_n_steps is not None and run.checkpoint_every_n_steps < 1:
        out.append(f"checkpoint_every_n_steps={run.checkpoint_every_n_steps}: must be >= 1, or null")
    if t.accumulate_grad_batches < 1:
        out.append(f"trainer.accumulate_grad_batches={t.accumulate_grad_batches}: must be >= 1")
    if t.early_stopping_patience is not None and t.early_stopping_patience < 1:
        out.append(
            f"trainer.early_stopping_patience={t.early_stopping_patience}: must be >= 1 (validations), "
            "or null to train to max_epochs / max_steps"
        )
    if t.log_every_n_steps < 1:
        out.append(f"trainer.log_every_n_steps={t.log_every_n_steps}: must be >= 1")
    if t.max_steps == 0 or t.max_steps < -1:
        out.append(
            f"trainer.max_steps={t.max_steps}: give a number of optimizer steps >= 1, or -1 for max_epochs"
        )
    if t.max_steps == -1 and (t.max_epochs is None or t.max_epochs < 1):
        out.append(f"trainer.max_epochs={t.max_epochs}: trains nothing; give >= 1 (or trainer.max_steps=)")
    out += batch_limit_problems(t)
    v = t.val_check_interval
    if v is not None and (
        isinstance(v, bool) or not isinstance(v, int | float) or v <= 0 or (isinstance(v, float) and v > 1)
    ):
        out.append(
            f"trainer.val_check_interval={v!r}: give a number of batches >= 1, a fraction of an epoch "
            "in (0, 1], or null for once per epoch"
        )
    clip = t.gradient_clip_val
    if clip is not None and not 0 <= clip < math.inf:
        out.append(
            f"trainer.gradient_clip_val={clip}: give the largest gradient norm, a finite number > 0 "
            "(0 or null: no clipping)"
        )
    return [*out, *device_problems(t), *process_problems(run)]


def batch_limit_problems(t) -> list[str]:
    """trainer.limit_{train,val,test}_batches: a count of batches or a fraction, never nothing."""
    out = []
    for key, what in (
        ("limit_train_batches", "trains nothing"),
        ("limit_val_batches", "validates nothing (validation picks the checkpoint to keep)"),
        ("limit_test_batches", "tests nothing"),
    ):
        value = getattr(t, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            out.append(
                f"trainer.{key}={value!r}: give a number of batches (int) or a fraction (float in (0, 1])"
            )
        elif value <= 0:
            out.append(
                f"trainer.{key}={value}: {what}; give a number of batches >= 1, a fraction in (0, 1], or null"
            )
        elif isinstance(value, float) and value > 1:
            out.append(f"trainer.{key}={value}: a fraction must be <= 1.0 (an int counts batches)")
    return out


def process_problems(run: RunConfig) -> list[str]:
    """The strategy, devices and batch of a job of several processes, sanity steps, torch.compile."""
    t, out = run.trainer, []
    if t.strategy not in STRATEGIES:
        out.append(
            f"trainer.strategy={t.strategy!r}: give one of {', '.join(STRATEGIES)} (spawned, sharded and "
            "DeepSpeed strategies are not supported: each process must run the command itself)"
        )
    devices = t.devices if isinstance(t.devices, int) and not isinstance(t.devices, bool) else None
    if devices and devices > 1 and run.dataset.batch_size % devices:
        out.append(
            f"dataset.batch_size={run.dataset.batch_size} is the batch of the whole job: it must divide "
            f"over its trainer.devices={devices} processes"
        )
    sanity = t.num_sanity_val_steps
    if sanity is not None and sanity < -1:
        out.append(
            f"trainer.num_sanity_val_steps={sanity}: give a number of batches >= 0, -1 for all, "
            "or null (1 on an accelerator, 0 on a CPU)"
        )
    if t.compile:
        compilers = [c for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c]
        if not any(shutil.which(c) for c in compilers):
            out.append(
                "trainer.compile=true: torch.compile's inductor needs a C++ compiler and none of "
                f"{compilers} "
                "is on PATH: install one (apt-get install g++) or set trainer.compile=false"
            )
    return out


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def precisions() -> list[str]:
    """Lightning's precision values (its own list, so a new one is valid here the day Lightning has it)."""
    from lightning.fabric.connector import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    return [*typing.get_args(_PRECISION_INPUT_STR), *typing.get_args(_PRECISION_INPUT_STR_ALIAS)]


def runs_here() -> bool:
    """Whether this process is on the machine that will train: not the launching process of a SLURM
    sweep (a login node), whose jobs run elsewhere."""
    try:
        launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    except ValueError:  # outside Hydra
        return True
    return "Slurm" not in launcher or "SLURM_JOB_ID" in os.environ


def device_problems(t) -> list[str]:
    """An accelerator or precision Lightning would refuse only after the data has loaded. The device is
    this machine's: a SLURM sweep's pre-check on a login node without a GPU leaves it to the job, which
    checks again on its node."""
    import torch

    out = []
    accelerator = str(t.accelerator).lower()
    if accelerator not in ACCELERATORS:
        out.append(f"trainer.accelerator={t.accelerator!r}: valid values are {list(ACCELERATORS)}")
    elif runs_here():
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            out.append(
                f"trainer.accelerator={t.accelerator}: no CUDA GPU is visible to this process "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}, torch "
                f"{torch.__version__}); use trainer.accelerator=cpu or auto, or run on a GPU node"
            )
        if accelerator == "mps" and not torch.backends.mps.is_available():
            out.append("trainer.accelerator=mps: Apple's MPS is not available here; use cpu or auto")
    if t.precision is not None:
        valid = precisions()
        if str(t.precision) not in valid:
            out.append(
                f"trainer.precision={t.precision!r}: valid values are {valid}, or null (from the device)"
            )
        elif str(t.precision).startswith("transformer-engine"):
            if importlib.util.find_spec("transformer_engine") is None:
                out.append(
                    f"trainer.precision={t.precision}: needs NVIDIA's transformer_engine, not installed"
                )
        elif str(t.precision) in ("16", "16-mixed") and (
            accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
        ):
            out.append(
                f"trainer.precision={t.precision}: float16 mixed precision needs a GPU; on a CPU use "
                "bf16-mixed or 32-true"
            )
    return out


@dataclass(frozen=True)
class ModelFacts:
    """What the checks need to know of a model, read from its config.json alone (no weights)."""

    linear_names: list[str] | None  # adaptable Linear / Conv1D modules; None: no head for the task
    conv1d_names: list[str]  # those of them that are GPT-2 Conv1D layers
    bias_params: int  # parameters in bias terms
    position_limit: int | None  # the longest input its position embeddings take
    shapes: dict[str, tuple[int, int]]  # (in, out) features of each adaptable module
    encoder: bool = False  # an encoder asked to predict the next token (refused: it sees the future)


_FACTS: dict[str, ModelFacts] = {}  # per model and task: a sweep's jobs share one meta-device build


_UNREADABLE: dict[str, tuple[float, PeftBenchError]] = {}  # key -> (when, why): a failure, kept briefly
UNREADABLE_KEPT_S = 60.0


# encoder architectures transformers gives a causal-LM head (BertLMHeadModel, ...): unless configured as
# a decoder, their attention sees the tokens they are to predict, and the perplexity says nothing
ENCODERS = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "megatron-bert"})


def bidirectional_lm(config, task) -> bool:
    """Whether a next-token task would run on an encoder that attends to the future (not a decoder)."""
    return (
        task.auto_class_name == "AutoModelForCausalLM"
        and config.model_type in ENCODERS
        and not getattr(config, "is_decoder", False)
    )


def model_facts(run: RunConfig) -> ModelFacts:
    """The model's facts, built once per process from its config on the meta device; PeftBenchError if
    its config cannot be read. A failure is kept for a minute only: the 200 jobs of one pre-check ask
    once (not 200 times, each retrying an unreachable Hub), and a mended folder is seen soon after."""
    task = task_for(run.dataset)
    key = repr((run.model, run.dataset.num_labels, task.name))
    if key in _UNREADABLE and time.monotonic() - _UNREADABLE[key][0] < UNREADABLE_KEPT_S:
        raise _UNREADABLE[key][1]
    if key not in _FACTS:
        try:
            config = load_model_config(run.model, run.dataset.num_labels)
        except PeftBenchError as e:
            _UNREADABLE[key] = (time.monotonic(), e)
            raise
        encoder = bidirectional_lm(config, task)
        try:
            if encoder:
                raise ValueError("an encoder as a causal LM")
            kinds, bias, shapes = adaptable_modules(config, task)
            names, conv1d = list(kinds), [n for n, is_conv1d in kinds.items() if is_conv1d]
        except ValueError:  # transformers: no such head for this architecture
            names, conv1d, bias, shapes = None, [], 0, {}
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if limit is not None and config.model_type in ("roberta", "xlm-roberta", "camembert"):
            limit -= 2  # positions start after the padding index
        _FACTS[key] = ModelFacts(names, conv1d, bias, limit, shapes, encoder)
    return _FACTS[key]


def rank_problems(run: RunConfig, module: type, facts: ModelFacts, targets: list[str]) -> list[str]:
    """A rank above the width of a layer it adapts is no longer a low-rank adapter: from r = in*out /
    (in + out) it trains more parameters than the layer, and PiSSA's SVD of it fails. Refused unless
    the method's rank is not the rank of a per-layer update (VeRA's shared projections, LoKr's factor:
    `rank_bounded_by_width = False`)."""
    r = getattr(run.method, "r", None)
    if not isinstance(r, int) or r < 1 or not getattr(module, "rank_bounded_by_width", False):
        return []
    adapted = {n: facts.shapes[n] for n in targeted(facts.shapes, targets)}
    if not adapted:
        return []
    name, (fan_in, fan_out) = min(adapted.items(), key=lambda kv: min(kv[1]))
    width = min(fan_in, fan_out)
    if r <= width:
        return []
    return [
        f"method.r={r}: above the width of a layer it adapts ({name} of model {run.model.name} is "
        f"{fan_in} -> {fan_out}): a rank-{r} update of it is not low-rank (the adapter has more parameters "
        f"than the layer); give rank <= {width}, or use method=full"
    ]


def length_problems(run: RunConfig, task, limit: int | None) -> list[str]:
    """The dataset's lengths against the model's positions: the task's length key; for generation also
    a prompt with its new tokens, and the forgetting probe's blocks."""
    if limit is None:
        return []
    d, name, out = run.dataset, run.model.name, []
    key = task.length_key
    if getattr(d, key) > limit:
        out.append(
            f"dataset.{key}={getattr(d, key)}: model {name} takes at most {limit} positions; give <= {limit}"
        )
    if hasattr(d, "max_new_tokens") and d.max_prompt_length + d.max_new_tokens > limit:
        out.append(
            f"dataset.max_prompt_length + dataset.max_new_tokens = {d.max_prompt_length} + "
            f"{d.max_new_tokens}: model {name} takes at most {limit} positions; give a sum <= {limit}"
        )
    if getattr(d, "forgetting_tokens", 0) and d.forgetting_block_size > limit:
        out.append(
            f"dataset.forgetting_block_size={d.forgetting_block_size}: model {name} takes at most {limit} "
            f"positions; give <= {limit}"
        )
    return out


def module_problems(run: RunConfig) -> list[str]:
    task = task_for(run.dataset)
    try:
        facts = model_facts(run)
    except PeftBenchError as e:
        return [str(e)]
    names = facts.linear_names
    if names is None:
        why = " (an encoder: its attention would see the tokens it predicts)" if facts.encoder else ""
        return [
            f"model={run.model.name} has no {task.label} head for dataset={run.dataset.name}{why}: "
            f"use {task.models_hint}"
        ]
    leaf = sorted({n.rsplit(".", 1)[-1] for n in names})
    out = []
    targets = list(getattr(run.method, "target_modules", None) or [])
    targets += [t for t in getattr(run.method, "feedforward_modules", None) or [] if t not in targets]
    for t in targets:
        if not targeted(names, [t]):
            out.append(
                f"method.target_modules: model {run.model.name} has no Linear module {t!r}; "
                f"its Linear modules are {leaf}"
            )
    conv1d = targeted(facts.conv1d_names, targets)
    module = get_class(run.method._target_)
    out += module.config_problems(run.method, run.model, conv1d, facts.bias_params)
    out += module.trial_problems(run, facts, task)
    out += rank_problems(run, module, facts, targets)
    out += length_problems(run, task, facts.position_limit)
    layers = getattr(run.method, "layers", None) or []
    if not isinstance(layers, list) or not all(isinstance(i, int) for i in layers):
        return out + [
            f"method.layers={layers!r}: give a list of layer indices, e.g. [3,4,5], or null for all"
        ]
    bad = [i for i in layers if not 0 <= i < run.model.num_layers]
    if bad:
        out.append(
            f"method.layers: {bad} out of range: model {run.model.name} has layers "
            f"0..{run.model.num_layers - 1}"
        )
    return out
