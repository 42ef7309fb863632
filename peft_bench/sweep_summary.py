"""A Hydra callback: checks every job of a sweep before the first starts, and when the sweep ends
prints one table of its jobs (every job: completed, failed, diverged, interrupted, running, stale or
missing), writes the sweep's report, and exits non-zero unless every job completed."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from peft_bench.errors import ConfigError, PeftBenchError
from peft_bench.io import check_writable
from peft_bench.ledger import job_failures
from peft_bench.report import baseline_text, write_report
from peft_bench.results import EDITED, RESULTS_FILE, collect, digest_state, job_order, unfinished_reason
from peft_bench.sweep import check_jobs, sweep_jobs
from peft_bench.tasks import CLASSIFICATION, task_of

MISSING = "missing"  # a job folder without results.json: never started, or died before writing one


def job_reason(root: Path, run_dir: Path, r: dict | str | None, failures: dict[str, str]) -> str | None:
    """Why a job of the sweep did not complete (None if it did): its own failure in this sweep first
    (its results.json may be an older attempt's), then what its results.json says."""
    failed = failures.get(str(run_dir.absolute()))
    if failed is not None:
        return f"failed: {failed}"
    if r == MISSING:
        return f"{MISSING}: no {RESULTS_FILE} (never started, or died before writing it)"
    return unfinished_reason(r if isinstance(r, dict) else None)


def runs_table(
    root: Path,
    runs: list[tuple[Path, dict | str | None]] | None = None,
    failures: dict[str, str] | None = None,
) -> Table:
    """One row per job (its folder, method, rank, seed, size, scores, time, status); a job is its
    results.json (dict), None if unreadable, or MISSING."""
    runs = collect(root) if runs is None else runs
    failures = failures or {}
    table = Table(title=f"runs in {root}")
    done = [r for _, r in runs if isinstance(r, dict) and r.get("status") == "completed"]
    # each dataset's task, the first completed run's (its columns, its trivial predictor's figures)
    first: dict = {}
    for r in done:
        first.setdefault(r.get("dataset"), r)
    tasks = [task_of(r) for r in first.values()] or [CLASSIFICATION]
    several = len(first) > 1
    said = [(d, baseline_text(task_of(r), r)) for d, r in first.items()]
    if any(text for _, text in said):
        table.caption = "; ".join(f"{d}: {text}" if several else text for d, text in said if text)
    scores = list(dict.fromkeys(k for t in tasks for k in (*t.val_scores, *t.test_scores)))
    fmt_of = {k: t.spec for t in reversed(tasks) for k in (*t.val_scores, *t.test_scores)}
    for col in (
        "run",
        *(["dataset"] if several else []),
        "method",
        "rank",
        "seed",
        "trainable / total",
        "ratio",
        *[k.replace("_", " ") for k in scores],
        "train time (s)",
        "status",
    ):
        table.add_column(col, justify="left" if col in ("run", "dataset", "method", "status") else "right")
    for run_dir, r in runs:
        name = str(run_dir.relative_to(root)) or "."
        why = job_reason(root, run_dir, r, failures)
        if not isinstance(r, dict):
            table.add_row(name, *[""] * (6 + several + len(scores)), why)
            continue

        def fmt(key: str, spec: str = ".4f", r: dict = r) -> str:
            return format(r[key], spec) if isinstance(r.get(key), int | float) else "-"

        params = f"{r['trainable_params']:,} / {r['total_params']:,}" if "total_params" in r else "-"
        status = why or "completed"
        edited = [EDITED] if digest_state(r) == "edited" else []
        if (r.get("warnings") or edited) and status == "completed":
            status += f" ⚠ {'; '.join([*edited, *r.get('warnings', [])])}"
        table.add_row(
            name,
            *([r.get("dataset", "?")] if several else []),
            r.get("method", "?"),
            str(r.get("rank", "-")),
            str(r.get("seed", "-")),
            params,
            fmt("trainable_ratio", ".4%"),
            *[fmt(k, fmt_of[k]) for k in scores],
            fmt("train_time_s", ".1f"),
            status,
        )
    return table


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def task_overrides(config: DictConfig) -> list[str]:
    """The sweep's command-line overrides as typed: an interpolation in one (`dataset.data_files=
    {train:data/${dataset.name}.jsonl}`) is each job's to resolve, not the sweep config's (whose dataset
    is the default one). Hydra hands its callbacks hydra.overrides.task already resolved against the
    sweep's config, so the command line's own strings are taken where they are the same overrides."""
    resolved = list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    typed = command_line_overrides()
    same = len(typed) == len(resolved) and all(
        a.split("=", 1)[0] == b.split("=", 1)[0] for a, b in zip(typed, resolved, strict=True)
    )
    return typed if same else resolved


def command_line_overrides() -> list[str]:
    """The overrides of this process's command line, as Hydra's own argument parser reads them."""
    from hydra._internal.utils import get_args_parser

    try:
        args, _ = get_args_parser().parse_known_args(sys.argv[1:])
    except SystemExit:  # not a Hydra command line (an embedding program's own arguments)
        return []
    return [o for o in args.overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]


def check_sweep(config: DictConfig) -> None:
    """Compose and check every job's config before any job starts: one bad value fails the sweep, and
    so does a job that repeats another (Hydra composes once per group choice: sweep.JobComposer, which
    check_jobs wraps this compose in). Only for Hydra's basic sweeper (a grid, known up front); a
    sweeper that chooses its jobs as it goes (Optuna, Ax) leaves each job to check its own config."""
    from hydra import compose

    if config.hydra.sweeper.get("_target_") == BASIC_SWEEPER:
        jobs = check_jobs(
            task_overrides(config),
            lambda job: compose(
                config_name=config.hydra.job.config_name, overrides=[*job, "run_dir=/dev/null"]
            ),
        )
        launcher = str(config.hydra.launcher.get("_target_", ""))
        if "Slurm" not in launcher:
            many = [" ".join(j) or "(defaults)" for j, run in jobs if device_count(run.trainer.devices) > 1]
            if many:
                names = ", ".join(many[:3]) + (" ..." if len(many) > 3 else "")
                raise ConfigError(
                    [
                        f"trainer.devices above 1 in a sweep on {launcher.rsplit('.', 1)[-1]} "
                        f"(jobs {names}): Lightning starts the other processes with this whole command "
                        "line, so each would run the whole sweep. Run each job as its own command, or sweep "
                        "on SLURM (hydra/launcher=slurm_gpu, hydra.launcher.tasks_per_node=trainer.devices)"
                    ]
                )


def device_count(devices) -> int:
    """How many processes trainer.devices starts (-1 and "auto": every visible GPU, one on a CPU)."""
    import torch

    if isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if devices in (-1, "-1", "auto"):
        return max(torch.cuda.device_count(), 1)
    try:
        return int(devices)
    except (TypeError, ValueError):
        return 1


def sweep_runs(
    config: DictConfig, root: Path, failures: dict[str, str]
) -> list[tuple[Path, dict | str | None]]:
    """Every job of the sweep with its results: the folders found; the jobs that failed without a
    results.json of theirs (the ledger); and, for the basic sweeper with job-numbered folders (its jobs
    are known up front), each job folder that has no results.json, as MISSING."""
    root = root.absolute()
    runs = collect(root)
    found = {d for d, _ in runs}
    expected = [Path(d) for d in failures]
    numbered = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir") == "${hydra.job.num}"
    if config.hydra.sweeper.get("_target_") == BASIC_SWEEPER and numbered:
        expected += [root / str(n) for n in range(len(sweep_jobs(task_overrides(config))))]
    missing = {d.absolute() for d in expected} - found
    return sorted([*runs, *[(d, MISSING) for d in missing]], key=lambda x: job_order(root, x[0]))


class SweepSummary(Callback):
    """Checks that a run's or sweep's folder can be written and every job of a sweep before the first
    starts; prints a table of the jobs at the end and
    exits non-zero unless every job completed."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            check_writable(Path(config.hydra.run.dir))
        except PeftBenchError as e:
            print(f"peft_bench: error: {e}", file=sys.stderr)
            sys.exit(2)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.started = time.time()
        try:
            check_writable(Path(config.hydra.sweep.dir), elsewhere="hydra.sweep.dir=")
            check_sweep(config)
        except PeftBenchError as e:
            print(f"peft_bench: error: no job was started: {e}", file=sys.stderr)
            sys.exit(2)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        root = Path(config.hydra.sweep.dir).absolute()
        failures = job_failures(root, getattr(self, "started", 0.0))
        runs = sweep_runs(config, root, failures) if root.is_dir() else []
        if runs:
            # markup off: an error text with [brackets] would otherwise be read as rich markup and fail
            try:  # the table never decides the exit status either (Hydra only warns about a callback)
                Console(width=200, markup=False).print(runs_table(root, runs, failures))
            except Exception as e:  # noqa: BLE001
                print(f"peft_bench: the sweep's table failed ({type(e).__name__}: {e})", file=sys.stderr)
            try:  # the comparison report of the sweep; never what decides the sweep's exit status
                wrote = write_report([root])
                print(
                    f"peft_bench: report of the sweep: {wrote['out'] / 'report.md'} "
                    f"({len(wrote['images'])} plots, "
                    f"runs.csv{', W&B run ' + wrote['wandb'] if wrote['wandb'] else ''})"
                )
            except Exception as e:  # noqa: BLE001
                print(
                    f"peft_bench: the sweep's report failed ({type(e).__name__}: {e}); "
                    f"`python -m peft_bench.report {root}` retries it",
                    file=sys.stderr,
                )
        bad = [(d, why) for d, r in runs if (why := job_reason(root, d, r, failures)) is not None]
        for d, why in bad:
            print(f"peft_bench: job {d.relative_to(root)} {why}", file=sys.stderr)
        if bad or not runs:
            print(f"peft_bench: {len(bad)} of {len(runs)} jobs did not complete", file=sys.stderr)
            sys.exit(1)
