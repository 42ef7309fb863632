"""Sweeps that survive: deterministic run folders, skip-completed re-runs, resume after SIGTERM with
the same final figures, failed and diverged jobs that do not stop a sweep, and up-front checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, TINY, run_cli

SWEEP = [*TINY, "trainer=fast", "trainer.limit_train_batches=10"]


def results(folder) -> dict:
    return json.loads((folder / "results.json").read_text())


@pytest.mark.slow  # two sweeps as subprocesses: ~40 s
def test_same_command_same_folder_and_completed_jobs_are_skipped(tmp_path):
    args = ["-m", *SWEEP, "rank=2,4"]
    first = run_cli(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (sweep,) = list((tmp_path / "multirun").iterdir())  # no date or time in the folder name
    assert "rank=2,4" in sweep.name
    stamps = [(sweep / str(j) / "results.json").stat().st_mtime_ns for j in (0, 1)]
    second = run_cli(args, cwd=tmp_path)
    assert second.returncode == 0
    assert "completed before, skipped" in second.stdout + second.stderr
    assert [(sweep / str(j) / "results.json").stat().st_mtime_ns for j in (0, 1)] == stamps
    assert list((tmp_path / "multirun").iterdir()) == [sweep]
    # skip_completed=false redoes a run in its folder: test_hostile.py::test_11_... and test_a_completed_...


def test_a_failed_job_does_not_stop_the_sweep_and_the_sweep_exits_non_zero(tmp_path):
    out = run_cli(["-m", *SWEEP, "dataset.text_field=sentence,review", f"hydra.sweep.dir={tmp_path}"])
    assert out.returncode == 1
    ok, bad = results(tmp_path / "0"), results(tmp_path / "1")
    assert ok["status"] == "completed"
    assert bad["status"] == "failed" and "no column 'review'" in bad["error"]
    assert "job 1 failed" in out.stderr and "1 of 2 jobs did not complete" in out.stderr


def test_a_diverging_run_stops_with_status_diverged_and_the_sweep_goes_on(tmp_path):
    out = run_cli(
        ["-m", *SWEEP, "method.lr=1e-3,1e12", "trainer.gradient_clip_val=null", f"hydra.sweep.dir={tmp_path}"]
    )
    assert out.returncode == 1
    assert results(tmp_path / "0")["status"] == "completed"
    diverged = results(tmp_path / "1")
    assert diverged["status"] == "diverged" and "training loss became nan" in diverged["error"]
    assert not (tmp_path / "1" / "checkpoints" / "last.ckpt").exists()  # no non-finite weights written


def test_one_invalid_value_fails_the_sweep_before_any_job_starts(tmp_path):
    out = run_cli(["-m", *SWEEP, "rank=4,0", f"hydra.sweep.dir={tmp_path}"])
    assert out.returncode == 2
    assert "no job was started" in out.stderr and "job" in out.stderr and "rank=0" in out.stderr
    assert not list(tmp_path.rglob("results.json"))


@pytest.mark.slow  # a run stopped with SIGTERM and its resume: ~40 s
def test_sigterm_then_same_command_resumes_from_the_epoch_checkpoint_and_reports_the_whole_run(tmp_path):
    """A polite stop (SLURM's SIGTERM before a time limit): status interrupted, a non-zero exit, and the
    same command resumes from the last epoch's checkpoint. (That a resume repeats the uninterrupted run
    exactly is test_hostile.py's SIGKILL test.)"""
    # 3 epochs of 150 steps on the tiny model; a checkpoint at each epoch's end.
    args = [
        *TINY,
        "dataset.generator_size=3000",
        "trainer.max_epochs=3",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "method.lr=3e-3",
    ]
    env = {**os.environ, "PEFT_BENCH_CACHE": os.environ["PEFT_BENCH_CACHE"]}
    run_dir = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "peft_bench", *args, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # mid-way through epoch 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    assert results(run_dir)["status"] == "interrupted"

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = results(run_dir)
    assert resumed["status"] == "completed" and resumed["resumed_from"]["step"] in (
        150,
        300,
    )  # an epoch's end
    assert resumed["optimizer_steps"] == 450
    # the whole run's figures, carried in the checkpoint: not only the epochs after the resume
    assert resumed["train_examples"] == 3 * 2400 and len(resumed["train_loss_per_epoch"]) == 3
    assert len(resumed["time_per_epoch_s"]) == 3 and resumed["train_time_s"] >= sum(
        resumed["time_per_epoch_s"]
    )


def test_a_deferred_finite_check_still_stops_a_diverging_run_before_its_checkpoint(tmp_path, monkeypatch):
    """On an accelerator the loss is checked every log_every_n_steps (no per-step host sync); forced
    here on CPU: the run still ends diverged and leaves no checkpoint of non-finite weights."""
    from peft_bench.methods.base import BenchModule
    from peft_bench.train import run
    from tests.helpers import compose

    monkeypatch.setattr(BenchModule, "defer_finite_check", True)
    cfg = compose(
        [*SWEEP, "method.lr=1e12", "trainer.gradient_clip_val=null", "trainer.log_every_n_steps=4"], tmp_path
    )
    with pytest.raises(Exception, match="non-finite at or before optimizer step 4"):
        run(cfg)
    assert results(tmp_path)["status"] == "diverged"
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_the_sweep_table_has_a_seed_column(tmp_path):
    from rich.console import Console

    from peft_bench.results import write_results
    from peft_bench.sweep_summary import MISSING, runs_table
    from tests.test_report import result

    runs = [(tmp_path / str(j), result("lora", seed, 0.8)) for j, seed in enumerate((7, 13))]
    for folder, r in runs:
        write_results(folder, r)
    runs = [(d, json.loads((d / "results.json").read_text())) for d, _ in runs]
    table = runs_table(tmp_path, [*runs, (tmp_path / "2", MISSING)])
    columns = [c.header for c in table.columns]
    assert columns[columns.index("rank") + 1] == "seed"
    seeds = list(table.columns[columns.index("seed")].cells)
    assert seeds == ["7", "13", ""]  # a job without results.json has no seed
    assert all(len(list(c.cells)) == 3 for c in table.columns)  # every row has every cell
    console = Console(width=300, record=True, markup=False)
    console.print(table)
    text = console.export_text()
    header = next(line for line in text.splitlines() if "trainable / total" in line)
    cells = [c.strip() for c in header.replace("┃", "│").split("│")]
    assert cells[cells.index("rank") + 1] == "seed" and "missing: no results.json" in text
