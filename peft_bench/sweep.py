"""The jobs of a sweep: their check before any starts (one home for the sweep summary's pre-check and
for `prepare`), and the sweep's ledger of jobs that failed without a results.json saying so."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from peft_bench.checks import check_config
from peft_bench.config import RunConfig
from peft_bench.errors import ConfigError
from peft_bench.resolvers import run_identity
from peft_bench.results import flatten


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The overrides of every job a sweep of these overrides launches (Hydra's basic sweeper's
    Cartesian product, which the submitit launchers use too)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def check_jobs(
    overrides: list[str],
    compose: Callable[[list[str]], DictConfig],
    before_check: Callable[[DictConfig], None] | None = None,
) -> list[tuple[list[str], RunConfig]]:
    """(job overrides, checked config) for every job of the sweep; one ConfigError with every problem
    of every job, and with every job that repeats another (`rank=4,4`: the same run twice would count as
    two seeds). `before_check` runs on each composed config first (prepare builds local models there)."""
    jobs, problems, seen = [], [], {}
    for num, job in enumerate(sweep_jobs(overrides)):
        cfg = compose(job)
        try:
            if before_check is not None:
                before_check(cfg)
            run = check_config(cfg)
        except ConfigError as e:
            problems += [f"job {' '.join(job)}: {p}" for p in e.problems]
            continue
        # the keys that define a run (resolvers.KEY_ROLES): the top-level rank and sparsity act only
        # through the method's own keys (method.r, method.pruning.target)
        key = json.dumps(
            run_identity(flatten(OmegaConf.to_container(cfg, resolve=True))), sort_keys=True, default=str
        )
        if key in seen:
            problems.append(
                f"jobs {seen[key][0]} ({' '.join(seen[key][1])}) and {num} ({' '.join(job)}) are the same "
                "run (a repeated value, or one the method does not use: rank for ia3, bitfit and full, "
                "sparsity for methods without pruning): it would be counted twice. Remove the repeat, or "
                "sweep that value in a command of its own with the methods that use it"
            )
        else:
            seen[key] = (num, job)
            jobs.append((job, run))
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))  # a bad value shared by several jobs: said once
    return jobs


FAILURES = "job_failures.jsonl"  # in the sweep folder: one line per job that raised, from any process


def record_job_failure(error: BaseException) -> None:
    """Note a failed job in its sweep's ledger: some failures leave no results.json of this attempt
    (the folder is another process's, or holds a completed run of another configuration), and the
    sweep's end must still count and show them. One short appended line: safe from concurrent jobs."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    line = json.dumps(
        {
            "job": str(hc.job.num),
            "run_dir": str(Path(hc.runtime.output_dir).absolute()),
            "overrides": list(hc.overrides.task),
            "at": time.time(),
            "error": f"{type(error).__name__}: {error}",
        }
    )
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
