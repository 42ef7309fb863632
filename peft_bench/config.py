"""Typed schemas for every config group, registered in Hydra's ConfigStore: a typo'd key or a wrong
type fails at compose time. Each schema's `problems()` lists what is wrong with its values; checks.py
collects them (with the checks that need the model) before any data or weights are touched."""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from peft_bench.resolvers import CONF_DIR, flatten  # noqa: F401  (importing it registers the resolvers)
from peft_bench.tasks import TASKS

NAME = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
)  # method, dataset and model names: table rows, cache folders
SEED_MAX = 2**32 - 1  # numpy's seed range, which seed_everything enforces


def name_problems(group: str, name: str) -> list[str]:
    if isinstance(name, str) and NAME.fullmatch(name):
        return []
    return [
        f"{group}.name={name!r}: use letters, digits, '_', '-' and '.' (at most 64, not starting with '.'): "
        "it names cache folders, run names and table rows"
    ]


# --------------------------------------------------------------------------- method


@dataclass
class MethodConfig:
    _target_: str = MISSING  # the LightningModule class that carries out the method
    name: str = MISSING  # short name used in run names, tags and tables
    lr: float = MISSING  # peak learning rate of AdamW (linear warmup, then linear decay to 0)
    weight_decay: float = 0.01  # AdamW decoupled weight decay (not applied to biases and LayerNorms)
    warmup_ratio: float = 0.06  # fraction of optimizer steps spent warming up
    # a 4-bit base this method asks for (method=qlora: nf4); model.quantization follows it unless set itself
    base_quantization: str | None = None
    export: bool = True  # save what a user would ship: the adapter (PEFT's format) or the trained weights
    # the tuning search space (python -m peft_bench.tune), keys of this method: {lr: [low, high]} is
    # log-uniform; {key: {low, high, log}} or {key: {choices: [...]}}. None: lr over [lr/10, lr*10].
    # Typed Any: OmegaConf cannot merge `method.search={...}` from the command line into an Optional[Dict]
    # that is None, nor add keys to an empty one; tune.space() checks its shape.
    search: Any = None

    def problems(self) -> list[str]:
        out = name_problems("method", self.name)
        if not 0 < self.lr < math.inf:
            out.append(f"method.lr={self.lr}: the learning rate must be a finite number > 0")
        if not 0 <= self.weight_decay < math.inf:
            out.append(f"method.weight_decay={self.weight_decay}: must be a finite number >= 0 (0: none)")
        if not 0 <= self.warmup_ratio < 1:
            out.append(f"method.warmup_ratio={self.warmup_ratio}: must be in [0, 1)")
        return out


@dataclass
class AdapterConfig(MethodConfig):
    """What every adapter method shares: rank, dropout, where the adapters go."""

    r: int = "${rank}"  # type: ignore[assignment]  # adapter rank: the top-level `rank`
    dropout: float = 0.1  # dropout on the adapter's input
    # module names (suffixes) that get adapters; default: the model's (its q/v attention projections)
    target_modules: list[str] = "${model.target_modules}"  # type: ignore[assignment]
    layers: Any = None  # list of transformer layer indices that get adapters; None = all
    export_merged: bool = False  # also save the model with the adapter folded in (<run_dir>/merged)

    def problems(self) -> list[str]:
        out = super().problems()
        if self.r < 1:
            out.append(f"method.r={self.r}: the adapter rank (rank=, or method.r=) must be >= 1")
        if not 0 <= self.dropout < 1:
            out.append(f"method.dropout={self.dropout}: must be in [0, 1)")
        if not self.target_modules:
            out.append("method.target_modules is empty: name at least one module to adapt")
        return out


LORA_INITS = ("true", "gaussian", "pissa", "olora", "eva", "corda", "lora_ga", "loftq")  # + pissa_niter_<n>
DATA_INITS = ("eva", "corda", "lora_ga")  # read training batches before training (method.init_batches)


