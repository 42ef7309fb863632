"""A Hydra callback: checks every job of a sweep before the first starts, and when the sweep ends
prints one table of its jobs (every job: completed, failed, diverged, interrupted, running, stale or
missing), writes the sweep's report, and exits non-zero unless every job completed."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from peft_bench.errors import ConfigError, PeftBenchError
from peft_bench.results import RESULTS_FILE, collect, job_order, unfinished_reason

MISSING = "missing"  # a job folder without results.json: never started, or died before writing one
FAILURES = "job_failures.jsonl"  # in the sweep folder: one line per job that raised, from any process


def record_job_failure(error: BaseException) -> None:
    """Note a failed job in its sweep's ledger: some failures leave no results.json of this attempt
    (the folder is another process's, or holds a completed run of another configuration), and the
    sweep's end must still count and show them. One short appended line: safe from concurrent jobs."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    line = json.dumps({"job": str(hc.job.num), "run_dir": str(Path(hc.runtime.output_dir).absolute()),
                       "overrides": list(hc.overrides.task), "at": time.time(),
                       "error": f"{type(error).__name__}: {error}"})
    path = Path(hc.sweep.dir) / FAILURES
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(line + "\n")


def job_failures(root: Path, since: float) -> dict[str, str]:
    """{job folder (absolute): error} for the jobs that failed since `since` (this sweep's start) without
    a results.json of theirs saying so."""
    out = {}
    try:
        lines = (root / FAILURES).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("at", 0) >= since and rec.get("run_dir"):
            out[rec["run_dir"]] = str(rec.get("error"))
    return out


def majority_share(results: dict, split: str) -> float | None:
    """Accuracy of always answering the most frequent class: the chance level to beat."""
    counts = results.get("data", {}).get("label_counts", {}).get(split)
    return max(counts.values()) / sum(counts.values()) if counts else None


def job_reason(root: Path, run_dir: Path, r: dict | str | None, failures: dict[str, str]) -> str | None:
    """Why a job of the sweep did not complete (None if it did): its own failure in this sweep first
    (its results.json may be an older attempt's), then what its results.json says."""
    failed = failures.get(str(run_dir.absolute()))
    if failed is not None:
        return f"failed: {failed}"
    if r == MISSING:
        return f"{MISSING}: no {RESULTS_FILE} (never started, or died before writing it)"
    return unfinished_reason(r if isinstance(r, dict) else None)


def runs_table(root: Path, runs: list[tuple[Path, dict | str | None]] | None = None,
               failures: dict[str, str] | None = None) -> Table:
    """One row per job; a job is its results.json (dict), None if unreadable, or MISSING."""
    runs = collect(root) if runs is None else runs
    failures = failures or {}
    table = Table(title=f"runs in {root}")
    done = [r for _, r in runs if isinstance(r, dict)]
    lm = any("val_ppl" in r for r in done)
    chance = [majority_share(r, "test") for r in done]
    if chance and chance[0] is not None and not lm:
        table.caption = f"chance level (majority class) on the test split: acc {chance[0]:.4f}"
    scores = ["val_ppl", "test_ppl"] if lm else ["val_acc", "val_f1", "test_acc", "test_f1"]
    for col in ("run", "method", "rank", "trainable / total", "ratio", *[k.replace("_", " ") for k in scores],
                "train time (s)", "status"):
        table.add_column(col, justify="left" if col in ("run", "method", "status") else "right")
    for run_dir, r in runs:
        name = str(run_dir.relative_to(root)) or "."
        why = job_reason(root, run_dir, r, failures)
        if not isinstance(r, dict):
            table.add_row(name, *[""] * (5 + len(scores)), why)
            continue

        def fmt(key: str, spec: str = ".4f", r: dict = r) -> str:
            return format(r[key], spec) if isinstance(r.get(key), int | float) else "-"

        params = f"{r['trainable_params']:,} / {r['total_params']:,}" if "total_params" in r else "-"
        status = why or "completed"
        if r.get("warnings") and status == "completed":
            status += f" ⚠ {'; '.join(r['warnings'])}"
        table.add_row(name, r.get("method", "?"), str(r.get("rank", "-")), params, fmt("trainable_ratio", ".4%"),
                      *[fmt(k, ".2f" if lm else ".4f") for k in scores], fmt("train_time_s", ".1f"), status)
    return table


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The overrides of every job a sweep of these overrides launches (Hydra's basic sweeper's
    Cartesian product, which the submitit launchers use too)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def check_sweep(config: DictConfig) -> None:
    """Compose and check every job's config before any job starts: one bad value fails the sweep, and
    so does a job that repeats another (`rank=4,4`: the same run twice would count as two seeds).
    Only for Hydra's basic sweeper (a grid, known up front); a sweeper that chooses its jobs as it goes
    (Optuna, Ax) leaves each job to check its own config when it starts."""
    from hydra import compose

    from peft_bench.config import check_config

    if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        return
    problems, seen = [], {}
    for num, job in enumerate(sweep_jobs(list(config.hydra.overrides.task))):
        cfg = compose(config_name=config.hydra.job.config_name, overrides=[*job, "run_dir=/dev/null"])
        try:
            check_config(cfg)
        except ConfigError as e:
            problems += [f"job {' '.join(job)}: {p}" for p in e.problems]
            continue
        key = json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True, default=str)
        if key in seen:
            problems.append(f"jobs {seen[key][0]} ({' '.join(seen[key][1])}) and {num} ({' '.join(job)}) are the same "
                            "run: a repeated value would be counted twice; remove the repeat")
        else:
            seen[key] = (num, job)
    if problems:
        raise ConfigError(problems)


