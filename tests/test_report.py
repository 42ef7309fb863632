"""The sweep report: fixed sets of results.json give exactly the expected tables and statistics (the
expected figures are worked out by hand below, not by the code under test); plots are written;
broken runs are listed, never dropped."""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from peft_bench.report import write_report
from tests.helpers import ROOT

SST2_COUNTS = {"validation": {"0": 428, "1": 444}, "test": {"0": 300, "1": 322}}


def result(method: str, seed: int, test_acc: float, rank: int | None = 8, **extra) -> dict:
    """A complete results.json of a classification run, as train.run writes it (the fields the report
    reads)."""
    method_cfg = {"name": method, "lr": 1e-3, **({"r": rank} if rank is not None else {})}
    if method == "sparse_lora":
        method_cfg["pruning"] = {"target": 0.5, "schedule": "gradual"}
    trainable = {"full": 22_713_986, "hira": 332_546}.get(method, 9_216 * (rank or 8) + 770)
    return {
        "status": "completed",
        "method": method,
        "dataset": "sst2",
        "model": "minilm",
        "rank": rank or 8,
        "seed": seed,
        "config": {
            "method": method_cfg,
            "dataset": {"name": "sst2", "max_length": 128},
            "model": {"name": "minilm"},
            "seed": seed,
            "rank": rank or 8,
            "logger": {"_target_": "lightning.pytorch.loggers.CSVLogger"},
        },
        "data": {"label_counts": SST2_COUNTS},
        "trainable_params": trainable,
        "total_params": 22_788_484,
        "val_f1": test_acc + 0.01,
        "val_acc": test_acc + 0.005,
        "test_f1": test_acc + 0.002,
        "test_acc": test_acc,
        "train_time_s": 100.0 + seed,
        "mean_time_per_epoch_s": 50.0 + seed / 2,
        "peak_memory_bytes": (1000 + seed) * 2**20,
        "peak_memory_kind": "process_peak_rss",
        "inference_latency_ms_per_example": 3.5,
        "time_per_epoch_s": [50.0, 50.0],
        **extra,
    }


def write(root: Path, runs: dict[str, dict | str]) -> Path:
    for name, r in runs.items():
        (root / name).mkdir(parents=True)
        (root / name / "results.json").write_text(r if isinstance(r, str) else json.dumps(r))
    return root


@pytest.fixture
def sweep(tmp_path) -> Path:
    # three seeds of LoRA, Sparse LoRA and HiRA; one of full fine-tuning; then every way a run can fail
    runs = {}
    for seed, lora, sparse, hira in ((1, 0.80, 0.78, 0.75), (2, 0.82, 0.79, 0.769), (3, 0.84, 0.83, 0.791)):
        runs[f"lora-{seed}"] = result("lora", seed, lora, **{"sparsity_below_1e-3": 0.03})
        runs[f"sparse-{seed}"] = result(
            "sparse_lora", seed, sparse, **{"sparsity_below_1e-3": 0.5, "sparsity_exact_zero": 0.5}
        )
        runs[f"hira-{seed}"] = result("hira", seed, hira)
    runs["full-1"] = result("full", 1, 0.86, rank=None)
    runs["failed"] = {"status": "failed", "error": "RuntimeError: boom", "method": "lora"}
    runs["running"] = {
        "status": "running",
        "method": "lora",
        "host": platform.node(),
        "pid": os.getpid(),
        "started_at": "T0",
    }  # this very process: alive
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    runs["killed"] = {
        "status": "running",
        "method": "lora",
        "host": platform.node(),
        "pid": int(gone.stdout),
        "started_at": "T1",
    }  # a process that has exited: a job killed with -9 looks like this
    runs["elsewhere"] = {
        "status": "running",
        "method": "lora",
        "host": "node-7",
        "pid": 12,
        "started_at": "T2",
    }
    runs["rerun"] = result("lora", 1, 0.99)  # the same setting and seed as lora-1: counted once
    runs["corrupt"] = '{"status": "completed", "method": "lo'
    partial = result("lora", 4, 0.9)
    del partial["train_time_s"]
    runs["partial"] = partial
    return write(tmp_path / "sweep", runs)


