"""The sweep's ledger of jobs that failed without a results.json saying so: a failed job appends one
line (train.main, the job's entry point), the sweep's end reads them (sweep_summary)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

FAILURES = "job_failures.jsonl"  # in the sweep folder: one line per job that raised, from any process


def record_job_failure(error: BaseException) -> None:
    """Note a failed job in its sweep's ledger: some failures leave no results.json of this attempt
    (the folder is another process's, or holds a completed run of another configuration), and the
    sweep's end must still count and show them. One short appended line: safe from concurrent jobs."""
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
