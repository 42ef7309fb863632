"""results.json: the whole outcome of a run, written atomically so a reader never sees half a file;
and reading them back (every job of a folder, unreadable ones included, with what state each is in)."""

from __future__ import annotations

import hashlib
import json
import platform
import re
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TypedDict

from peft_bench.io import atomic_write, process_alive
from peft_bench.resolvers import flatten  # noqa: F401  (importers of results.flatten)
from peft_bench.tasks import METRICS, TASKS

RESULTS_FILE = "results.json"

# ------------------------------------------------------------------------------ the record's schema
# One typed home for every key a run writes (docs/results.md describes each; tests/test_results_schema.py
# fails when a run writes a key that is not here or not documented). Flat, as the report and runs.csv
# read it; nested sections are typed below. `total=False`: a failed run has only what it got to.


class ForgettingInfo(TypedDict):  # generation: the loss on a reference text before and after training
    loss_before: float  # nats per token
    loss_after: float
    rise: float  # loss_after - loss_before: what fine-tuning made the model forget
    tokens: int
    source: str


class PredictionsInfo(TypedDict):  # predictions.parquet, beside results.json
    file: str
    sha256: str
    examples: dict[str, int]  # test split -> its examples (rows)


class Scores(TypedDict, total=False):  # one evaluation: the task's score keys (score_key) and latency
    inference_latency_ms_per_example: float


class DataInfo(TypedDict, total=False):
    source: str  # where the raw data came from (local files by split, the Hub id, the generator)
    splits: dict[str, str]  # how each split was made (given, or carved from train by a seeded split)
    sizes: dict[str, int]  # examples (classification) or packed blocks (language modelling) per split
    label_counts: dict[str, dict[str, int]]  # per split, per class
    label_stats: dict[str, dict[str, float]]  # regression: per split, the label's mean, std, min, max
    overlap: dict[str, dict[str, int]]  # {split: {earlier split: examples whose normalised text both hold}}
    tokens: dict[str, int]  # language modelling: tokens per split
    block_size: int  # language modelling: tokens per packed block
    chat_template: bool  # generation: whether prompts went through the tokenizer's chat template
    cache_key: str  # the tokenized-data cache entry (content, layout and recipe of the data, tokenizer)
    raw_fingerprint: str | None  # the raw data's content and file-to-split layout (None: the Hub)
    cache: str  # hit or miss
    warnings: list[str]  # e.g. a single-class split
    notes: list[str]  # e.g. a damaged cache entry set aside


class PruningInfo(TypedDict, total=False):
    l1_lambda: float
    target: float
    schedule: str
    criterion: str
    steps: list[list]  # [optimizer step, sparsity applied]


class QuantizationInfo(TypedDict, total=False):  # "quantization": a 4-bit base
    quant_type: str
    double_quant: bool
    base_weight_bytes: int
    base_weight_bytes_fp32: int
    base_weight_ratio: float
    quantized_linear_modules: int
    quantized_linear_weight_bytes: int
    quantized_linear_weight_bytes_fp32: int
    quantized_linear_weight_ratio: float
    linear_modules: int


SCORE_KEY = re.compile(rf"(merged_)?(val|test|test_[A-Za-z0-9_.-]+?)_({'|'.join(METRICS)})")


def score_key(key: str) -> bool:
    """Whether a results.json key is a task's score: (merged_)(val|test|test_<split>)_<metric>."""
    return SCORE_KEY.fullmatch(key) is not None


RunResult = TypedDict(
    "RunResult",
    {
        # what ran
        "status": str,  # running | completed | failed | diverged | interrupted | pruned
        "error": str,  # failed, diverged, interrupted: the exception, one line
        "run_name": str,
        "method": str,
        "dataset": str,
        "model": str,
        "rank": int | None,
        "seed": int,
        "run_dir": str,
        "config": dict,  # the resolved config
        "started_at": str,
        "finished_at": str,  # local time, ISO 8601
        "host": str,
        "pid": int,
        "process_started_at": float,  # who ran it (a stale `running` record names its process)
        "git_commit": str | None,
        "git_dirty": bool | None,
        "python": str,
        "libraries": dict[str, str | None],
        "warnings": list[str],  # figures that need care (single-class split, collapsed predictions, ...)
        "notes": list[str],  # what peft_bench did on its own (a corrupt file set aside, ...)
        "resumed_from": dict,  # {"checkpoint", "step"}
        "digest": str,  # SHA-256 of every other key as written (figures_digest): an edit afterwards shows
        "data": DataInfo,
        # parameters
        "trainable_params": int,
        "total_params": int,
        "trainable_ratio": float,
        # scores: of the best checkpoint by the validation metric (or the final weights: evaluated_checkpoint)
        # the task's scores (tasks/: Task.result_keys): val_<metric>, test_<metric>, test_<split>_<metric>
        # for an extra test split, merged_test_...; every one a float (score_key says which keys are)
        **{k: float for t in TASKS.values() for k in t.result_keys()},
        "baseline": dict[str, float],  # the trivial predictor's score keys (majority class, mean label)
        "before_training": Scores,  # eval_before_training=true: the un-tuned model
        "before_pruning": dict,  # one-shot pruning: scores and sparsity figures before it
        "evaluated_checkpoint": str,
        "forgetting": ForgettingInfo,
        "predictions": PredictionsInfo,  # the per-example test answers (predictions.parquet)
        # training
        "optimizer_steps": int,
        "epochs": int,
        "train_time_s": float,
        "time_per_epoch_s": list[float],
        "mean_time_per_epoch_s": float,
        "train_examples": int,
        "train_examples_per_s": float,
        "train_tokens": int,
        "train_tokens_per_s": float,
        "train_loss_per_epoch": list[float],
        "train_flops": int,
        "train_compute_s": float,
        "model_flops_per_s": float,
        "gemm_peak_flops_per_s": float,
        "gemm_peak_dtype": str,
        "mfu": float,
        "time_to_first_step_s": float | None,
        "process_to_first_step_s": float | None,
        # inference and memory
        "inference_latency_ms_per_example": float,
        "inference_latency_merged_ms_per_example": float,
        "generation_tokens_per_s": float,
        "inference_batch_size": int,
        "precision": str,
        "device": str,
        "peak_memory_bytes": int,
        "peak_memory_kind": str,
        # the method's own
        "adapter": dict,  # the PEFT config the run trained with (its set fields)
        "pruning": PruningInfo,
        "quantization": QuantizationInfo,
        "sparsity_exact_zero": float,
        "sparsity_below_1e-3": float,
        "sparsity_per_matrix": dict[str, dict[str, float]],
        "adapter_params": int,
        "adapter_nonzero": int,
        "adapter_dense_bytes": int,
        "adapter_sparse_bytes": int,
        # what it exported
        "adapter_dir": str,
        "adapter_file_bytes": int,
        "merged_dir": str,
        "export_file": str,  # methods without an adapter: their trained weights (trainable.safetensors)
        "export_bytes": int,
    },
    total=False,
)
LIBRARIES = [
    "torch",
    "lightning",
    "transformers",
    "peft",
    "datasets",
    "torchmetrics",
    "hydra-core",
    "bitsandbytes",
    "wandb",
    "peft_bench",
]