@dataclass
class LoRAConfig(AdapterConfig):
    """LoRA and the variants PEFT builds from LoraConfig flags (DoRA, rsLoRA, PiSSA, OLoRA, LoRA+)."""

    alpha: float = 16.0  # LoRA scaling numerator: the update is (alpha / r) * B A (rsLoRA: alpha / sqrt(r))
    use_dora: bool = False  # DoRA: magnitude and direction of W trained apart (Liu et al., 2024)
    use_rslora: bool = False  # rsLoRA: scale alpha / sqrt(r), stable across ranks (Kalajdzievski, 2023)
    # adapter init: true (A Kaiming-uniform, B zero), gaussian, pissa / pissa_niter_<n> (principal singular
    # vectors of W; W keeps the residual), olora (QR of W), eva (SVD of the layers' inputs), corda (the
    # weights' SVD whitened by the inputs' covariance), lora_ga (SVD of the weights' gradient), loftq (the
    # 4-bit base's quantization error, on model.quantization=nf4); all but true, gaussian, eva and loftq
    # change the base weights (it keeps the residual)
    init: str = "true"
    init_batches: int = 8  # eva, corda, lora_ga: training batches read before training (the first ones)
    loraplus_lr_ratio: float | None = None  # LoRA+: B's learning rate is this times A's (Hayou et al., 2024)

    def problems(self) -> list[str]:
        out = super().problems()
        if not self.alpha > 0:
            out.append(f"method.alpha={self.alpha}: must be > 0")
        init = str(self.init).lower()
        if init not in LORA_INITS and not re.fullmatch(r"pissa_niter_[1-9][0-9]*", init):
            out.append(f"method.init={self.init!r}: valid values are {list(LORA_INITS)} or pissa_niter_<n>")
        if init in DATA_INITS and not self.init_batches >= 1:
            out.append(f"method.init_batches={self.init_batches}: method.init={init} reads >= 1 batch")
        if self.loraplus_lr_ratio is not None and not self.loraplus_lr_ratio > 0:
            out.append(
                f"method.loraplus_lr_ratio={self.loraplus_lr_ratio}: must be > 0, or null for plain LoRA"
            )
        return out


CRITERIA = ("magnitude_per_matrix", "magnitude_global", "topk_per_row")
SCHEDULES = ("gradual", "one_shot")


@dataclass
class PruningConfig:
    target: float = "${sparsity}"  # type: ignore[assignment]  # target sparsity of the adapter weights
    schedule: str = "gradual"  # gradual (cubic, during training) | one_shot (after training)
    criterion: str = "magnitude_per_matrix"  # magnitude_per_matrix | magnitude_global | topk_per_row
    start_step: int | None = None  # first pruning step; None = start_fraction of the optimizer steps
    end_step: int | None = None  # step at which the target is reached; None = end_fraction of the steps
    # the default start and end as fractions of the optimizer steps: the last 30% fine-tunes the survivors
    start_fraction: float = 0.1
    end_fraction: float = 0.7
    every_n_steps: int = 100  # prune every N optimizer steps between start and end

    def problems(self) -> list[str]:
        out = []
        if not 0 <= self.target < 1 or math.isnan(self.target):
            out.append(f"sparsity={self.target}: the target adapter sparsity must be in [0, 1)")
        if self.schedule not in SCHEDULES:
            out.append(f"pruning.schedule={self.schedule!r}: valid values are {list(SCHEDULES)}")
        if self.criterion not in CRITERIA:
            out.append(f"pruning.criterion={self.criterion!r}: valid values are {list(CRITERIA)}")
        if self.every_n_steps < 1:
            out.append(f"pruning.every_n_steps={self.every_n_steps}: must be >= 1")
        if not 0 <= self.start_fraction < self.end_fraction <= 1:
            out.append(
                f"pruning.start_fraction={self.start_fraction}, pruning.end_fraction={self.end_fraction}: "
                "fractions of the optimizer steps, 0 <= start_fraction < end_fraction <= 1"
            )
        return out


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
class HiRAConfig(AdapterConfig):
    dropout: float = 0.0  # the update W0 * (B A) has high rank even from rank-r factors; no alpha scaling


@dataclass
class AdaLoRAConfig(AdapterConfig):
    """AdaLoRA (Zhang et al., ICLR 2023): SVD-shaped adapters whose rank budget is reallocated by
    importance during training; `r` (the top-level rank) is the average rank it ends with."""

    alpha: float = 32.0  # PEFT's AdaLoraConfig default lora_alpha (its LoraConfig default is 8)
    init_r_factor: float = (
        1.5  # start with round(1.5 r) per matrix (the paper's initial budget b(0) = 1.5 b(T))
    )
    tinit: float = 0.1  # fraction of steps before the budget starts to shrink (warm-up)
    tfinal: float = 0.2  # fraction of steps at the end with the final budget fixed
    delta_t: int = 10  # reallocate every this many steps
    beta1: float = 0.85  # EMA of the importance (PEFT's default, the paper's)
    beta2: float = 0.85  # EMA of its uncertainty
    orth_reg_weight: float = 0.5  # weight of the orthogonality penalty on P and Q

    def problems(self) -> list[str]:
        out = super().problems()
        if not (0 <= self.tinit < 1 and 0 <= self.tfinal < 1 and self.tinit + self.tfinal < 1):
            out.append(
                f"method.tinit={self.tinit}, method.tfinal={self.tfinal}: fractions of the steps, "
                "together < 1"
            )
        if self.init_r_factor < 1:
            out.append(
                f"method.init_r_factor={self.init_r_factor}: the initial budget must be >= the final (>= 1)"
            )
        return out


