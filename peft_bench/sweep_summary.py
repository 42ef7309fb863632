"""A Hydra callback: checks every job of a sweep before the first starts, and when the sweep ends
prints one table of its jobs (every job: completed, failed, diverged, interrupted, running, stale or
missing), writes the sweep's report, and exits non-zero unless every job completed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from peft_bench.errors import ConfigError, PeftBenchError
from peft_bench.results import RESULTS_FILE, collect, unfinished_reason

MISSING = "missing"  # a job folder without results.json: never started, or died before writing one


def majority_share(results: dict, split: str) -> float | None:
    """Accuracy of always answering the most frequent class: the chance level to beat."""
    counts = results.get("data", {}).get("label_counts", {}).get(split)
    return max(counts.values()) / sum(counts.values()) if counts else None


def runs_table(root: Path, runs: list[tuple[Path, dict | str | None]] | None = None) -> Table:
    """One row per job; a job is its results.json (dict), None if unreadable, or MISSING."""
    runs = collect(root) if runs is None else runs
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
        if not isinstance(r, dict):
            why = f"{MISSING}: no {RESULTS_FILE} (never started, or died before writing it)" if r == MISSING \
                else unfinished_reason(None)
            table.add_row(name, *[""] * (5 + len(scores)), why)
            continue

        def fmt(key: str, spec: str = ".4f", r: dict = r) -> str:
            return format(r[key], spec) if isinstance(r.get(key), int | float) else "-"

        params = f"{r['trainable_params']:,} / {r['total_params']:,}" if "total_params" in r else "-"
        status = unfinished_reason(r) or "completed"
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


def sweep_runs(config: DictConfig, root: Path) -> list[tuple[Path, dict | str | None]]:
    """Every job of the sweep with its results: the folders found, plus (for the basic sweeper, whose
    jobs are known) each job folder that has no results.json, as MISSING."""
    runs = collect(root)
    if config.hydra.sweeper.get("_target_") == BASIC_SWEEPER:
        found = {d for d, _ in runs}
        jobs = sweep_jobs(list(config.hydra.overrides.task))
        missing = [root / str(n) for n in range(len(jobs)) if root / str(n) not in found]
        runs = sorted([*runs, *[(d, MISSING) for d in missing]],
                      key=lambda x: [int(p) if p.isdigit() else p for p in x[0].relative_to(root).parts])
    return runs


class SweepSummary(Callback):
    """Checks every job of a sweep before the first starts; prints a table of the jobs at the end and
    exits non-zero unless every job completed."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            check_sweep(config)
        except PeftBenchError as e:
            print(f"peft_bench: error: no job was started: {e}", file=sys.stderr)
            sys.exit(2)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        root = Path(config.hydra.sweep.dir)
        runs = sweep_runs(config, root) if root.is_dir() else []
        if runs:
            Console(width=200).print(runs_table(root, runs))
            try:  # the comparison report of the sweep; never what decides the sweep's exit status
                from peft_bench.report import write_report

                wrote = write_report([root])
                print(f"peft_bench: report of the sweep: {wrote['out'] / 'report.md'} ({len(wrote['images'])} plots, "
                      f"runs.csv{', W&B run ' + wrote['wandb'] if wrote['wandb'] else ''})")
            except Exception as e:  # noqa: BLE001
                print(f"peft_bench: the sweep's report failed ({type(e).__name__}: {e}); "
                      f"`python -m peft_bench.report {root}` retries it", file=sys.stderr)
        bad = [(d, r) for d, r in runs if not isinstance(r, dict) or unfinished_reason(r) is not None]
        for d, r in bad:
            reason = (f"{MISSING}: no {RESULTS_FILE}" if r == MISSING else
                      unfinished_reason(r if isinstance(r, dict) else None))
            print(f"peft_bench: job {d.relative_to(root)} {reason}", file=sys.stderr)
        if bad or not runs:
            print(f"peft_bench: {len(bad)} of {len(runs)} jobs did not complete", file=sys.stderr)
            sys.exit(1)