def test_tables_and_seed_statistics_are_exactly_the_hand_computed_ones(sweep, tmp_path):
    out = write_report([sweep], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert out["runs"] == 10
    # the seeds' table, one row per setting: mean ± sample std over seeds 1, 2, 3
    # lora test acc 0.80, 0.82, 0.84 -> mean 0.82, std 0.02; val F1 = acc + 0.01; time 101, 102, 103 s
    assert (
        "| lora | 8 | - | 3 | 74,498 / 22,788,484 | 0.327% | 0.8300 ± 0.0200 | 0.8250 ± 0.0200 | "
        "0.8220 ± 0.0200 | 0.8200 ± 0.0200 | 0.030 ± 0.000 | 102.0 ± 1.0 |"
    ) in md
    assert (
        "| full | - | - | 1 | 22,713,986 / 22,788,484 | 99.673% | 0.8700 | 0.8650 | 0.8620 | 0.8600 | - "
        "| 101.0 |" in md
    )
    # seed statistics of the primary test metric: F1 for these records, which name no dataset.metric (an
    # older record's checkpoint was picked by val F1); test F1 = acc + 0.002: 0.802, 0.822, 0.842
    # 95% percentile bootstrap interval: a resample of three seeds is all the lowest (or all the highest)
    # with chance 1/27 = 3.7% > 2.5%, so at 3 seeds the interval is the seeds' range
    assert "| lora | rank=8 | 3 | 1, 2, 3 | 0.8220 ± 0.0200 | [0.8020, 0.8420] | - |" in md
    # sparse - lora per seed: -0.02, -0.03, -0.01: mean -0.02, s 0.01, t = -0.02 / (0.01 / sqrt 3) = -3.46;
    # two-sided p with 2 df: 1 - |t| / sqrt(t^2 + 2) = 0.0742: not significant
    assert "| sparse_lora | rank=8 | 3 | 1, 2, 3 | 0.8020 ± 0.0265 |" in md
    assert "-0.0200 (t=-3.46, p=0.0742, n=3) |" in md
    # hira - lora: -0.05, -0.051, -0.049: t = -0.05 / (0.001 / sqrt 3) = -86.60, p = 1 - 86.6025 / sqrt(7502)
    assert "-0.0500 (t=-86.60, p=0.000133, n=3) * |" in md
    # full ran one seed: no interval, no pairing
    assert "| full | - | 1 | 1 | - | - | - |" in md
    # method comparison: each method's best setting by val F1, its test F1 and accuracy, with its costs
    assert (
        "| lora | rank=8 | 3 | 0.8220 ± 0.0200 | 0.8200 ± 0.0200 | 74,498 | 102.0 ± 1.0 | 51.0 ± 0.5 | "
        "1002 ± 1 | 3.500 ± 0.000 | - | 0.030 ± 0.000 | - |"
    ) in md
    assert "Chance (majority class) on the test split: accuracy 0.5177." in md  # 322 / 622


def test_runs_that_did_not_complete_are_listed_with_their_reason(sweep, tmp_path):
    out = write_report([sweep], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    reasons = {Path(d).name: why for d, why in out["left_out"]}
    assert reasons.pop("running").startswith(f"running (pid {os.getpid()} on host {platform.node()}")
    assert reasons.pop("killed").startswith("stale: results.json says running but its process")
    assert reasons.pop("elsewhere") == (
        "running or killed on another host (pid 12 on host node-7, started T2): this host cannot tell"
    )
    assert reasons.pop("rerun") == f"duplicate of {sweep / 'lora-1'} (same setting and seed): counted once"
    assert reasons == {
        "failed": "failed: RuntimeError: boom",
        "corrupt": "unreadable results.json (not valid JSON)",
        "partial": "partial results.json: no train_time_s",
    }
    for name, why in reasons.items():
        assert f"`{sweep / name}`: {why}" in md
    assert "10 completed runs in the tables, 7 left out" in md


def test_runs_csv_has_one_row_per_run_with_every_scalar_field(sweep, tmp_path):
    write_report([sweep], tmp_path / "report")
    with (tmp_path / "report" / "runs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10
    row = next(r for r in rows if r["run_dir"].endswith("sparse-2"))
    assert row["method"] == "sparse_lora" and row["seed"] == "2" and float(row["test_acc"]) == 0.79
    assert row["config.method.pruning.target"] == "0.5" and row["sparsity_below_1e-3"] == "0.5"
    assert row["time_per_epoch_s"] == "[50.0, 50.0]"  # lists as JSON


def test_plots_are_written_as_png_and_svg(sweep, tmp_path):
    out = write_report([sweep], tmp_path / "report")
    assert set(out["images"]) == {
        "sst2_score_vs_params.png",
        "sst2_sparsity_vs_rank.png",
        "sst2_time_memory.png",
    }
    for name in out["images"]:
        png = (tmp_path / "report" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        assert "<svg" in (tmp_path / "report" / name.replace(".png", ".svg")).read_text()
        assert f"![{name}]({name})" in (tmp_path / "report" / "report.md").read_text()


def test_settings_are_told_apart_by_the_keys_that_differ(tmp_path):
    runs = {
        "a": result("sparse_lora", 1, 0.6, **{"sparsity_below_1e-3": 1.0}),
        "b": result("sparse_lora", 1, 0.83, **{"sparsity_below_1e-3": 0.5}),
        "c": result("lora", 1, 0.84),
    }
    runs["a"]["config"]["method"]["l1_lambda"] = 1e-3
    runs["b"]["config"]["method"]["l1_lambda"] = 1e-5
    out = write_report([write(tmp_path / "s", runs)], tmp_path / "report")
    labels = sorted((s.method, s.label) for s in out["settings"]["sst2"])
    assert labels == [
        ("lora", ""),
        ("sparse_lora", "method.l1_lambda=0.001"),
        ("sparse_lora", "method.l1_lambda=1e-05"),
    ]


def test_language_modelling_runs_report_perplexity(tmp_path):
    runs = {}
    for seed, ppl in ((1, 30.0), (2, 28.0)):
        r = result("lora", seed, 0.0)
        for k in ("val_f1", "val_acc", "test_f1", "test_acc"):
            del r[k]
        r.update(dataset="wikitext2", val_ppl=ppl + 1, test_ppl=ppl, data={})
        r["config"]["dataset"]["name"] = "wikitext2"
        runs[f"lm-{seed}"] = r
    write_report([write(tmp_path / "s", runs)], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| Method | Rank | Setting | Seeds | Trainable Params / Total | Ratio | Val PPL | Test PPL |" in md
    assert "| 30.00 ± 1.41 | 29.00 ± 1.41 |" in md  # val 31, 29; test 30, 28


def test_cli_names_the_folder_and_a_wandb_summary_run_is_written_offline(sweep, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "peft_bench",
            "report",
            str(sweep),
            "--out",
            str(tmp_path / "r"),
            "--wandb",
            "on",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"report: {tmp_path / 'r' / 'report.md'} (10 runs, 7 left out, 3 plots, W&B run " in out.stdout
    assert "left out" in out.stderr and "boom" in out.stderr
    runs = list((tmp_path / "r" / "wandb").glob("offline-run-*"))  # WANDB_MODE=offline (conftest)
    assert len(runs) == 1 and runs[0].name.endswith(out.stdout.split("W&B run ")[1].split(")")[0])
    log = next(runs[0].glob("run-*.wandb")).read_bytes()  # the offline transaction log
    for key in (b"sst2_score_vs_params", b"sst2_time_memory", b"table-file", b"report-"):
        assert key in log, key
    bad = subprocess.run(
        [sys.executable, "-m", "peft_bench.report", str(tmp_path / "nope")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "no such folder" in bad.stderr


def test_a_float_label_shows_3_significant_digits_or_as_many_as_tell_settings_apart():
    from peft_bench.report.runs import Setting, label_settings

    def setting(method: str, **config) -> Setting:
        return Setting("sst2", method, {"method.name": method, **config})

    def labels(*settings: Setting) -> list[str]:
        label_settings(list(settings))
        return [s.label for s in settings]

    # floats at 3 significant digits (Python's own spelling of the rounded value)
    assert labels(
        setting("lora", **{"method.lr": 0.008386932223546589}),
        setting("lora", **{"method.lr": 1e-5}),
        setting("lora", **{"method.lr": 1.0}),
        setting("lora", **{"method.lr": 123456.789}),
    ) == ["method.lr=0.00839", "method.lr=1e-05", "method.lr=1.0", "method.lr=123000.0"]
    # an int, a string and a (JSON) list as they are
    assert labels(
        setting("lora", **{"method.init": "gaussian", "trainer.max_steps": 1000}),
        setting("lora", **{"method.init": "pissa", "trainer.max_steps": 1000}),
        setting("lora", **{"method.init": "gaussian", "trainer.max_steps": 1234567}),
    ) == [
        "method.init=gaussian trainer.max_steps=1000",
        "method.init=pissa trainer.max_steps=1000",
        "method.init=gaussian trainer.max_steps=1234567",
    ]
    assert labels(
        setting("lora", **{"method.target_modules": '["query", "value"]'}),
        setting("lora", **{"method.target_modules": '["query"]'}),
    ) == ['method.target_modules=["query", "value"]', 'method.target_modules=["query"]']
    # 0.00123451 and 0.00123456 are 0.00123 at 3 digits, 0.001235 at 4: the key takes as many as tell
    # the two settings apart (the same for each of its values); a key that 3 digits tell apart keeps 3
    assert labels(
        setting("lora", **{"method.lr": 0.00123451, "method.dropout": 0.2}),
        setting("lora", **{"method.lr": 0.00123456, "method.dropout": 0.2}),
        setting("lora", **{"method.lr": 0.005, "method.dropout": 0.123456}),
    ) == [
        "method.dropout=0.2 method.lr=0.0012345",
        "method.dropout=0.2 method.lr=0.0012346",
        "method.dropout=0.123 method.lr=0.005",
    ]
    # floats that differ only in their last digit still get two labels (17 significant digits)
    a, b = 0.1 + 0.2, 0.3
    assert labels(setting("lora", **{"method.lr": a}), setting("lora", **{"method.lr": b})) == [
        f"method.lr={a!r}",
        f"method.lr={b!r}",
    ]


def curve_run(folder: Path, method: str, seed: int, lr: float) -> dict:
    """A run with a CSV log (logger=csv): train loss at steps 1-4, validation F1 at steps 2 and 4."""
    (folder / "csv").mkdir(parents=True)
    rows = ["step,train/loss_step,val/f1", "1,0.7,", "2,0.6,", "2,,0.7", "3,0.5,", "4,0.4,", "4,,0.8"]
    (folder / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
    r = result(method, seed, 0.8)
    r["config"]["method"]["lr"] = lr
    return {**r, "_dir": str(folder)}


@pytest.mark.parametrize("n", [3, 8])  # a legend in each panel; one beside the validation panel for many
def test_training_curves_give_each_setting_its_colour_and_the_validation_panel_a_legend(tmp_path, n):
    from peft_bench.report.plots import Figures, training_curves
    from peft_bench.report.runs import settings_of

    methods = ["lora", "lora", "sparse_lora", "lora", "lora", "hira", "lora", "lora"][:n]
    runs = [
        curve_run(tmp_path / str(i), m, 1, lr)
        for i, (m, lr) in enumerate(zip(methods, [1e-3 * (i + 1) for i in range(n)], strict=True))
    ]
    settings = settings_of(runs)["sst2"]
    assert len(settings) == n
    figures = Figures("sst2", tmp_path, list(dict.fromkeys(s.method for s in settings)))
    fig = training_curves(figures, settings)
    assert figures.written == ["sst2_training_curves.png"]
    train, val = fig.axes
    names = [f"{s.method} r=8 {s.label}" for s in settings]
    assert [line.get_label() for line in train.lines] == names
    assert len({line.get_color() for line in train.lines}) == n  # two settings of one method: two colours
    assert [line.get_color() for line in val.lines] == [line.get_color() for line in train.lines]
    assert [t.get_text() for t in val.get_legend().get_texts()] == names
    assert (train.get_legend() is None) == (n > 6)
    assert "sparse_lora r=8 method.lr=0.003" in names