@dataclass
class VeRAConfig(AdapterConfig):
    """VeRA (Kopiczko et al., ICLR 2024): one pair of frozen random matrices shared by all layers, with
    trained scaling vectors d and b per layer; `r` is the shared matrices' rank."""

    dropout: float = 0.0
    d_initial: float = 0.1  # initial value of the d vectors (the paper's)
    projection_prng_key: int = 0  # seed of the shared random matrices


@dataclass
class LycorisConfig(AdapterConfig):
    """LoHa (Hadamard product of two low-rank products) and LoKr (Kronecker product), LyCORIS through PEFT."""

    alpha: float = 8.0  # PEFT's default; the update is scaled by alpha / r
    dropout: float = 0.0  # rank_dropout: drops rows of the update
    module_dropout: float = 0.0  # drops the whole adapter of a module for a step


@dataclass
class MiSSConfig(AdapterConfig):
    """MiSS (Kang et al., 2025; the successor of Bone): one shared trainable block per layer, of r rows."""

    dropout: float = 0.0


@dataclass
class SHiRAConfig(AdapterConfig):
    """SHiRA (Bhardwaj et al., 2024): a sparse set of base weights trained directly; `r` sets how many,
    r (m + n) per m x n matrix, the count of a rank-r LoRA."""

    dropout: float = 0.0
    mask_type: str = "random"  # which weights train (PEFT's random mask)
    mask_seed: int = "${seed}"  # type: ignore[assignment]  # the mask differs per seed, as the init does

    def problems(self) -> list[str]:
        out = super().problems()
        if self.mask_type != "random":
            out.append(f"method.mask_type={self.mask_type!r}: valid values are ['random']")
        return out


@dataclass
class IA3Config(MethodConfig):
    """IA3 (Liu et al., 2022): learned vectors rescaling keys, values and the feed-forward activations."""

    target_modules: list[str] = "${model.target_sets.ia3}"  # type: ignore[assignment]
    feedforward_modules: list[str] = "${model.target_sets.ffn_out}"  # type: ignore[assignment]
    export_merged: bool = False

    def problems(self) -> list[str]:
        out = super().problems()
        if not self.target_modules:
            out.append("method.target_modules is empty: name at least one module to adapt")
        extra = [m for m in self.feedforward_modules if m not in self.target_modules]
        if extra:
            out.append(f"method.feedforward_modules {extra} must also be in method.target_modules")
        return out


@dataclass
class PeftByNameConfig(MethodConfig):
    """Any PEFT method by its PeftType (methods/peft_by_name.py): `method=peft method.peft_type=OFT
    method.config={oft_block_size: 16}`. The config class is PEFT's own for the type; method.config holds
    its fields by name (checked against the class before anything loads)."""

    name: str = "${peft_name:${.peft_type}}"  # the type in lower case (oft, boft, ...), unless set
    peft_type: str = MISSING  # a peft.PeftType name: OFT, BOFT, HRA, FOURIERFT, PROMPT_TUNING, ...
    # fields of PEFT's config class for the type, by name; typed Any: OmegaConf cannot merge
    # `method.config={...}` from the command line into an Optional[Dict] that is None
    config: Any = None
    # the config field the top-level rank sets (r; num_virtual_tokens for prompt methods); null: the
    # method has no rank, and method.r is null (a sweep over rank is then refused as repeated runs)
    rank_field: str | None = "r"
    r: Any = "${rank_if:${rank},${.rank_field}}"  # type: ignore[assignment]
    # module names (suffixes) adapted where the type takes target_modules; method.config.target_modules
    # (e.g. LayerNorm names for LN tuning) replaces them
    target_modules: list[str] = "${model.target_modules}"  # type: ignore[assignment]
    layers: Any = None  # layer indices (the type's layers_to_transform), None = all
    export_merged: bool = False

    def problems(self) -> list[str]:
        out = super().problems()
        if self.r is not None and (not isinstance(self.r, int) or self.r < 1):
            out.append(f"method.r={self.r}: the rank (rank=, or method.r=) must be an integer >= 1")
        if self.r is not None and self.rank_field is None:
            out.append(
                f"method.r={self.r}: method.rank_field is null (the method has no rank): leave method.r "
                "unset, or name the field the rank sets in method.rank_field"
            )
        if not self.target_modules:
            out.append("method.target_modules is empty: name at least one module to adapt")
        return out


