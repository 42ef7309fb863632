"""Hostile but fair inputs (issue 13): no silent wrong result, no invisible failure, resume that loses
nothing, and one clear message for bad input. Each case names the item of docs/reliability.md it
proves. Tiny model, small generated files; resume cases kill with SIGKILL, not a polite signal."""

from __future__ import annotations

import csv
import gzip
import json
import os
import platform
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from peft_bench.errors import ConfigError, DataError, PeftBenchError
from peft_bench.io import FILE_MODE, AtomicCheckpointIO, RunLock
from peft_bench.results import unfinished_reason
from tests.helpers import ROOT, TINY, compose, run_cli

FAST = [
    *TINY,
    "trainer=fast",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
]


def rows(n: int, offset: int = 0, label=None) -> list[dict]:
    words = ["good", "bad", "great", "dull", "moving", "boring"]
    return [
        {
            "sentence": f"the film was {words[(i + offset) % 6]} number {i + offset}",
            "label": (i % 2) if label is None else label,
        }
        for i in range(n)
    ]


def jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def files_override(files) -> str:
    if isinstance(files, dict):
        return "dataset.data_files={" + ",".join(f"{k}:'{v}'" for k, v in files.items()) + "}"
    return "dataset.data_files=[" + ",".join(f"'{v}'" for v in files) + "]"


def datamodule(tmp_path: Path, files, *extra: str):
    """The real datamodule of `model=tiny dataset=sst2 dataset.data_files=...`, prepared."""
    from hydra.utils import get_class

    from peft_bench.checks import check_config
    from peft_bench.models import load_tokenizer

    run = check_config(compose(["model=tiny", "dataset=sst2", files_override(files), *extra]))
    dm = get_class(run.dataset._target_)(
        dataset=run.dataset,
        tokenizer=load_tokenizer(run.model),
        cache_dir=str(tmp_path / "cache"),
        seed=run.seed,
    )
    dm.prepare_data()
    return dm


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def tiny_run(run_dir: Path, *extra: str, callbacks=()) -> dict:
    from peft_bench.train import run

    return run(compose([*FAST, *extra], run_dir), callbacks=callbacks)


# ---------------------------------------- 1. the cache knows which file feeds which split


def test_1_cache_key_covers_which_file_feeds_which_split(tmp_path):
    a, b = jsonl(tmp_path / "a.jsonl", rows(300)), jsonl(tmp_path / "b.jsonl", rows(100, 1000))
    first = datamodule(tmp_path, {"train": a, "validation": b})
    swapped = datamodule(tmp_path, {"validation": a, "train": b})
    as_list = datamodule(tmp_path, [a, b])
    assert first.info["sizes"] == {"train": 270, "validation": 100, "test": 30}
    assert swapped.info["cache"] == "miss" and swapped.info["sizes"] == {
        "train": 90,
        "validation": 300,
        "test": 10,
    }
    assert as_list.info["cache"] == "miss" and as_list.info["sizes"] == {
        "train": 320,
        "validation": 40,
        "test": 40,
    }
    assert len({first.info["cache_key"], swapped.info["cache_key"], as_list.info["cache_key"]}) == 3
    again = datamodule(tmp_path, {"train": a, "validation": b})
    assert again.info["cache"] == "hit" and again.info["sizes"] == first.info["sizes"]
    for key in ("dataset.max_length=32", "dataset.num_labels=3", "dataset.split_seed=7"):
        assert datamodule(tmp_path, {"train": a, "validation": b}, key).info["cache"] == "miss", key


# ---------------------------------------- 3. a given split is never silently replaced


BAD_ROWS = [  # (what, the validation file's rows, the message)
    (
        "one label -1",
        rows(50, 500)[:3] + [{"sentence": "x", "label": -1}] + rows(50, 500)[3:],
        r"validation.jsonl, row 4: label -1 is outside \[0, 2\)",
    ),
    (
        "label 2",
        [*rows(5, 500), {"sentence": "x", "label": 2}],
        r"validation.jsonl, row 6: label 2 is outside",
    ),
    ("string label", [{"sentence": "x", "label": "pos"}], r"row 1: label 'pos' is not an integer class"),
    ("fractional label", [{"sentence": "x", "label": 0.5}], r"row 1: label 0.5 is not an integer class"),
    ("null text", [*rows(2, 500), {"sentence": None, "label": 1}], r"row 3: 'sentence' is None, not text"),
    ("null label", [*rows(2, 500), {"sentence": "x", "label": None}], r"row 3: label None is not an integer"),
]


@pytest.mark.parametrize("what,bad,message", BAD_ROWS, ids=[c[0] for c in BAD_ROWS])
def test_3_a_bad_row_in_a_given_split_is_an_error_naming_file_and_row(tmp_path, what, bad, message):
    train = jsonl(tmp_path / "train.jsonl", rows(100))
    validation = jsonl(tmp_path / "validation.jsonl", bad)
    with pytest.raises(DataError, match=message):
        datamodule(tmp_path, {"train": train, "validation": validation})
    assert not (tmp_path / "cache" / "tokenized").exists() or not any(
        (tmp_path / "cache" / "tokenized").iterdir()
    )


