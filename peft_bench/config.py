"""Typed schemas for every config group, registered in Hydra's ConfigStore, and the semantic
checks that run on a composed config before any data or weights are touched."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from peft_bench.errors import ConfigError, DivergedError, PeftBenchError, prepare_command  # noqa: F401  (re-exported)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # the repo's conf/ (editable install)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # method, dataset and model names: table rows, cache folders
SEED_MAX = 2**32 - 1  # numpy's seed range, which seed_everything enforces


def name_problems(group: str, name: str) -> list[str]:
    if isinstance(name, str) and NAME.fullmatch(name):
        return []
    return [f"{group}.name={name!r}: use letters, digits, '_', '-' and '.' (at most 64, not starting with '.'): "
            "it names cache folders, run names and table rows"]


# --------------------------------------------------------------------------- method


@dataclass
class MethodConfig:
    _target_: str = MISSING  # the LightningModule class that carries out the method
    name: str = MISSING  # short name used in run names, tags and tables
    lr: float = MISSING  # peak learning rate of AdamW (linear warmup, then linear decay to 0)
    weight_decay: float = 0.01  # AdamW decoupled weight decay (not applied to biases and LayerNorms)
    warmup_ratio: float = 0.06  # fraction of optimizer steps spent warming up

    def problems(self) -> list[str]:
        out = name_problems("method", self.name)
        if not self.lr > 0:
            out.append(f"method.lr={self.lr}: the learning rate must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            out.append(f"method.warmup_ratio={self.warmup_ratio}: must be in [0, 1)")
        return out


@dataclass
class AdapterConfig(MethodConfig):
    """What every adapter method shares: rank, dropout, where the adapters go."""

    r: int = 8  # adapter rank; the top-level `rank` sets it
    dropout: float = 0.1  # dropout on the adapter's input
    target_modules: list[str] = MISSING  # module names (suffixes) that get adapters; the model group's default
    layers: Any = None  # list of transformer layer indices that get adapters; None = all
    export_merged: bool = False  # also save the model with the adapter folded in (<run_dir>/merged)

    def problems(self) -> list[str]:
        out = super().problems()
        if self.r < 1:
            out.append(f"method.r={self.r} (from rank={self.r}): the adapter rank must be >= 1")
        if not 0 <= self.dropout < 1:
            out.append(f"method.dropout={self.dropout}: must be in [0, 1)")
        if not self.target_modules:
            out.append("method.target_modules is empty: name at least one module to adapt")
        return out


@dataclass
class LoRAConfig(AdapterConfig):
    alpha: float = 16.0  # LoRA scaling numerator: the update is (alpha / r) * B A

    def problems(self) -> list[str]:
        out = super().problems()
        if not self.alpha > 0:
            out.append(f"method.alpha={self.alpha}: must be > 0")
        return out


@dataclass
class PruningConfig:
    target: float = "${sparsity}"  # type: ignore[assignment]  # target sparsity of the adapter weights
    schedule: str = "gradual"  # gradual (cubic, during training) | one_shot (after training)
    criterion: str = "magnitude_per_matrix"  # magnitude_per_matrix | magnitude_global | topk_per_row
    start_step: int | None = None  # first pruning step; None = 10% of the optimizer steps
    end_step: int | None = None  # step at which the target is reached; None = 70% of the optimizer steps
    every_n_steps: int = 100  # prune every N optimizer steps between start and end

    def problems(self) -> list[str]:
        from peft_bench.callbacks.pruning import check_pruning_args

        return check_pruning_args(self.target, self.schedule, self.criterion, self.every_n_steps)


@dataclass
class SparseLoRAConfig(LoRAConfig):
    l1_lambda: float = 1e-5  # weight of the L1 penalty lambda * sum |w| over the LoRA A and B matrices
    pruning: PruningConfig = field(default_factory=PruningConfig)  # magnitude pruning of the adapter

    def problems(self) -> list[str]:
        out = super().problems() + self.pruning.problems()
        if self.l1_lambda < 0:
            out.append(f"method.l1_lambda={self.l1_lambda}: must be >= 0")
        return out


@dataclass
class QLoRAConfig(LoRAConfig):
    quant_type: str = "nf4"  # 4-bit data type of the frozen base weights: nf4 or fp4
    double_quant: bool = True  # quantize the quantization constants too (~0.4 bit/param saved)

    def problems(self) -> list[str]:
        out = super().problems()
        if self.quant_type not in ("nf4", "fp4"):
            out.append(f"method.quant_type={self.quant_type!r}: valid values are 'nf4', 'fp4'")
        return out


@dataclass
class HiRAConfig(AdapterConfig):
    dropout: float = 0.0  # the update W0 * (B A) has high rank even from rank-r factors; no alpha scaling


@dataclass
class FullConfig(MethodConfig):
    pass


# --------------------------------------------------------------------------- dataset


@dataclass
class DatasetConfig:
    _target_: str = MISSING  # the LightningDataModule for this kind of task
    name: str = MISSING  # short name used in run names and tables
    task: str = "classification"  # classification | causal_lm: picks the model head, loss and metrics
    hub_id: str | None = None  # Hugging Face Hub dataset id, used when no data_files / generator is given
    hub_config: str | None = None  # the Hub dataset's configuration name, if it has several
    data_files: Any = None  # local file(s): a path, a list, or {train: ..., validation: ..., test: ...}
    generator: str | None = None  # "demo": sentences generated by the package itself (no download)
    generator_size: int = 2000  # examples the generator makes (train 80%, validation 10%, test 10%)
    text_field: str = "sentence"
    batch_size: int = 16
    eval_batch_size: int = 64
    val_fraction: float = 0.1  # fraction of train carved out for validation when the source has none
    test_fraction: float = 0.1  # fraction of train carved out for test when the source has no labelled test
    split_seed: int = 42  # fixed apart from the training seed, so every run of a sweep sees the same splits
    max_train_examples: int | None = None  # keep only the first N (shuffled) training examples; None = all
    num_workers: int = 0  # DataLoader workers; collation is cheap, and on few cores workers steal compute

    def problems(self) -> list[str]:
        out = name_problems("dataset", self.name)
        for path in data_file_paths(self.data_files):
            if not Path(path).is_file():
                out.append(f"dataset.data_files: no such file: {path}")
        if isinstance(self.data_files, dict) or isinstance(self.data_files, list | tuple):
            given = self.data_files.items() if isinstance(self.data_files, dict) else [("train", self.data_files)]
            for split, files in given:
                if not files:
                    out.append(f"dataset.data_files: no file given for {split}: name at least one")
        if isinstance(self.data_files, dict):
            unknown = [k for k in self.data_files if k not in ("train", "validation", "test")]
            if unknown:
                out.append(f"dataset.data_files: unknown split(s) {unknown}: the splits are train, validation, test")
            elif "train" not in self.data_files:
                out.append(f"dataset.data_files names no train file (got {sorted(self.data_files)}): add train: ...")
        if self.generator not in (None, "demo"):
            out.append(f"dataset.generator={self.generator!r}: valid values are null or 'demo'")
        if self.data_files is None and self.generator is None and not self.hub_id:
            out.append("dataset: give one of dataset.data_files=, dataset.generator= or dataset.hub_id=")
        if self.task not in TASKS:
            out.append(f"dataset.task={self.task!r}: valid values are {list(TASKS)}")
        for key in ("batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                out.append(f"dataset.{key}={getattr(self, key)}: must be >= 1")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            out.append(f"dataset.max_train_examples={self.max_train_examples}: must be >= 1, or null for all")
        if self.num_workers < 0:
            out.append(f"dataset.num_workers={self.num_workers}: must be >= 0")
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            out.append(f"dataset.val_fraction={self.val_fraction}, dataset.test_fraction={self.test_fraction}:"
                       " each must be in (0, 1) and together < 1")
        return out


TASKS = ("classification", "causal_lm")


@dataclass
class ClassificationDatasetConfig(DatasetConfig):
    _target_: str = "peft_bench.data.classification.TextClassificationDataModule"
    label_field: str = "label"
    num_labels: int = 2
    max_length: int = 128  # truncation length in tokens; batches are padded only to their longest example
    group_by_length: bool = False  # train batches of similar length (less padding; worth it for long texts)

    def problems(self) -> list[str]:
        out = super().problems()
        if self.max_length < 8:
            out.append(f"dataset.max_length={self.max_length}: must be >= 8")
        if self.num_labels < 2:
            out.append(f"dataset.num_labels={self.num_labels}: a classification task needs >= 2 classes")
        if self.text_field == self.label_field:
            out.append(f"dataset.text_field and dataset.label_field are both {self.text_field!r}")
        return out


@dataclass
class LMDatasetConfig(DatasetConfig):
    _target_: str = "peft_bench.data.causal_lm.CausalLMDataModule"
    task: str = "causal_lm"
    text_field: str = "text"
    block_size: int = 256  # tokens per packed training block (the text is concatenated, then cut)
    num_labels: int | None = None  # unused: the vocabulary is the output

    def problems(self) -> list[str]:
        out = super().problems()
        if self.block_size < 2:
            out.append(f"dataset.block_size={self.block_size}: must be >= 2")
        if self.max_train_examples is not None:
            out.append(f"dataset.max_train_examples={self.max_train_examples}: not used by causal language "
                       "modelling (its examples are packed blocks); cap training with trainer.max_steps=")
        return out


def data_file_paths(data_files: Any) -> list[str]:
    """Every path named by a `data_files` value (str, list, or split -> str/list mapping)."""
    if data_files is None:
        return []
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, dict):
        return [p for v in data_files.values() for p in data_file_paths(v)]
    return [str(p) for p in data_files]


# --------------------------------------------------------------------------- model


@dataclass
class ModelConfig:
    name: str = MISSING  # short name used in run names and tables
    pretrained: str | None = None  # Hub id or local folder of pretrained weights
    architecture: dict[str, Any] | None = None  # random init instead: {model_type: ..., <config kwargs>}
    tokenizer: str | None = None  # Hub id or folder; default: `pretrained`
    target_modules: list[str] = MISSING  # default adapter targets for this architecture (the seeds' q/v)
    target_sets: dict[str, list[str]] = field(default_factory=dict)  # named target sets: qv, qkvo, attn_ffn
    head_modules: list[str] = field(default_factory=list)  # task-head modules trained fully beside adapters
    num_layers: int = MISSING  # transformer layers, for layer-selective adapters
    prepare_with: str | None = None  # module whose prepare(folder) creates a missing local `pretrained` folder
    # dropout on the attention probabilities; null keeps the checkpoint's (BERT, DistilBERT, GPT-2: 0.1).
    # 0.0 by default: PyTorch's fused attention kernels on CPU take no dropout, so any attention dropout
    # sends every layer to the unfused path (measured 2.8-3.4x slower per 512-token step on MiniLM)
    attention_dropout: float | None = 0.0

    def problems(self) -> list[str]:
        if name_problems("model", self.name):
            return name_problems("model", self.name)
        if (self.pretrained is None) == (self.architecture is None):
            return [f"model {self.name}: set exactly one of model.pretrained and model.architecture"]
        if self.architecture is not None and "model_type" not in self.architecture:
            return [f"model {self.name}: model.architecture needs a model_type (e.g. distilbert)"]
        if self.pretrained is None and self.tokenizer is None:
            return [f"model {self.name}: a randomly initialised model needs model.tokenizer"]
        if self.attention_dropout is not None and not 0 <= self.attention_dropout < 1:
            return [f"model.attention_dropout={self.attention_dropout}: must be in [0, 1), or null for the checkpoint's"]
        return []


# --------------------------------------------------------------------------- trainer, logger


@dataclass
class TrainerConfig:
    accelerator: str = "auto"  # cpu, gpu, auto
    devices: Any = 1  # how many devices Lightning uses
    precision: str | None = None  # None: bf16-mixed on a bf16-capable GPU, else 32-true
    max_epochs: int = 3
    max_steps: int = -1  # -1: run max_epochs
    limit_train_batches: Any = None  # int (batches) or float (fraction); None = all
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    val_check_interval: Any = None  # validate every N steps (int) or fraction of an epoch (float)
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = 1.0  # clip the global gradient norm
    log_every_n_steps: int = 10  # also how often the loss is checked for NaN/inf on an accelerator
    deterministic: bool = False
    compile: bool = False  # torch.compile the model (inductor; needs a C++ compiler; first steps compile)
    # validation batches run before training (the longest first, so an evaluation OOM shows at once);
    # None: 1 on an accelerator, 0 on a CPU (where one 64 x 512-token batch costs seconds per job); -1: all
    num_sanity_val_steps: int | None = None


@dataclass
class NoLoggerConfig:
    _target_: str | None = None


@dataclass
class CSVLoggerConfig:
    _target_: str = "peft_bench.loggers.CSVLogger"  # Lightning's, appending across a resume
    save_dir: str = MISSING
    name: str = "csv"
    version: str = ""


@dataclass
class WandbLoggerConfig:
    _target_: str = "lightning.pytorch.loggers.WandbLogger"
    project: str = "peft_bench"
    entity: str | None = None
    name: str = MISSING  # the W&B run name
    group: str = MISSING  # the sweep, so a sweep's jobs sit together
    tags: list[str] = field(default_factory=list)
    job_type: str = "train"
    save_dir: str = MISSING
    offline: bool = False  # or WANDB_MODE=offline
    log_model: bool = False
    id: str | None = None  # W&B run id; the config derives it from the sweep and the job's overrides
    resume: str = "allow"  # continue the run with this id if it exists


# --------------------------------------------------------------------------- the run


@dataclass
class RunConfig:
    method: Any = MISSING
    dataset: Any = MISSING
    model: Any = MISSING
    trainer: TrainerConfig = MISSING
    logger: Any = MISSING
    rank: int = 8  # LoRA rank; a plain value (not a group) so `rank=2,4,8,16 -m` sweeps as typed
    sparsity: float = 0.5  # target adapter sparsity, used only when pruning (method=sparse_lora)
    seed: int = 42
    run_dir: str = MISSING  # where results.json, checkpoints and logs go
    cache_dir: str = MISSING  # tokenized datasets, shared by every job of a sweep
    run_name: str = MISSING
    checkpoint: bool = True  # save last and best (by val F1) checkpoints, adapter weights only
    # also save last.ckpt every N optimizer steps (null: at each validation and epoch end only)
    checkpoint_every_n_steps: int | None = None
    eval_before_training: bool = False  # also validate and test the un-tuned model (results: before_training)
    skip_completed: bool = True  # a job whose results.json says completed (same config) is not run again
    resume: bool = True  # continue from <run_dir>/checkpoints/last.ckpt when an earlier attempt left one


SCHEMAS = [  # (group, name, schema): a group option's yaml names its schema first in its defaults list
    (None, "run_schema", RunConfig),
    ("method", "lora_schema", LoRAConfig), ("method", "sparse_lora_schema", SparseLoRAConfig),
    ("method", "qlora_schema", QLoRAConfig), ("method", "hira_schema", HiRAConfig), ("method", "full_schema", FullConfig),
    ("dataset", "dataset_schema", ClassificationDatasetConfig), ("dataset", "lm_dataset_schema", LMDatasetConfig),
    ("model", "model_schema", ModelConfig), ("trainer", "trainer_schema", TrainerConfig),
    ("logger", "none_schema", NoLoggerConfig), ("logger", "csv_schema", CSVLoggerConfig),
    ("logger", "wandb_schema", WandbLoggerConfig),
]


def register_configs() -> None:
    for group, name, node in SCHEMAS:
        ConfigStore.instance().store(group=group, name=name, node=node)


# --------------------------------------------------------------------------- resolvers


def package_path(package: str, subpath: str = "") -> str:
    """Folder of an installed package (without importing it), e.g. a model shipped in a wheel."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PeftBenchError(f"package {package!r} is not installed: pip install {package.replace('_', '-')}")
    return str(Path(list(spec.submodule_search_locations)[0]) / subpath)