@dataclass
class BitFitConfig(MethodConfig):
    """BitFit (Ben Zaken et al., 2022): only the bias terms train (and the task head)."""


@dataclass
class FullConfig(MethodConfig):
    pass


# --------------------------------------------------------------------------- dataset


@dataclass
class DatasetConfig:
    _target_: str = MISSING  # the LightningDataModule for this kind of task
    name: str = MISSING  # short name used in run names and tables
    task: str = "classification"  # classification | regression | causal_lm: the head, loss and metrics
    # the primary metric (null: the task's default, classification acc, regression pearson, causal_lm
    # ppl): it picks the best checkpoint, stops early, prunes trials, is the tuning objective and the
    # report's "best by"; valid values are the task's metrics (docs/data.md)
    metric: str | None = None
    # the metrics a benchmark table (the GLUE table) shows for this dataset, averaged into its score as
    # GLUE does (MRPC: [f1, acc]; STS-B: [pearson, spearman]); empty: the primary metric alone
    report_metrics: list[str] = field(default_factory=list)
    hub_id: str | None = None  # Hugging Face Hub dataset id, used when no data_files / generator is given
    hub_config: str | None = None  # the Hub dataset's configuration name, if it has several
    data_files: Any = None  # local file(s): a path, a list, or {train: ..., validation: ..., test: ...}
    # labelled test splits scored beside test, each as test_<name> (MNLI: [mismatched]); given as
    # data_files' test_<name> or a Hub split named in hub_splits
    extra_test_splits: list[str] = field(default_factory=list)
    # our split -> the Hub's split, where its names differ (MNLI: {validation: validation_matched, ...})
    hub_splits: dict[str, str] | None = None
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
        splits = ["train", "validation", "test", *(f"test_{x}" for x in self.extra_test_splits)]
        for path in data_file_paths(self.data_files):
            if not Path(path).is_file():
                out.append(f"dataset.data_files: no such file: {path}")
        if isinstance(self.data_files, dict) or isinstance(self.data_files, list | tuple):
            given = (
                self.data_files.items() if isinstance(self.data_files, dict) else [("train", self.data_files)]
            )
            for split, files in given:
                if not files:
                    out.append(f"dataset.data_files: no file given for {split}: name at least one")
        if isinstance(self.data_files, dict):
            unknown = [k for k in self.data_files if k not in splits]
            if unknown:
                extra = [k for k in unknown if str(k).startswith("test_")]
                out.append(
                    f"dataset.data_files: unknown split(s) {unknown}: the splits are {', '.join(splits)}"
                    + (
                        f" (a test_<name> split is scored when dataset.extra_test_splits names it: "
                        f"dataset.extra_test_splits=[{','.join(k.removeprefix('test_') for k in extra)}])"
                        if extra
                        else ""
                    )
                )
            elif "train" not in self.data_files:
                out.append(
                    f"dataset.data_files names no train file (got {sorted(self.data_files)}): add train: ..."
                )
        if self.generator not in (None, "demo"):
            out.append(f"dataset.generator={self.generator!r}: valid values are null or 'demo'")
        if self.data_files is None and self.generator is None and not self.hub_id:
            out.append("dataset: give one of dataset.data_files=, dataset.generator= or dataset.hub_id=")
        kinds = self.task_kinds()
        if self.task not in kinds:
            out.append(f"dataset.task={self.task!r}: valid values for this dataset schema are {list(kinds)}")
        elif self.metric is not None and self.metric not in TASKS[self.task].metric_keys:
            out.append(
                f"dataset.metric={self.metric!r}: valid values for task {self.task} are "
                f"{list(TASKS[self.task].metric_keys)}, or null for {TASKS[self.task].default_metric}"
            )
        for x in self.extra_test_splits:
            if not isinstance(x, str) or not NAME.fullmatch(x) or "/" in x:
                out.append(f"dataset.extra_test_splits: {x!r} is not a split name (letters, digits, '_')")
        if self.data_files is not None and self.extra_test_splits:
            given = set(self.data_files) if isinstance(self.data_files, dict) else {"train"}
            absent = [f"test_{x}" for x in self.extra_test_splits if f"test_{x}" not in given]
            if absent:
                out.append(
                    f"dataset.extra_test_splits={list(self.extra_test_splits)}: local data_files have no "
                    f"{', '.join(absent)}: give it (dataset.data_files={{train: ..., {absent[0]}: ...}}), "
                    "or score test alone with dataset.extra_test_splits=[]"
                )
        if len(set(self.extra_test_splits)) != len(self.extra_test_splits):
            out.append(f"dataset.extra_test_splits={list(self.extra_test_splits)}: a split is named twice")
        for ours in self.hub_splits or {}:
            if ours not in splits:
                out.append(f"dataset.hub_splits: {ours!r} is not one of this dataset's splits {splits}")
        for key in ("batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                out.append(f"dataset.{key}={getattr(self, key)}: must be >= 1")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            out.append(f"dataset.max_train_examples={self.max_train_examples}: must be >= 1, or null for all")
        if self.num_workers < 0:
            out.append(f"dataset.num_workers={self.num_workers}: must be >= 0")
        if not (
            0 < self.val_fraction < 1
            and 0 < self.test_fraction < 1
            and self.val_fraction + self.test_fraction < 1
        ):
            out.append(
                f"dataset.val_fraction={self.val_fraction}, dataset.test_fraction={self.test_fraction}:"
                " each must be in (0, 1) and together < 1"
            )
        return out

    def task_kinds(self) -> list[str]:
        """The tasks this schema's datamodule serves."""
        return [name for name, t in TASKS.items() if t.schema == self.schema_name]

    schema_name = "dataset_schema"  # its name in the ConfigStore (a task names the schema it reads)


@dataclass
class ClassificationDatasetConfig(DatasetConfig):
    _target_: str = "peft_bench.data.classification.TextClassificationDataModule"
    text_pair_field: str | None = None  # the second text of a pair task (MRPC, RTE, MNLI: sentence2)
    label_field: str = "label"
    num_labels: int = 2  # classes; 1 with task=regression (a real-valued label, e.g. STS-B)
    max_length: int = 128  # truncation length in tokens; batches are padded only to their longest example
    group_by_length: bool = False  # train batches of similar length (less padding; worth it for long texts)

    def problems(self) -> list[str]:
        out = super().problems()
        if self.max_length < 8:
            out.append(f"dataset.max_length={self.max_length}: must be >= 8")
        if self.task == "regression" and self.num_labels != 1:
            out.append(f"dataset.num_labels={self.num_labels}: task=regression predicts one value, set 1")
        elif self.task != "regression" and self.num_labels < 2:
            out.append(
                f"dataset.num_labels={self.num_labels}: a classification task needs >= 2 classes "
                "(a real-valued label: dataset.task=regression dataset.num_labels=1)"
            )
        fields = [("text_field", self.text_field), ("label_field", self.label_field)]
        if self.text_pair_field is not None:
            fields.append(("text_pair_field", self.text_pair_field))
        for i, (a, va) in enumerate(fields):
            for b, vb in fields[i + 1 :]:
                if va == vb:
                    out.append(
                        f"dataset.{a} and dataset.{b} are both {va!r}: name a different column for each"
                    )
        return out


@dataclass
class LMDatasetConfig(DatasetConfig):
    _target_: str = "peft_bench.data.causal_lm.CausalLMDataModule"
    schema_name = "lm_dataset_schema"
    task: str = "causal_lm"
    text_field: str = "text"
    block_size: int = 256  # tokens per packed training block (the text is concatenated, then cut)
    num_labels: int | None = None  # unused: the vocabulary is the output

    def problems(self) -> list[str]:
        out = super().problems()
        if self.block_size < 2:
            out.append(f"dataset.block_size={self.block_size}: must be >= 2")
        if self.max_train_examples is not None:
            out.append(
                f"dataset.max_train_examples={self.max_train_examples}: not used by causal language "
                "modelling (its examples are packed blocks); cap training with trainer.max_steps="
            )
        return out


ANSWER_RULES = ("gsm8k", "last_number", "text")  # how a generation's answer is read (tasks/generation.py)


@dataclass
class InstructionDatasetConfig(DatasetConfig):
    """Instruction tuning scored by what the model writes (GSM8K): a prompt and its response; the loss on
    the response tokens only; test (and validation, with dataset.metric=em) generates greedily and
    compares the answer read from the text with the gold one."""

    _target_: str = "peft_bench.data.instruction.InstructionDataModule"
    schema_name = "instruction_dataset_schema"
    task: str = "generation"
    text_field: str = "question"  # unused: the prompt_field is the text
    prompt_field: str = "question"
    response_field: str = "answer"
    # the tokenizer's chat template (the prompt a user turn, the response the assistant's) where it has
    # one; null: "auto", true: required, false: the plain template below
    chat_template: bool | None = None
    plain_template: str = "Question: {prompt}\nAnswer: "
    max_length: int = 512  # tokens of prompt + response in training (longer ones are cut at the end)
    max_prompt_length: int = 384  # tokens of a prompt when generating (longer ones keep their end)
    max_new_tokens: int = 256  # greedy decoding stops here, at the end-of-sequence token or a stop string
    stop_strings: list[str] = field(default_factory=list)
    answer: str = "gsm8k"  # gsm8k: the number after ####, else the last number; last_number; text
    # forgetting: the loss on a reference text before and after fine-tuning (its rise is what the model
    # lost); the text: local files (a text field), else WikiText-2's validation split from the Hub
    forgetting_data_files: Any = None
    forgetting_text_field: str = "text"
    forgetting_tokens: int = 16384  # tokens of it scored (0: no forgetting measured)
    forgetting_block_size: int = 256
    max_val_examples: int | None = 200  # validation examples (generation is slow); null: all
    max_test_examples: int | None = None  # test examples scored; null: all
    eval_batch_size: int = 16
    num_labels: int | None = None  # unused: the vocabulary is the output

    def problems(self) -> list[str]:
        out = super().problems()
        if self.prompt_field == self.response_field:
            out.append(
                f"dataset.prompt_field and dataset.response_field are both {self.prompt_field!r}: "
                "name a different column for each"
            )
        if self.extra_test_splits:
            out.append(
                f"dataset.extra_test_splits={list(self.extra_test_splits)}: the generation task scores one "
                "test split; give another test set as dataset.data_files.test, in a run of its own"
            )
        if self.answer not in ANSWER_RULES:
            out.append(f"dataset.answer={self.answer!r}: valid values are {list(ANSWER_RULES)}")
        if "{prompt}" not in self.plain_template:
            out.append(f"dataset.plain_template={self.plain_template!r}: must contain {{prompt}}")
        for path in data_file_paths(self.forgetting_data_files):
            if not Path(path).is_file():
                out.append(f"dataset.forgetting_data_files: no such file: {path}")
        if self.forgetting_tokens < 0:
            out.append(f"dataset.forgetting_tokens={self.forgetting_tokens}: must be >= 0 (0: not measured)")
        for key in ("max_length", "max_prompt_length", "max_new_tokens", "forgetting_block_size"):
            if getattr(self, key) < 1:
                out.append(f"dataset.{key}={getattr(self, key)}: must be >= 1")
        for key in ("max_val_examples", "max_test_examples"):
            value = getattr(self, key)
            if value is not None and value < 1:
                out.append(f"dataset.{key}={value}: must be >= 1, or null for all")
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


QUANTIZATIONS = ("nf4", "fp4")


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
    prepare_with: str | None = None  # module whose prepare(folder) builds a missing local `pretrained` folder
    # dropout on the attention probabilities; null keeps the checkpoint's (BERT, DistilBERT, GPT-2: 0.1).
    # 0.0 by default: PyTorch's fused attention kernels on CPU take no dropout, so any attention dropout
    # sends every layer to the unfused path (docs/measurements.md)
    attention_dropout: float | None = 0.0
    # the frozen base in 4 bits (bitsandbytes): nf4 or fp4; null: full precision. By default what the
    # method asks for (method=qlora: nf4), so model.quantization=nf4 with any 4-bit-capable method is QLoRA's
    # recipe for that method (QDoRA: method=dora model.quantization=nf4)
    quantization: str | None = "${oc.select:method.base_quantization,null}"  # type: ignore[assignment]
    double_quant: bool = True  # quantize the quantization constants too (~0.4 bit/parameter saved)

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
            return [
                f"model.attention_dropout={self.attention_dropout}: must be in [0, 1), "
                "or null for the checkpoint's"
            ]
        if self.quantization not in (None, *QUANTIZATIONS):
            return [
                f"model.quantization={self.quantization!r}: valid values are {list(QUANTIZATIONS)} or null"
            ]
        return []


# --------------------------------------------------------------------------- trainer, logger


@dataclass
class TrainerConfig:
    """Lightning Trainer arguments, passed through by name (a new Trainer flag is one field here), except
    those in PEFT_BENCH_TRAINER_KEYS, which peft_bench resolves itself. conf/trainer/*.yaml only override
    these defaults."""

    accelerator: str = "auto"  # cpu, gpu, auto
    devices: Any = 1  # how many devices Lightning uses (> 1: one process each; dataset.batch_size is split)
    # auto (DDP for devices > 1), ddp, ddp_find_unused_parameters_true: one process per device, each
    # started as a command of its own (by Lightning, or as SLURM tasks); checks.trainer_problems names them
    strategy: str = "auto"
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
    # stop when the primary validation metric (dataset.metric) has not improved for this many
    # validations (Lightning's EarlyStopping); None: train to max_epochs / max_steps
    early_stopping_patience: int | None = None


# TrainerConfig keys that are not passed to L.Trainer as they are: `compile` is peft_bench's own; None in
# `precision` and `num_sanity_val_steps` means "decided from the device"; early_stopping_patience is a
# callback (train.build_trainer)
PEFT_BENCH_TRAINER_KEYS = ("compile", "precision", "num_sanity_val_steps", "early_stopping_patience")


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


def plain(default: Any, text: str) -> Any:
    """A top-level plain value: its default and the one line `--help` shows for it."""
    return field(default=default, metadata={"help": text})


@dataclass
class RunConfig:
    """The run: its groups and its plain values. This is the one home of the plain values' defaults
    (conf/config.yaml holds only the interpolations); `--help` lists them from here (`plain_values_help`)."""

    method: Any = MISSING
    dataset: Any = MISSING
    model: Any = MISSING
    trainer: TrainerConfig = MISSING
    logger: Any = MISSING
    # a plain value (not a group) so `rank=2,4,8,16 -m` sweeps as typed
    rank: int = plain(8, "adapter rank: method.r of every method that has one")
    sparsity: float = plain(0.5, "target adapter sparsity when pruning (method=sparse_lora)")
    seed: int = plain(42, "seed_everything(seed, workers=True): new weights, dropout, data order")
    run_dir: str = MISSING  # where results.json, checkpoints and logs go
    cache_dir: str = MISSING  # tokenized datasets, shared by every job of a sweep
    run_name: str = MISSING
    checkpoint: bool = plain(
        True, "keep last.ckpt and the best by the primary metric (trainable weights only)"
    )
    checkpoint_every_n_steps: int | None = plain(
        None, "also save last.ckpt every N optimizer steps (null: at validations, epoch ends)"
    )
    eval_before_training: bool = plain(False, "also score the un-tuned model (results.json: before_training)")
    test: bool = plain(True, "evaluate on the test split; false: validation only (as tuning trials run)")
    skip_completed: bool = plain(True, "skip a job whose results.json says completed (same config)")
    resume: bool = plain(True, "continue from checkpoints/last.ckpt when an earlier attempt left one")


def plain_values_help() -> str:
    """`--help`'s list of the run's plain values: each with its schema default and its help line."""
    rows = {  # key=default as it is typed on the command line (null, true, 0.5): its help line
        OmegaConf.to_yaml({f.name: f.default}).strip().replace(": ", "=", 1): f.metadata["help"]
        for f in fields(RunConfig)
        if "help" in f.metadata
    }
    width = max(map(len, rows)) + 1
    return "\n".join(f"  {value:<{width}} {text}" for value, text in rows.items())


@dataclass
class TuneConfig:
    """`python -m peft_bench.tune`'s options: the `tune` group (conf/tune/default.yaml), tune.<key>=."""

    VALIDATIONS_PER_EPOCH: ClassVar[int] = 4  # how often trials and finals validate when eval_every is None

    trials: int = 16  # finished trials per method (the equal budget)
    seeds: int = 3  # seeds of the final runs of each method's best and default settings (1..seeds)
    workers: int = 1  # processes (or SLURM jobs, with a submitit launcher) pulling trials from the studies
    dir: str | None = None  # the tune folder; default tune/<the command's overrides>
    storage: str | None = None  # Optuna storage URL; default sqlite:///<dir>/study.db; journal:<file> too
    # validate and report every N training batches; None: VALIDATIONS_PER_EPOCH times an epoch
    eval_every: int | None = None
    prune: bool = True  # stop trials that trail (Optuna's median pruner)
    # trials that run to the end before the pruner may stop one; None: min(5, max(2, trials // 2))
    pruner_startup: int | None = None
    startup_trials: int | None = None  # random trials before TPE models the space; None: max(2, trials // 4)
    sampler_seed: int = 0
    defaults: bool = True  # also run each method's untuned default over the seeds (the change from tuning)

    def problems(self) -> list[str]:
        out = []
        for key in ("trials", "seeds", "workers"):
            if getattr(self, key) < 1:
                out.append(f"tune.{key}={getattr(self, key)}: must be >= 1")
        if self.eval_every is not None and self.eval_every < 1:
            out.append(f"tune.eval_every={self.eval_every}: must be >= 1, or null")
        if self.pruner_startup is not None and self.pruner_startup < 0:
            out.append(f"tune.pruner_startup={self.pruner_startup}: must be >= 0")
        if self.startup_trials is not None and self.startup_trials < 0:
            out.append(f"tune.startup_trials={self.startup_trials}: must be >= 0, or null")
        if not 0 <= self.sampler_seed < 2**32:
            out.append(f"tune.sampler_seed={self.sampler_seed}: must be in [0, 2**32)")
        return out

    def startup(self) -> int:
        """Random trials before TPE models the space."""
        return max(2, self.trials // 4) if self.startup_trials is None else self.startup_trials

    def prune_startup(self) -> int:
        """Trials that run to the end before the median pruner may stop one. Optuna's default is 5;
        never more than half the budget. With 2, on real SST-2 (docs/tune.md), the median of two good
        trials stopped a trial whose first validation equalled the eventual best one's."""
        if self.pruner_startup is not None:
            return self.pruner_startup
        return min(5, max(2, self.trials // 2))


# TuneConfig is not in the ConfigStore: its key `defaults` (tune.defaults=) would be read by Hydra as a
# defaults list; the tune command merges conf/tune/<name>.yaml onto it (peft_bench.tune.study.tune_options)

SCHEMAS = [  # (group, name, schema): a group option's yaml names its schema first in its defaults list
    (None, "run_schema", RunConfig),
    ("method", "lora_schema", LoRAConfig),
    ("method", "sparse_lora_schema", SparseLoRAConfig),
    ("method", "hira_schema", HiRAConfig),
    ("method", "adalora_schema", AdaLoRAConfig),
    ("method", "vera_schema", VeRAConfig),
    ("method", "lycoris_schema", LycorisConfig),
    ("method", "miss_schema", MiSSConfig),
    ("method", "shira_schema", SHiRAConfig),
    ("method", "ia3_schema", IA3Config),
    ("method", "peft_schema", PeftByNameConfig),
    ("method", "bitfit_schema", BitFitConfig),
    ("method", "full_schema", FullConfig),
    ("dataset", "dataset_schema", ClassificationDatasetConfig),
    ("dataset", "lm_dataset_schema", LMDatasetConfig),
    ("dataset", "instruction_dataset_schema", InstructionDatasetConfig),
    ("model", "model_schema", ModelConfig),
    ("trainer", "trainer_schema", TrainerConfig),
    ("logger", "none_schema", NoLoggerConfig),
    ("logger", "csv_schema", CSVLoggerConfig),
    ("logger", "wandb_schema", WandbLoggerConfig),
]


def register_configs() -> None:
    for group, name, node in SCHEMAS:
        ConfigStore.instance().store(group=group, name=name, node=node)
    if not OmegaConf.has_resolver("plain_values_help"):  # here, not in resolvers.py: it reads RunConfig
        OmegaConf.register_new_resolver("plain_values_help", plain_values_help)


register_configs()


@functools.cache
def schema_defaults() -> dict:
    """The flattened plain defaults of the schemas (config.SCHEMAS): the value a key had for a peft_bench
    that did not have the key yet (trainer.strategy: auto, method.pruning.start_fraction: 0.1). A group's
    key takes the default all its schemas that have it agree on; none where they differ (method.dropout:
    0.1 or 0.0), nor where it is an interpolation or required."""
    defaults, disputed = {}, set()
    for group, _, schema in SCHEMAS:
        tree = OmegaConf.to_container(OmegaConf.structured(schema), resolve=False)
        for key, value in flatten({group: tree} if group else tree).items():
            if key in defaults and defaults[key] != value:
                disputed.add(key)
            defaults.setdefault(key, value)
    return {
        k: v
        for k, v in defaults.items()
        if k not in disputed and not (isinstance(v, str) and ("${" in v or v == "???"))
    }
