"""Sweeps through a real SLURM (scripts/slurm.sh starts a one-node cluster on localhost; .ci/run and
`make test-slurm` do it): sbatch via hydra-submitit-launcher, and preemption with requeue + resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, TINY, run_cli


def slurm_ready() -> str | None:
    """None when a SLURM node is idle, else why the SLURM tests skip."""
    if shutil.which("sinfo") is None:
        return "SLURM is not installed (scripts/slurm.sh start installs and starts a one-node cluster)"
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if out.returncode != 0 or "idle" not in out.stdout:
        sinfo = out.stdout.strip() or out.stderr.strip()
        return f"no idle SLURM node (sinfo: {sinfo}); run scripts/slurm.sh start"
    return None


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(slurm_ready() is not None, reason=str(slurm_ready())),
]


def test_sweep_goes_through_sbatch_and_every_job_writes_results(tmp_path):
    out = run_cli(
        ["-m", "hydra/launcher=slurm_cpu", *TINY, "trainer=fast", "rank=2,4", f"hydra.sweep.dir={tmp_path}"],
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = [json.loads((tmp_path / str(j) / "results.json").read_text()) for j in (0, 1)]
    assert [r["rank"] for r in runs] == [2, 4] and all(r["status"] == "completed" for r in runs)
    assert list((tmp_path / ".submitit").iterdir())  # submitit's sbatch scripts and logs


def test_preempted_job_is_requeued_and_resumes_from_its_checkpoint(tmp_path):
    # W&B offline (conftest sets WANDB_MODE; sbatch passes the environment on): both starts of the job
    # must log to the same W&B run
    args = [
        sys.executable,
        "-m",
        "peft_bench",
        "-m",
        "hydra/launcher=slurm_cpu",
        "model=tiny",
        "dataset=demo",
        "logger=wandb",
        "dataset.generator_size=10000",
        "trainer.max_epochs=3",
        "trainer.limit_val_batches=5",
        "trainer.limit_test_batches=5",
        f"hydra.sweep.dir={tmp_path}",
    ]
    launcher = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = tmp_path / "0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and launcher.poll() is None:
        time.sleep(0.5)
    assert last.exists(), "the job wrote no checkpoint"
    job = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()[0]
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # what SLURM sends before preempting
    output, _ = launcher.communicate(timeout=900)
    assert launcher.returncode == 0, output[-3000:]
    r = json.loads((tmp_path / "0" / "results.json").read_text())
    assert r["status"] == "completed"
    assert r["resumed_from"]["step"] >= 500  # from its checkpoint, not step 0
    assert r["optimizer_steps"] == 1500  # the planned total: 3 epochs of 500 steps
    starts = list((tmp_path / "0" / "wandb").glob("offline-run-*"))
    assert len(starts) == 2, starts  # the first start and the requeued one ...
    assert len({p.name.rsplit("-", 1)[-1] for p in starts}) == 1  # ... are one W&B run (same id)