def figures_digest(record: dict) -> str:
    """SHA-256 of a record's every key but `digest`, as canonical JSON (sorted keys, no spaces): the
    figures, the config and the rest, as they were written. A record changed by hand no longer matches."""
    body = {k: v for k, v in record.items() if k != "digest"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


EDITED = "edited after the run: its figures do not match the digest written with them"


def digest_state(record: dict) -> str:
    """`ok` (the record is as its run wrote it), `edited` (changed after: its digest does not match) or
    `none` (no digest: written by a peft_bench older than the digest)."""
    if "digest" not in record:
        return "none"
    return "ok" if record["digest"] == figures_digest(record) else "edited"


def write_results(run_dir: Path, results: RunResult) -> Path:
    """Write results.json with the digest of what it holds. A record that already carries a digest it
    does not match (an edited record written back as read) keeps that digest: rewriting never launders
    an edit."""
    record = json.loads(json.dumps(results, default=str))  # exactly what a reader will parse
    if digest_state(record) != "edited":
        record["digest"] = figures_digest(record)
    return atomic_write(Path(run_dir) / RESULTS_FILE, json.dumps(record, indent=2))


def read_results(run_dir: Path) -> RunResult:
    """The parsed results.json of a run folder; ValueError if it is not a JSON object."""
    data = json.loads((Path(run_dir) / RESULTS_FILE).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON object but {type(data).__name__}")
    return data


def job_order(root: Path, path: Path) -> list[tuple]:
    """Sort key of a folder below root: job numbers numerically (2 before 10), other names after them."""
    return [(0, int(x), "") if x.isdigit() else (1, 0, x) for x in Path(path).relative_to(root).parts]


def collect(root: Path) -> list[tuple[Path, dict | None]]:
    """Every results.json under root, parsed (None where unreadable), in job order."""
    root = Path(root)
    out = []
    for path in sorted(root.rglob(RESULTS_FILE), key=lambda p: job_order(root, p)):
        try:
            out.append((path.parent, read_results(path.parent)))
        except (OSError, ValueError):
            out.append((path.parent, None))
    return out


def unfinished_reason(r: dict | None) -> str | None:
    """Why a run is not a completed one (None if it is): unreadable, failed, diverged, interrupted,
    still running, or marked running by a process that is gone (killed: SIGKILL, OOM killer, node lost)."""
    if r is None:
        return f"unreadable {RESULTS_FILE} (not valid JSON)"
    status = r.get("status")
    if status == "completed":
        return None
    if status == "running" and "pid" not in r:  # no process recorded (written by an older peft_bench)
        return "running"
    if status == "running":
        where = f"pid {r.get('pid')} on host {r.get('host')}, started {r.get('started_at')}"
        alive = process_alive(r)
        if alive is False:
            return (
                f"stale: results.json says running but its process ({where}) is gone (killed?); "
                "the same command resumes it"
            )
        if alive is None:
            return f"running or killed on another host ({where}): this host cannot tell"
        return f"running ({where})"
    if status is None:
        return f"unreadable {RESULTS_FILE} (no status)"
    return f"{status}" + (f": {r['error']}" if r.get("error") else "")


def environment() -> dict:
    """Git commit of the code that ran (None outside a git checkout), library versions, host."""

    def pkg_version(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    commit, dirty = None, None
    repo = Path(__file__).resolve().parent.parent
    if (repo / ".git").exists():
        try:
            commit = (
                subprocess.run(
                    ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
                ).stdout.strip()
                or None
            )
            dirty = (
                bool(
                    subprocess.run(
                        ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                        capture_output=True,
                        text=True,
                        timeout=10,
                    ).stdout.strip()
                )
                if commit
                else None
            )
        except (OSError, subprocess.SubprocessError):
            commit, dirty = None, None
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "host": platform.node(),
        "libraries": {n: pkg_version(n) for n in LIBRARIES},
    }
