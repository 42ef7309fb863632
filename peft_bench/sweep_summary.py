"""A Hydra callback that prints one table of a sweep's runs when the sweep ends."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from peft_bench.results import RESULTS_FILE


def collect(root: Path) -> list[tuple[Path, dict | None]]:
    """Every results.json under root, parsed (None where unreadable), in job order."""
    def job_order(p: Path):
        return [int(x) if x.isdigit() else x for x in p.relative_to(root).parts]

    out = []
    for path in sorted(root.rglob(RESULTS_FILE), key=job_order):
        try:
            out.append((path.parent, json.loads(path.read_text())))
        except (OSError, ValueError):
            out.append((path.parent, None))
    return out


def majority_share(results: dict, split: str) -> float | None:
    """Accuracy of always answering the most frequent class: the chance level to beat."""
    counts = results.get("data", {}).get("label_counts", {}).get(split)
    return max(counts.values()) / sum(counts.values()) if counts else None


def runs_table(root: Path, runs: list[tuple[Path, dict | None]] | None = None) -> Table:
    runs = collect(root) if runs is None else runs
    table = Table(title=f"runs in {root}")
    lm = any(r and "val_ppl" in r for _, r in runs)
    chance = [majority_share(r, "test") for _, r in runs if r]
    if chance and chance[0] is not None and not lm:
        table.caption = f"chance level (majority class) on the test split: acc {chance[0]:.4f}"
    scores = ["val_ppl", "test_ppl"] if lm else ["val_acc", "val_f1", "test_acc", "test_f1"]
    for col in ("run", "method", "rank", "trainable / total", "ratio", *[k.replace("_", " ") for k in scores],
                "train time (s)", "status"):
        table.add_column(col, justify="left" if col in ("run", "method", "status") else "right")
    for run_dir, r in runs:
        name = str(run_dir.relative_to(root)) or "."
        if r is None:
            table.add_row(name, *[""] * (5 + len(scores)), "unreadable results.json")
            continue

        def fmt(key: str, spec: str = ".4f", r: dict = r) -> str:
            return format(r[key], spec) if isinstance(r.get(key), int | float) else "-"

        params = f"{r['trainable_params']:,} / {r['total_params']:,}" if "total_params" in r else "-"
        status = r.get("status", "?") + (f": {r['error']}" if r.get("error") else "")
        table.add_row(name, r.get("method", "?"), str(r.get("rank", "-")), params, fmt("trainable_ratio", ".4%"),
                      *[fmt(k, ".2f" if lm else ".4f") for k in scores], fmt("train_time_s", ".1f"),
                      status)
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
    """Compose and check every job's config before any job starts: one bad value fails the sweep.
    Only for Hydra's basic sweeper (a grid, known up front); a sweeper that chooses its jobs as it goes
    (Optuna, Ax) leaves each job to check its own config when it starts."""
    from hydra import compose

    from peft_bench.config import ConfigError, check_config

    if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        return
    problems = []
    for job in sweep_jobs(list(config.hydra.overrides.task)):
        try:
            check_config(compose(config_name=config.hydra.job.config_name, overrides=[*job, "run_dir=/dev/null"]))
        except ConfigError as e:
            problems += [f"job {' '.join(job)}: {p}" for p in e.problems]
    if problems:
        raise ConfigError(problems)


class SweepSummary(Callback):
    """Checks every job of a sweep before the first starts; prints a table of the runs at the end and
    exits non-zero if any job failed or diverged."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from peft_bench.config import PeftBenchError

        try:
            check_sweep(config)
        except PeftBenchError as e:
            print(f"peft_bench: error: no job was started: {e}", file=sys.stderr)
            sys.exit(2)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        root = Path(config.hydra.sweep.dir)
        if not root.is_dir():
            return
        runs = collect(root)
        Console(width=200).print(runs_table(root, runs))
        try:  # the comparison report of the sweep; never what decides the sweep's exit status
            from peft_bench.report import write_report

            wrote = write_report([root])
            print(f"peft_bench: report of the sweep: {wrote['out'] / 'report.md'} ({len(wrote['images'])} plots, "
                  f"runs.csv{', W&B run ' + wrote['wandb'] if wrote['wandb'] else ''})")
        except Exception as e:  # noqa: BLE001
            print(f"peft_bench: the sweep's report failed ({type(e).__name__}: {e}); "
                  f"`python -m peft_bench.report {root}` retries it", file=sys.stderr)
        bad = [(d, r) for d, r in runs if r is None or r.get("status") != "completed"]
        if bad:
            for d, r in bad:
                reason = "unreadable results.json" if r is None else f"{r.get('status')}: {r.get('error')}"
                print(f"peft_bench: job {d.relative_to(root)} {reason}", file=sys.stderr)
            print(f"peft_bench: {len(bad)} of {len(runs)} jobs did not complete", file=sys.stderr)
            sys.exit(1)
