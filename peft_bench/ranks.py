"""Many processes, one job (DDP): which rank this process is, and rank 0's word to the others. The run
folder's lock, results.json, the tokenized-data cache build, the checkpoints and the export belong to
rank 0; the other ranks wait for its word (go, from which checkpoint; or stop), then train beside it."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path

from lightning.pytorch.plugins.environments import SLURMEnvironment

from peft_bench.errors import PeftBenchError
from peft_bench.io import atomic_write

log = logging.getLogger("peft_bench")

WORD_FILE = ".rank0.json"  # in the run folder, only for a job of several processes
ATTEMPT_ENV = "PEFT_BENCH_ATTEMPT"  # names this start of the job; Lightning's launched ranks inherit it
WAIT_ENV = "PEFT_BENCH_RANK_WAIT_S"  # how long a rank > 0 waits for rank 0's word (default: an hour)


def job_rank() -> int:
    """This process's global rank in the job, read as Lightning's own rank_zero_only reads it, before any
    process group exists: torchrun's RANK, SLURM's task id (a job of several tasks), Lightning's launched
    LOCAL_RANK; 0 for a process alone."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if SLURMEnvironment.detect() and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env.get("SLURM_PROCID", "0"))
    return int(env.get("LOCAL_RANK", "0"))


def slurm_tasks() -> int:
    """The tasks of this SLURM job (each is one rank), 1 outside SLURM."""
    return int(os.environ.get("SLURM_NTASKS", "1")) if SLURMEnvironment.detect() else 1


def attempt() -> str:
    """This start of the job, the same in every rank: SLURM's job id and restart count (a requeued job
    is a new start), or the id rank 0 passed on to the ranks Lightning launches."""
    # SLURM first: a job's environment is exported from the submitting process, which may hold the
    # name of an attempt of its own (a run in that process) that no task of this job would match
    if SLURMEnvironment.detect():
        return f"slurm-{os.environ.get('SLURM_JOB_ID')}-{os.environ.get('SLURM_RESTART_COUNT', '0')}"
    return os.environ.get(ATTEMPT_ENV, "")


def begin_attempt() -> None:
    """Rank 0: name this start (the ranks Lightning launches later inherit the name)."""
    os.environ.pop(ATTEMPT_ENV, None)
    os.environ[ATTEMPT_ENV] = attempt() or uuid.uuid4().hex


def tell_ranks(
    run_dir: Path, go: bool, resume_from: Path | None = None, why: str = "", unless_told: bool = False
) -> None:
    """Rank 0's word to the other ranks: go (from `resume_from`, or from step 0), or stop (`why`);
    `unless_told`: only if this start of the job has said nothing yet."""
    path = Path(run_dir) / WORD_FILE
    if unless_told:
        try:
            if json.loads(path.read_text()).get("attempt") == attempt():
                return
        except (OSError, ValueError):
            pass
    word = {"attempt": attempt(), "go": go, "resume_from": str(resume_from) if resume_from else None}
    atomic_write(path, json.dumps({**word, "why": why}))


def wait_for_rank_zero(run_dir: Path, rank: int) -> dict:
    """A rank > 0: rank 0's word for this start of the job, once rank 0 has checked the folder, read or
    built the data and decided from which checkpoint to go on."""
    path, me = Path(run_dir) / WORD_FILE, attempt()
    limit = float(os.environ.get(WAIT_ENV, "3600"))
    deadline = time.monotonic() + limit
    while True:
        try:
            word = json.loads(path.read_text())
            if word.get("attempt") == me:
                return word
        except (OSError, ValueError):  # not written yet
            pass
        if time.monotonic() > deadline:
            raise PeftBenchError(
                f"rank {rank}: no word from rank 0 in {path} after {limit:.0f} s ({WAIT_ENV}): rank 0 died "
                "before training, or runs in another folder"
            )
        time.sleep(0.5)


__all__ = ["job_rank", "slurm_tasks", "begin_attempt", "tell_ranks", "wait_for_rank_zero", "WORD_FILE"]