def sweep_runs(config: DictConfig, root: Path, failures: dict[str, str]) -> list[tuple[Path, dict | str | None]]:
    """Every job of the sweep with its results: the folders found; the jobs that failed without a
    results.json of theirs (the ledger); and, for the basic sweeper with job-numbered folders (its jobs
    are known up front), each job folder that has no results.json, as MISSING."""
    root = root.absolute()
    runs = collect(root)
    found = {d for d, _ in runs}
    expected = [Path(d) for d in failures]
    numbered = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir") == "${hydra.job.num}"
    if config.hydra.sweeper.get("_target_") == BASIC_SWEEPER and numbered:
        expected += [root / str(n) for n in range(len(sweep_jobs(list(config.hydra.overrides.task))))]
    missing = {d.absolute() for d in expected} - found
    return sorted([*runs, *[(d, MISSING) for d in missing]], key=lambda x: job_order(root, x[0]))


class SweepSummary(Callback):
    """Checks every job of a sweep before the first starts; prints a table of the jobs at the end and
    exits non-zero unless every job completed."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.started = time.time()
        try:
            check_sweep(config)
        except PeftBenchError as e:
            print(f"peft_bench: error: no job was started: {e}", file=sys.stderr)
            sys.exit(2)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        root = Path(config.hydra.sweep.dir).absolute()
        failures = job_failures(root, getattr(self, "started", 0.0))
        runs = sweep_runs(config, root, failures) if root.is_dir() else []
        if runs:
            Console(width=200).print(runs_table(root, runs, failures))
            try:  # the comparison report of the sweep; never what decides the sweep's exit status
                from peft_bench.report import write_report

                wrote = write_report([root])
                print(f"peft_bench: report of the sweep: {wrote['out'] / 'report.md'} ({len(wrote['images'])} plots, "
                      f"runs.csv{', W&B run ' + wrote['wandb'] if wrote['wandb'] else ''})")
            except Exception as e:  # noqa: BLE001
                print(f"peft_bench: the sweep's report failed ({type(e).__name__}: {e}); "
                      f"`python -m peft_bench.report {root}` retries it", file=sys.stderr)
        bad = [(d, why) for d, r in runs if (why := job_reason(root, d, r, failures)) is not None]
        for d, why in bad:
            print(f"peft_bench: job {d.relative_to(root)} {why}", file=sys.stderr)
        if bad or not runs:
            print(f"peft_bench: {len(bad)} of {len(runs)} jobs did not complete", file=sys.stderr)
            sys.exit(1)