CONTROL_KEYS = ("skip_completed", "resume")  # say how to run, not what: they do not name a run


def overrides_key(overrides: list[str]) -> str:
    """A folder name that is a function of the command-line overrides alone: readable, then a hash."""
    ordered = sorted(o for o in overrides if o.lstrip("+~").split("=", 1)[0] not in CONTROL_KEYS)
    if not ordered:
        return "defaults"
    digest = hashlib.sha256("\n".join(ordered).encode()).hexdigest()[:8]
    readable = re.sub(r"[^A-Za-z0-9=.,+_-]+", "_", "_".join(ordered))[:80]
    return f"{readable}_{digest}"


def command_key() -> str:
    """This command's overrides (hydra.* aside) as a folder name: the same command finds the same
    folder again, so a re-run resumes or skips what is there. Read from the command line, as Hydra
    parses it, because a sweep resolves its folder before any config names the overrides; registered
    with use_cache, so a sweep's jobs reuse the value the launcher resolved (Hydra copies the cache)."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(sys.argv[1:])
    return overrides_key([o for o in args.overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))])


def sweep_id() -> str:
    """The sweep a job belongs to (its multirun folder), or the run folder for a single run."""
    hc = HydraConfig.get()
    return Path(hc.sweep.dir if hc.mode == RunMode.MULTIRUN else hc.run.dir).name


def job_key() -> str:
    """Stable id of one job: its sweep and its own overrides (the same across requeue and re-run)."""
    hc = HydraConfig.get()
    return hashlib.sha256(f"{sweep_id()}\n{overrides_key(list(hc.overrides.task))}".encode()).hexdigest()[:16]


def top_half(num_layers: int) -> list[int]:
    """Indices of the upper half of a model's layers, e.g. [3, 4, 5] of 6."""
    return list(range(num_layers // 2, num_layers))


def register_resolvers() -> None:
    for name, fn in (("pkg_path", package_path), ("sweep_id", sweep_id), ("top_half", top_half),
                     ("job_key", job_key)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
    if not OmegaConf.has_resolver("command_key"):
        OmegaConf.register_new_resolver("command_key", command_key, use_cache=True)


register_configs()
register_resolvers()


# --------------------------------------------------------------------------- semantic checks


def compose_job(overrides: list[str], run_dir: str | Path = "/dev/null") -> DictConfig:
    """The job config Hydra builds for these command-line overrides (one job), with HydraConfig set
    as inside a job (resolvers and hints read it) and the hydra node dropped, as a job sees it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"run_dir={run_dir}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def check_config(cfg: DictConfig) -> RunConfig:
    """Resolve and check a composed config; raise one ConfigError listing every problem.

    Touches no data and no weights: the target-module check builds the model on the meta device
    from its config alone."""
    run: RunConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]  # raises on missing values
    problems = [*run.method.problems(), *run.dataset.problems(), *run.model.problems(), *trainer_problems(run)]
    if not run.model.problems():
        problems += module_problems(run)
    if problems:
        raise ConfigError(problems)
    return run


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
    if t.log_every_n_steps < 1:
        out.append(f"trainer.log_every_n_steps={t.log_every_n_steps}: must be >= 1")
    if t.max_steps == 0 or t.max_steps < -1:
        out.append(f"trainer.max_steps={t.max_steps}: give a number of optimizer steps >= 1, or -1 for max_epochs")
    if t.max_steps == -1 and (t.max_epochs is None or t.max_epochs < 1):
        out.append(f"trainer.max_epochs={t.max_epochs}: trains nothing; give >= 1 (or trainer.max_steps=)")
    for key, what in (("limit_train_batches", "trains nothing"), ("limit_val_batches", "validates nothing "
                      "(validation picks the checkpoint to keep)"), ("limit_test_batches", "tests nothing")):
        value = getattr(t, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            out.append(f"trainer.{key}={value!r}: give a number of batches (int) or a fraction (float in (0, 1])")
        elif value <= 0:
            out.append(f"trainer.{key}={value}: {what}; give a number of batches >= 1, a fraction in (0, 1], or null")
        elif isinstance(value, float) and value > 1:
            out.append(f"trainer.{key}={value}: a fraction must be <= 1.0 (an int counts batches)")
    v = t.val_check_interval
    if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or v <= 0
                          or (isinstance(v, float) and v > 1)):
        out.append(f"trainer.val_check_interval={v!r}: give a number of batches >= 1, a fraction of an epoch "
                   "in (0, 1], or null for once per epoch")
    sanity = t.num_sanity_val_steps
    if sanity is not None and sanity < -1:
        out.append(f"trainer.num_sanity_val_steps={sanity}: give a number of batches >= 0, -1 for all, "
                   "or null (1 on an accelerator, 0 on a CPU)")
    if t.compile:
        compilers = [c for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c]
        if not any(shutil.which(c) for c in compilers):
            out.append(f"trainer.compile=true: torch.compile's inductor needs a C++ compiler and none of {compilers} "
                       "is on PATH: install one (apt-get install g++) or set trainer.compile=false")
    return out


_MODULE_NAMES: dict[str, list[str] | None] = {}  # per model and task: a sweep's jobs share one meta-device build


def module_names(run: RunConfig) -> list[str] | None:
    """The model's adaptable Linear module names (built on the meta device from its config), None if
    the architecture has no head for the task; PeftBenchError if its config cannot be read (not kept:
    a missing folder or an unreachable Hub may be mended within the process)."""
    from peft_bench.models import adaptable_module_names, load_model_config

    key = repr((run.model, run.dataset.num_labels, run.dataset.task))
    if key not in _MODULE_NAMES:
        model_config = load_model_config(run.model, run.dataset.num_labels)
        try:
            _MODULE_NAMES[key] = adaptable_module_names(model_config, run.dataset.task)
        except ValueError:  # transformers: no such head for this architecture
            _MODULE_NAMES[key] = None
    return _MODULE_NAMES[key]


_POSITIONS: dict[str, int | None] = {}


def position_limit(run: RunConfig) -> int | None:
    """The longest input the model's position embeddings take (None if it has no such limit, e.g. RoPE
    models report one but extrapolate; we still hold to the reported one)."""
    from peft_bench.models import load_model_config

    key = repr(run.model)
    if key not in _POSITIONS:
        config = load_model_config(run.model, run.dataset.num_labels)
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if limit is not None and config.model_type in ("roberta", "xlm-roberta", "camembert"):
            limit -= 2  # positions start after the padding index
        _POSITIONS[key] = limit
    return _POSITIONS[key]


def module_problems(run: RunConfig) -> list[str]:
    try:
        names = module_names(run)
    except PeftBenchError as e:
        return [str(e)]
    if names is None:
        return [f"model={run.model.name} has no {run.dataset.task} head for dataset={run.dataset.name}: "
                f"use a {'causal language model (gpt2, distilgpt2, smollm2, tiny_llama)' if run.dataset.task == 'causal_lm' else 'classification encoder (distilbert, bert_base, minilm, tiny)'}"]
    leaf = sorted({n.rsplit(".", 1)[-1] for n in names})
    out = []
    targets = getattr(run.method, "target_modules", None) or []
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n in names):
            out.append(f"method.target_modules: model {run.model.name} has no Linear module {t!r}; "
                       f"its Linear modules are {leaf}")
    limit = position_limit(run)
    length = run.dataset.block_size if run.dataset.task == "causal_lm" else run.dataset.max_length
    key = "block_size" if run.dataset.task == "causal_lm" else "max_length"
    if limit is not None and length > limit:
        out.append(f"dataset.{key}={length}: model {run.model.name} takes at most {limit} positions; "
                   f"give dataset.{key}<={limit}")
    layers = getattr(run.method, "layers", None) or []
    if not isinstance(layers, list) or not all(isinstance(i, int) for i in layers):
        return out + [f"method.layers={layers!r}: give a list of layer indices, e.g. [3,4,5], or null for all"]
    bad = [i for i in layers if not 0 <= i < run.model.num_layers]
    if bad:
        out.append(f"method.layers: {bad} out of range: model {run.model.name} has layers 0..{run.model.num_layers - 1}")
    return out