def test_3_a_wholly_unlabelled_split_is_carved_from_train_and_says_so(tmp_path):
    """GLUE marks a hidden test set with label -1 on every row (the Hub's SST-2 test): replaced, visibly."""
    train = jsonl(tmp_path / "train.jsonl", rows(200))
    test = jsonl(tmp_path / "test.jsonl", rows(50, 900, label=-1))
    dm = datamodule(tmp_path, {"train": train, "test": test})
    assert "unlabelled" in dm.info["splits"]["test"] and dm.info["sizes"]["test"] == 20


def test_float_labels_and_mixed_formats_simply_work(tmp_path):
    train = jsonl(tmp_path / "train.jsonl", [{**r, "label": float(r["label"])} for r in rows(100)])
    validation = tmp_path / "validation.csv"
    validation.write_text(
        "sentence,label\n" + "".join(f"{r['sentence']},{r['label']}\n" for r in rows(40, 500))
    )
    dm = datamodule(tmp_path, {"train": train, "validation": validation})
    assert dm.info["sizes"]["validation"] == 40 and dm.info["label_counts"]["train"] == {"0": 45, "1": 45}
    assert sorted(set(dm.data["train"]["labels"])) == [0, 1]


# ---------------------------------------- bad files: one message naming the file


def truncated_gzip(path: Path) -> None:
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in rows(400)).encode())
    path.write_bytes(data[: len(data) // 2])


BAD_FILES = [  # (what, file name, how to write it, the message)
    ("empty file", "train.jsonl", lambda p: p.write_bytes(b""), r"train.jsonl is empty \(0 bytes\)"),
    (
        "malformed JSON line",
        "train.jsonl",
        lambda p: p.write_text(
            json.dumps(rows(1)[0]) + "\n" + json.dumps(rows(1)[0]) + '\n{"sentence": "x", \n'
        ),
        r"train.jsonl: line 3 is not valid JSON",
    ),
    (
        "non-UTF-8 bytes",
        "train.jsonl",
        lambda p: p.write_bytes(b'{"sentence": "caf\xe9", "label": 1}\n'),
        r"train.jsonl: is not UTF-8 text \(byte 17, line 1\)",
    ),
    ("truncated gzip", "train.jsonl.gz", truncated_gzip, r"train.jsonl.gz: is not a complete gzip file"),
    (
        "csv with a header only",
        "train.csv",
        lambda p: p.write_text("sentence,label\n"),
        r"train.csv has no rows",
    ),
    ("unknown format", "train.txt", lambda p: p.write_text("x"), r"cannot read .*train.txt: use one of"),
]


@pytest.mark.parametrize("what,name,make,message", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_a_bad_file_is_one_message_naming_it(tmp_path, what, name, make, message):
    make(tmp_path / name)
    with pytest.raises(PeftBenchError, match=message):
        datamodule(tmp_path, [tmp_path / name])


def test_a_data_error_on_the_command_line_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"sentence": "fine", "label": 1}\n{"sentence": oops}\n')
    out = run_cli(
        ["model=tiny", "logger=none", f"dataset.data_files={bad}", f"hydra.run.dir={tmp_path / 'run'}"]
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert f"peft_bench: error: data file {bad}: line 2 is not valid JSON" in out.stderr
    assert results(tmp_path / "run")["status"] == "failed"  # and the run folder says why


def test_a_diverged_single_run_is_one_line_and_its_status(tmp_path):
    out = run_cli([*FAST, "method.lr=1e12", "trainer.gradient_clip_val=null", f"hydra.run.dir={tmp_path}"])
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "peft_bench: diverged: training loss became nan" in out.stderr
    assert results(tmp_path)["status"] == "diverged"


# ---------------------------------------- values the pre-check catches before any work


BAD_VALUES = [
    (["dataset.eval_batch_size=0"], "dataset.eval_batch_size=0: must be >= 1"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0: must be >= 1"),
    (["dataset.max_train_examples=0"], "dataset.max_train_examples=0: must be >= 1"),
    (["seed=-1"], "seed=-1: must be in [0, 4294967295]"),
    (["dataset.max_length=1024"], "dataset.max_length=1024: model tiny takes at most 512 positions"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0: trains nothing"),
    (["trainer.limit_train_batches=0"], "trainer.limit_train_batches=0: trains nothing"),
    (["trainer.limit_train_batches=0.0"], "trainer.limit_train_batches=0.0: trains nothing"),
    (["trainer.limit_val_batches=0"], "trainer.limit_val_batches=0: validates nothing"),
    (["trainer.max_steps=0"], "trainer.max_steps=0: give a number of optimizer steps"),
    (["dataset.name=../../escape"], "dataset.name='../../escape': use letters, digits"),
    (["checkpoint_every_n_steps=0"], "checkpoint_every_n_steps=0: must be >= 1"),
    (["dataset.data_files={valid:'/x.jsonl'}"], "dataset.data_files: unknown split(s) ['valid']"),
    # issue 20: values that make no sense are refused before any work, naming the valid range
    (["method.lr=inf"], "method.lr=inf: the learning rate must be a finite number > 0"),
    (["method.weight_decay=-1"], "method.weight_decay=-1.0: must be a finite number >= 0"),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1.0: give the largest gradient norm"),
    (["rank=4096"], "method.r=4096: above the width of a layer it adapts"),
    (["method=pissa", "rank=100"], "give rank <= 64, or use method=full"),
    (["trainer.accelerator=gpu"], "trainer.accelerator=gpu: no CUDA GPU is visible to this process"),
    (["trainer.accelerator=tpu"], "trainer.accelerator='tpu': valid values are ['auto', 'cpu'"),
    (["trainer.precision=bogus"], "trainer.precision='bogus': valid values are ["),
    (["trainer.precision=16-mixed"], "trainer.precision=16-mixed: float16 mixed precision needs a GPU"),
]


@pytest.mark.parametrize("overrides,message", BAD_VALUES, ids=[" ".join(c[0]) for c in BAD_VALUES])
def test_bad_values_are_config_errors_before_any_work(overrides, message):
    from peft_bench.checks import check_config

    with pytest.raises(ConfigError) as e:
        check_config(compose([*TINY, *overrides]))
    assert message in str(e.value)


def test_a_bad_seed_fails_the_sweep_pre_check_and_a_repeated_value_is_refused(tmp_path):
    out = run_cli(["-m", *FAST, "seed=1,-1", "rank=4,4", f"hydra.sweep.dir={tmp_path}"])
    assert out.returncode == 2 and "no job was started" in out.stderr
    assert "seed=-1: must be in" in out.stderr
    assert "are the same run" in out.stderr and "counted twice" in out.stderr  # 11: rank=4,4
    assert not list(tmp_path.rglob("results.json"))


def test_a_completed_run_is_not_reported_again_for_changed_data_and_a_redo_is_skipped_after(tmp_path):
    # finished_at has whole seconds, so a run and its redo can share it: the marker of a
    # rewrite is results.json's modification time in nanoseconds
    train = jsonl(tmp_path / "train.jsonl", rows(200))
    args = ["dataset=sst2", files_override([train])]
    written = lambda: (tmp_path / "run" / "results.json").stat().st_mtime_ns  # noqa: E731
    tiny_run(tmp_path / "run", *args)
    first = written()
    tiny_run(tmp_path / "run", *args)
    assert written() == first  # skipped
    tiny_run(tmp_path / "run", *args, "skip_completed=false")
    redo = written()
    assert redo != first
    tiny_run(tmp_path / "run", *args)
    assert written() == redo  # skip/redo flags: not config
    jsonl(train, rows(200, 7))  # the same path, other sentences
    with pytest.raises(PeftBenchError, match="completed run of another configuration .*content"):
        tiny_run(tmp_path / "run", *args)
    assert written() == redo  # untouched


def test_a_validation_only_run_is_not_skipped_when_test_figures_are_asked_for(tmp_path):
    first = tiny_run(tmp_path / "run", "test=false")
    assert "test_acc" not in first
    again = tiny_run(tmp_path / "run")  # test=true: the completed record has no test figures
    assert 0.0 <= again["test_acc"] <= 1.0  # trained again (finished_at has whole seconds: not a marker)
    assert tiny_run(tmp_path / "run")["finished_at"] == again["finished_at"]  # now skipped


def test_a_validation_interval_longer_than_an_epoch_is_one_sentence(tmp_path):
    with pytest.raises(PeftBenchError, match=r"val_check_interval=50 is more than the 4 training batches"):
        tiny_run(tmp_path / "run", "trainer.val_check_interval=50")


def test_bz2_and_xz_files_are_read_and_an_empty_file_list_is_a_config_error(tmp_path):
    import bz2
    import lzma

    from peft_bench.checks import check_config

    text = "".join(json.dumps(r) + "\n" for r in rows(100)).encode()
    (tmp_path / "train.jsonl.bz2").write_bytes(bz2.compress(text))
    (tmp_path / "validation.jsonl.xz").write_bytes(
        lzma.compress("".join(json.dumps(r) + "\n" for r in rows(30)).encode())
    )
    dm = datamodule(
        tmp_path, {"train": tmp_path / "train.jsonl.bz2", "validation": tmp_path / "validation.jsonl.xz"}
    )
    assert dm.info["sizes"]["train"] == 90
    with pytest.raises(ConfigError, match="no file given for train"):
        check_config(compose([*TINY, "dataset.data_files=[]"]))


# ---------------------------------------- 4. a single-class training split is flagged


def test_4_single_class_training_split_is_warned_recorded_and_flagged(tmp_path):
    from peft_bench.report import write_report
    from peft_bench.results import digest_state

    train = jsonl(tmp_path / "train.jsonl", rows(200, label=1))
    validation = jsonl(tmp_path / "validation.jsonl", rows(40, 500) + rows(3))  # 3 sentences of train's
    out = tiny_run(
        tmp_path / "run", "dataset=sst2", files_override({"train": train, "validation": validation})
    )
    assert out["status"] == "completed"
    assert any(w.startswith("single-class train split: all 180 rows have label 1") for w in out["warnings"])
    assert results(tmp_path / "run")["warnings"] == out["warnings"]
    # 12: each of the 3 is in what is left of train or in the test carved from it: counted either way
    overlap = results(tmp_path / "run")["data"]["overlap"]
    assert overlap["validation"]["train"] + overlap["test"]["validation"] == 3
    assert any(" shares " in w and "may be inflated" in w for w in out["warnings"])
    assert digest_state(results(tmp_path / "run")) == "ok"  # 14: the real write path's digest holds
    report = (write_report([tmp_path / "run"], tmp_path / "report")["out"] / "report.md").read_text()
    assert "| lora ⚠ |" in report and "## Warnings" in report and "single-class train split" in report
    assert "examples with" in report.split("## Warnings")[1]


# ---------------------------------------- 7. corrupt files are set aside, not fatal


def test_7_a_truncated_results_json_is_set_aside_and_the_run_goes_on(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text('{"status": "completed", "val_f')
    out = tiny_run(run_dir)
    assert out["status"] == "completed"
    assert any("results.json was unreadable and set aside" in n for n in out["notes"])
    assert len(list(run_dir.glob("results.json.corrupt-*"))) == 1
    assert stat.S_IMODE((run_dir / "results.json").stat().st_mode) == FILE_MODE  # 0644 under umask 022


@pytest.mark.parametrize("keep", [1000, 0.5], ids=["first-1000-bytes", "first-half"])
def test_7_a_truncated_last_checkpoint_is_set_aside_and_the_run_starts_over(tmp_path, keep):
    run_dir = tmp_path / "run"
    tiny_run(run_dir)
    record = results(run_dir)
    (run_dir / "results.json").write_text(json.dumps({**record, "status": "interrupted"}))  # killed mid-save
    last = run_dir / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])  # half: Errno 22
    out = tiny_run(run_dir)
    assert out["status"] == "completed" and "resumed_from" not in out
    assert any("checkpoints/last.ckpt was unreadable" in n for n in out["notes"])
    assert len(list(run_dir.glob("checkpoints.corrupt-*"))) == 1
    assert out["val_acc"] == pytest.approx(record["val_acc"])  # started over: the same run again


def test_7_a_corrupt_tokenized_cache_entry_is_set_aside_and_rebuilt(tmp_path):
    train = jsonl(tmp_path / "train.jsonl", rows(200))
    first = datamodule(tmp_path, [train])
    entry = tmp_path / "cache" / "tokenized" / first.info["cache_key"]
    arrow = next(entry.rglob("data-*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])
    again = datamodule(tmp_path, [train])
    assert again.info["cache"] == "miss" and again.info["sizes"] == first.info["sizes"]
    assert len(list(entry.parent.glob(f"{entry.name}.corrupt-*"))) == 1


def test_7_a_checkpoint_save_that_dies_midway_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)

    def dies(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


# ---------------------------------------- 9. last.ckpt is always the latest state


def _worsening():
    """A LoRA module whose logged primary validation metric falls after the first validation (the real one
    of a tiny model barely moves): the best checkpoint stays at epoch 0 while training goes on."""
    from peft_bench.methods.lora import LoRAModule

    class Worsening(LoRAModule):
        def on_validation_epoch_end(self) -> None:
            self.val_metrics.reset()
            self.log(self.monitor[0], 1.0 - 0.1 * self.current_epoch)

    return Worsening


WorseningLoRA = _worsening()


def test_9_last_checkpoint_advances_even_when_validation_gets_worse(tmp_path):
    out = tiny_run(
        tmp_path / "run",
        "trainer.max_epochs=3",
        "checkpoint_every_n_steps=3",
        "method._target_=tests.test_hostile.WorseningLoRA",
    )
    assert out["evaluated_checkpoint"] == "checkpoints/best-epoch0-step4.ckpt"
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == out["optimizer_steps"] == 12 and last["epoch"] == 2


def test_8_a_checkpoint_taken_every_n_steps_resumes_exactly(tmp_path):
    """The on_train_batch_end checkpoint (checkpoint_every_n_steps), crashed 15 steps after it."""
    import lightning as L

    class Record(L.Callback):
        def __init__(self, crash_at=None):
            self.steps, self.crash_at = [], crash_at

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.steps.append((trainer.global_step, float(outputs["task_loss"])))
            if trainer.global_step == self.crash_at:
                raise RuntimeError("power cut")

    args = [
        "dataset.generator_size=1000",
        "trainer.limit_train_batches=null",
        "trainer.max_epochs=2",
        "checkpoint_every_n_steps=30",
        "method.lr=3e-3",
    ]
    reference, crashed, resumed = Record(), Record(crash_at=75), Record()
    ref = tiny_run(tmp_path / "reference", *args, callbacks=[reference])
    with pytest.raises(RuntimeError, match="power cut"):
        tiny_run(tmp_path / "run", *args, callbacks=[crashed])
    out = tiny_run(tmp_path / "run", *args, callbacks=[resumed])
    assert out["resumed_from"]["step"] == 60 and ref["optimizer_steps"] == out["optimizer_steps"] == 100
    assert resumed.steps == reference.steps[60:]  # the same batches, losses and dropout, step for step
    assert out["train_loss_per_epoch"] == pytest.approx(ref["train_loss_per_epoch"], abs=1e-6)
    assert out["val_f1"] == pytest.approx(ref["val_f1"], abs=1e-6)


# ---------------------------------------- 11. a redo is a clean slate


def test_11_skip_completed_false_redoes_the_run_from_a_clean_slate(tmp_path):
    run_dir = tmp_path / "run"
    tiny_run(run_dir, "logger=csv")
    before = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    out = tiny_run(run_dir, "logger=csv", "skip_completed=false")
    after = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    assert out["status"] == "completed" and "resumed_from" not in out
    assert after == before and not list(run_dir.rglob("*-v1.ckpt"))
    lines = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    assert sum(1 for line in lines if line.startswith("epoch") or line.startswith("lr")) == 1  # one header


# ---------------------------------------- 6, 10. every job shows up in the sweep


def test_6_10_a_job_that_cannot_start_fails_the_sweep_and_shows_in_its_table(tmp_path):
    """Job 1's folder is held by another process (its lock): that job refuses to run and writes nothing
    there, yet the sweep lists it as failed and exits 1."""
    lock = RunLock(tmp_path / "1").acquire()
    try:
        out = run_cli(["-m", *FAST, "rank=2,4", f"hydra.sweep.dir={tmp_path}"])
    finally:
        lock.release()
    assert out.returncode == 1
    assert results(tmp_path / "0")["status"] == "completed" and not (tmp_path / "1" / "results.json").exists()
    assert (
        "job 1 failed: RunInProgress" in out.stderr
        and "is in use by another peft_bench process" in out.stderr
    )
    assert "1 of 2 jobs did not complete" in out.stderr


# ---------------------------------------- 2, 5, 8, 10: SIGKILL mid-epoch, then resume


@pytest.mark.slow  # a reference run, a run killed with SIGKILL, two refused commands and the resume: ~80 s
def test_2_5_8_10_kill9_mid_epoch_then_the_same_command_resumes_exactly(tmp_path):
    args = [
        *TINY,
        "dataset.generator_size=4000",
        "trainer.max_epochs=2",
        "trainer.val_check_interval=50",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=5",
        "method.lr=3e-3",
        "logger=csv",
    ]
    reference = run_cli([*args, f"hydra.run.dir={tmp_path / 'reference'}"])
    assert reference.returncode == 0, reference.stderr[-2000:]

    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "peft_bench", *args, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGSTOP)  # frozen mid-epoch, its lock held, while the other commands try
    assert last.exists(), "no checkpoint was written"

    # 10: the same command again while the first runs: refused at once, the folder untouched
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert (
        f"is in use by another peft_bench process (pid {proc.pid} on host {platform.node()}" in second.stderr
    )
    assert results(run_dir)["status"] == "running"

    os.kill(proc.pid, signal.SIGKILL)  # no handler runs: nothing is written after this
    proc.wait(timeout=60)
    killed = results(run_dir)
    assert killed["status"] == "running" and killed["pid"] == proc.pid  # 5: the killed job is still visible
    assert unfinished_reason(killed).startswith("stale: results.json says running but its process")
    step = torch.load(last, weights_only=False)["global_step"]
    assert 0 < step and step % 200 != 0, step  # 8: a mid-epoch checkpoint

    # 2: another configuration in the same folder is refused, naming what differs and the ways out
    other = subprocess.run(
        [*cmd, "method.lr=2e-3", "rank=4"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr[-2000:]
    assert "was trained with another configuration" in other.stderr and "resume=false" in other.stderr
    assert "method.lr: 0.003 -> 0.002" in other.stderr and "method.r: 8 -> 4" in other.stderr
    assert torch.load(last, weights_only=False)["global_step"] == step  # the checkpoint is kept

    again = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=600
    )  # the dead lock: no obstacle
    assert again.returncode == 0, again.stderr[-2000:]
    resumed, ref = results(run_dir), results(tmp_path / "reference")
    assert resumed["status"] == "completed" and resumed["resumed_from"]["step"] == step
    assert resumed["optimizer_steps"] == ref["optimizer_steps"] == 400
    # same seed, order a function of (seed, epoch), the loader's position and the RNG in the checkpoint:
    # the resumed run repeats the uninterrupted one
    for key in ("val_acc", "val_f1", "test_acc", "test_f1"):
        assert resumed[key] == pytest.approx(ref[key], abs=1e-6), key
    assert resumed["train_loss_per_epoch"] == pytest.approx(ref["train_loss_per_epoch"], abs=1e-5)
    for key in ("train_examples", "train_tokens", "train_flops"):
        assert resumed[key] == ref[key], key
    assert len(resumed["time_per_epoch_s"]) == 2

    def logged(folder: Path) -> list[int]:
        with (folder / "csv" / "metrics.csv").open() as f:
            return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]

    assert logged(run_dir) == logged(
        tmp_path / "reference"
    )  # each step logged once: before and after the kill


# ---------------------------------------- issue 20: nothing a run reads runs code


class _Payload:
    """A pickled object whose loading calls a function: what a hostile last.ckpt would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_20_1_a_checkpoint_that_would_run_code_is_refused_unread(tmp_path):
    from peft_bench.errors import UnsafeCheckpoint

    marker, run_dir = tmp_path / "payload-ran", tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    torch.save({"global_step": 3, "state_dict": {}, "x": _Payload(marker)}, last)
    with pytest.raises(UnsafeCheckpoint, match=r"last.ckpt was refused unread: it holds the Python object"):
        tiny_run(run_dir)
    assert not marker.exists() and last.is_file()  # never ran, and left where it was
    # Lightning's own loads (resume, the best checkpoint's evaluation) go through the same reader
    with pytest.raises(UnsafeCheckpoint):
        AtomicCheckpointIO().load_checkpoint(last, weights_only=False)
    assert not marker.exists()


# ---------------------------------------- 12. splits that share examples are counted and warned


def test_12_given_splits_sharing_sentences_are_counted_and_warned_even_on_a_cache_hit(tmp_path):
    train = jsonl(tmp_path / "train.jsonl", rows(200))
    shared = [  # the same sentences as train's, but for case, spacing and Unicode compatibility forms
        {"sentence": "  THE FILM   was good number 0 ", "label": 0},
        {"sentence": "the film was ｂａｄ number 1", "label": 1},  # fullwidth: NFKC makes it ASCII
        *rows(14, 2),
    ]
    validation = jsonl(tmp_path / "validation.jsonl", shared + rows(24, 500))
    test = jsonl(tmp_path / "test.jsonl", rows(20, 500)[:5] + rows(15, 900))  # 5 of validation's
    files = {"train": train, "validation": validation, "test": test}
    dm = datamodule(tmp_path, files)
    assert dm.info["overlap"] == {"validation": {"train": 16}, "test": {"train": 0, "validation": 5}}
    assert (
        "validation shares 16 of 40 examples with train (normalised text: NFKC, casefold, whitespace "
        "collapsed; train and validation both given: they should be disjoint): figures on validation "
        "may be inflated"
    ) in dm.info["warnings"]
    assert any(w.startswith("test shares 5 of 20 examples with validation") for w in dm.info["warnings"])
    hit = datamodule(tmp_path, files)
    assert hit.info["cache"] == "hit" and hit.info["warnings"] == dm.info["warnings"]


def test_12_carved_splits_count_the_duplicates_train_holds_and_say_so(tmp_path):
    """Real train files repeat sentences (IMDB 96 times in 25,000 reviews): a seeded carve then puts
    copies on both sides. Disjoint by rows, not by text: counted, and the warning says it was carved."""
    train = jsonl(tmp_path / "train.jsonl", rows(100) * 3)  # every sentence three times
    dm = datamodule(tmp_path, [train])
    overlap = dm.info["overlap"]
    assert overlap["validation"]["train"] == dm.info["sizes"]["validation"] == 30  # all of them
    assert overlap["test"]["train"] == 30
    warning = next(w for w in dm.info["warnings"] if w.startswith("validation shares 30 of 30"))
    assert "validation carved from the given train data here" in warning


def test_12_distinct_splits_warn_nothing_and_counting_is_cheap_on_real_data():
    """SST-2's given validation shares nothing with its train file; counting IMDB's 25,000 reviews
    (train against a held-out fifth) takes a fraction of a second."""
    from peft_bench.data.base import split_overlap

    data = ROOT.parent / "shared" / "data"
    if not (data / "imdb" / "train.jsonl.gz").exists():
        pytest.skip(f"no real data at {data} (see its README)")

    def read(path: Path, field: str) -> list[str]:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt") as f:
            return [json.loads(line)[field] for line in f if line.strip()]

    sst2 = {s: {"sentence": read(data / "sst2" / f"{s}.jsonl", "sentence")} for s in ("train", "validation")}
    assert split_overlap(sst2, ["sentence"]) == {"validation": {"train": 0}}
    reviews = read(data / "imdb" / "train.jsonl.gz", "text")
    imdb = {"train": {"text": reviews[::5] + reviews[2::5]}, "validation": {"text": reviews[1::5]}}
    started = time.perf_counter()
    split_overlap(imdb, ["text"])
    assert time.perf_counter() - started < 1.0


# ---------------------------------------- 13. a class that train lacks is warned about


def test_13_a_class_in_validation_but_not_in_train_is_warned(tmp_path):
    train = jsonl(tmp_path / "train.jsonl", rows(100))  # labels 0 and 1
    validation = jsonl(tmp_path / "validation.jsonl", rows(30, 500) + rows(5, 700, label=2))
    dm = datamodule(tmp_path, {"train": train, "validation": validation}, "dataset.num_labels=3")
    assert (
        "class 2 in validation (5 of 35 rows) but not in train: the model never learnt it, so those "
        "rows count against validation's scores"
    ) in dm.info["warnings"]
    assert not any("in test" in w for w in dm.info["warnings"])  # carved from train: no class 2


# ---------------------------------------- 14. a record changed after its run is not trusted


def test_14_an_edited_results_json_is_marked_and_left_out_unless_asked(tmp_path, capsys):
    from rich.console import Console

    from peft_bench.report import main, write_report
    from peft_bench.results import digest_state, read_results, write_results
    from peft_bench.sweep_summary import runs_table
    from tests.test_report import result

    root = tmp_path / "sweep"
    for seed in (1, 2, 3):
        write_results(root / f"lora-{seed}", result("lora", seed, 0.80 + seed / 100))
    older = result("lora", 4, 0.84)  # written by a peft_bench without the digest
    (root / "lora-4" / "results.json").parent.mkdir()
    (root / "lora-4" / "results.json").write_text(json.dumps(older))
    edited = read_results(root / "lora-2")
    assert digest_state(edited) == "ok" and len(edited["digest"]) == 64
    edited["test_acc"] = 0.99  # by hand
    (root / "lora-2" / "results.json").write_text(json.dumps(edited, indent=2))
    assert digest_state(read_results(root / "lora-2")) == "edited"

    out = write_report([root], tmp_path / "report")
    report = (out["out"] / "report.md").read_text()
    assert out["runs"] == 3 and [(d.name, why) for d, why in out["left_out"]] == [
        (
            "lora-2",
            "edited after the run: its figures do not match the digest written with them "
            "(--include-edited counts it)",
        )
    ]
    assert "0.99" not in report.split("## Runs left out")[0]
    assert f"- `{root / 'lora-4'}`: no digest (written by an older peft_bench)" in report

    main([str(root), "--out", str(tmp_path / "trusting"), "--include-edited"])
    assert "(4 runs, 0 left out" in capsys.readouterr().out
    trusting = (tmp_path / "trusting" / "report.md").read_text()
    assert "| lora ⚠ |" in trusting and "edited after the run" in trusting.split("## Warnings")[1]

    console = Console(width=400, record=True)
    console.print(runs_table(root))
    assert "completed ⚠ edited after the run: its figures do not match" in console.export_text()

    write_results(root / "lora-2", read_results(root / "lora-2"))  # written back as read: still edited
    assert digest_state(read_results(root / "lora-2")) == "edited"


# ---------------------------------------- issue 20: a run reports what its command asked


def test_20_3_a_completed_run_is_not_skipped_for_a_command_that_measures_another_way(tmp_path):
    run_dir = tmp_path / "run"
    tiny_run(run_dir, "trainer.limit_test_batches=1")
    for changed, key in (
        ("trainer.limit_test_batches=2", "trainer.limit_test_batches: 1 -> 2"),
        ("trainer.precision=bf16-mixed", "trainer.precision: None -> 'bf16-mixed'"),
        ("dataset.eval_batch_size=16", "dataset.eval_batch_size"),
    ):
        with pytest.raises(PeftBenchError, match="holds a completed run of another configuration") as e:
            from peft_bench.train import run

            run(
                compose(
                    [
                        *TINY,
                        "trainer=fast",
                        "trainer.limit_train_batches=4",
                        "trainer.limit_val_batches=2",
                        changed,
                    ],
                    run_dir,
                )
            )
        assert key in str(e.value), str(e.value)
    assert results(run_dir)["config"]["trainer"]["limit_test_batches"] == 1  # nothing overwritten


def test_20_3_one_table_decides_the_fingerprint_the_setting_the_duplicate_check_and_the_folder():
    from omegaconf import OmegaConf

    from peft_bench.callbacks.checkpointing import fingerprint
    from peft_bench.resolvers import key_role, overrides_key, setting_identity
    from peft_bench.results import flatten
    from peft_bench.sweep import check_jobs

    config = OmegaConf.to_container(compose(TINY), resolve=True)
    flat = flatten(config)
    shaping = (
        "trainer.limit_test_batches",
        "trainer.precision",
        "dataset.eval_batch_size",
        "trainer.devices",
        "trainer.accelerator",
        "trainer.strategy",
        "method.r",
        "checkpoint",
    )
    for key in shaping:
        assert key_role(key) == "defines" and key in setting_identity(flat), key
        assert key in fingerprint(config, None)["config"], key
    # another weights path refuses skip and resume, but the same model installed elsewhere is one setting
    assert "model.pretrained" in fingerprint(config, None)["config"]
    assert "model.pretrained" not in setting_identity(flat)
    for key in ("run_dir", "run_name", "cache_dir", "dataset.data_files", "rank", "seed", "resume"):
        assert key not in setting_identity(flat), key
    assert "seed" in fingerprint(config, None)["config"]
    assert overrides_key(["rank=4", "resume=false"]) == overrides_key(["rank=4"])  # control keys only
    assert overrides_key(["rank=4", "logger=none"]) != overrides_key(["rank=4"])

    def composer(job):
        return compose(job)

    with pytest.raises(ConfigError, match="are the same run"):  # saved more often: the same figures
        check_jobs([*TINY, "checkpoint_every_n_steps=5,10"], composer)
    assert len(check_jobs([*TINY, "trainer.limit_test_batches=1,2"], composer)) == 2  # measured apart


def test_20_4_the_rank_recorded_and_named_is_the_rank_trained(tmp_path):
    out = tiny_run(tmp_path / "run", "rank=4", "method.r=16")
    assert out["rank"] == 16 and out["run_name"].endswith("-r16-s42")
    assert out["config"]["method"]["r"] == 16
    assert compose([*TINY, "method=ia3"]).run_name == "ia3-demo-tiny-s42"  # no rank: none in the name


def test_20_a_report_out_that_is_a_file_is_one_sentence(tmp_path, capsys):
    from peft_bench.report import main

    (tmp_path / "runs").mkdir()
    (tmp_path / "out.md").write_text("mine")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "runs"), "--out", str(tmp_path / "out.md")])
    assert e.value.code == 2 and "is a file: give a folder" in capsys.readouterr().err
    assert (tmp_path / "out.md").read_text() == "mine"


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.decode().strip()}")


@pytest.mark.slow  # three CLI runs on a 200 kB tmpfs (root only): ~40 s
@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs: needs root (CI runs as root)")
def test_20_a_full_disk_and_a_read_only_folder_end_in_one_sentence(tmp_path):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "200k")  # room for results.json and one checkpoint, not two
    try:
        args = [*FAST, f"hydra.run.dir={disk / 'run'}"]
        out = run_cli(args)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert (
            f"peft_bench: error: {disk / 'run'}: the disk is full; the run stopped. Kept: results.json "
            "(status failed)" in out.stderr
        )
        assert results(disk / "run")["status"] == "failed"
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        before = (disk / "run" / "results.json").read_bytes()
        for folder in ("run", "new"):
            out = run_cli([*FAST, f"hydra.run.dir={disk / folder}"])
            assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
            assert f"{disk / folder}: the filesystem is read-only" in out.stderr
            assert "nothing was started" in out.stderr
        assert (disk / "run" / "results.json").read_bytes() == before
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def test_20_3_a_completed_run_without_the_figures_asked_for_is_run_again(tmp_path):
    run_dir = tmp_path / "run"
    first = tiny_run(run_dir)
    assert "before_training" not in first
    again = tiny_run(run_dir, "eval_before_training=true")
    assert "val_acc" in again["before_training"] and "before_training" in results(run_dir)
    assert tiny_run(run_dir)["before_training"] == again["before_training"]  # then skipped: more than asked


def test_20_3_of_one_run_evaluated_twice_the_report_keeps_the_one_with_test_figures(tmp_path):
    from peft_bench.report import load_runs

    tiny_run(tmp_path / "runs" / "a", "test=false")
    tiny_run(tmp_path / "runs" / "b")
    good, left_out = load_runs([tmp_path / "runs"])
    assert [Path(r["_dir"]).name for r in good] == ["b"] and "test_acc" in good[0]
    assert [(d.name, why.split(" (")[0]) for d, why in left_out] == [("a", f"duplicate of {tmp_path}/runs/b")]


OLD_NOT_TRAINING = (  # keys the fingerprint of a peft_bench before issue 20 left out
    "checkpoint",
    "dataset.eval_batch_size",
    "trainer.accelerator",
    "trainer.compile",
    "trainer.devices",
    "trainer.limit_test_batches",
    "trainer.precision",
    "trainer.strategy",  # not in the schema then
)


def test_20_3_runs_and_checkpoints_of_an_older_peft_bench_are_still_skipped_and_resumed(tmp_path):
    run_dir = tmp_path / "run"
    tiny_run(run_dir)
    record = results(run_dir)
    del record["config"]["trainer"]["strategy"]  # as an older peft_bench wrote it
    (run_dir / "results.json").write_text(json.dumps(record))
    assert tiny_run(run_dir)["finished_at"] == record["finished_at"]  # skipped, not refused
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    fp = ckpt["peft_bench_fingerprint"]["config"]
    ckpt["peft_bench_fingerprint"]["config"] = {
        k: v for k, v in fp.items() if k not in OLD_NOT_TRAINING and not k.startswith("resolved.")
    }
    torch.save(ckpt, last)
    (run_dir / "results.json").write_text(json.dumps({**record, "status": "interrupted"}))
    out = tiny_run(run_dir)
    assert out["status"] == "completed" and out["resumed_from"]["checkpoint"] == "checkpoints/last.ckpt"


def test_20_3_the_same_model_installed_elsewhere_is_one_setting_and_a_new_check_keeps_the_cache(tmp_path):
    from peft_bench.report import setting_config

    first = tiny_run(tmp_path / "a")
    moved = json.loads(json.dumps(first))
    moved["config"]["model"]["tokenizer"] = "/another/venv/site-packages/tiny"
    moved["config"]["model"]["pretrained"] = "/another/venv/site-packages/tiny"
    assert setting_config(moved) == setting_config(first)
    moved["precision"] = "bf16-mixed"  # what trainer.precision=null became elsewhere: another setting
    assert setting_config(moved) != setting_config(first)
    # a cache entry written before the overlap count (same tokens) is rebuilt under the same key
    entry = next((tmp_path / "cache" / "tokenized").glob("*")) if (tmp_path / "cache").exists() else None
    files = {
        "train": jsonl(tmp_path / "t.jsonl", rows(60)),
        "validation": jsonl(tmp_path / "v.jsonl", rows(20, 500)),
    }
    dm = datamodule(tmp_path, files)
    entry = tmp_path / "cache" / "tokenized" / dm.info["cache_key"]
    info = json.loads((entry / "info.json").read_text())
    del info["overlap"]
    (entry / "info.json").write_text(json.dumps(info))
    again = datamodule(tmp_path, files)
    assert again.info["cache_key"] == dm.info["cache_key"] and again.info["cache"] == "miss"
    assert "overlap" in again.info and any("rebuilt" in n for n in again.info["notes"])


def test_20_3_a_completed_run_asked_for_a_merged_export_is_run_again(tmp_path):
    run_dir = tmp_path / "run"
    tiny_run(run_dir)
    out = tiny_run(run_dir, "method.export_merged=true")
    assert out["merged_dir"] == "merged" and (run_dir / "merged").is_dir()


def test_20_a_local_sweep_of_multi_device_jobs_is_refused_before_any_job(tmp_path):
    out = run_cli(
        [
            "-m",
            *FAST,
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "seed=1,2",
            f"hydra.sweep.dir={tmp_path}",
        ]
    )
    assert out.returncode == 2 and "no job was started" in out.stderr, out.stderr[-2000:]
    assert "each would run the whole sweep" in out.stderr and "tasks_per_node" in out.stderr
    assert not list(tmp_path.rglob("results.json"))


def test_20_the_sweep_table_shows_an_error_with_brackets_as_text(tmp_path):
    from rich.console import Console

    from peft_bench.sweep_summary import runs_table

    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "results.json").write_text(
        json.dumps({"status": "failed", "error": "RuntimeError: [/__w/pytorch/gloo/pair.cc:553] closed"})
    )
    console = Console(width=300, record=True, markup=False)
    console.print(runs_table(tmp_path))
    assert "[/__w/pytorch/gloo/pair.cc:553]" in console.export_text()
