"""What a user sees: `--help` introduces peft_bench and its real options; a job's output is its own
lines (no library chatter); an unreachable Hub is detected once instead of retried by every load."""

from __future__ import annotations

import os

from tests.helpers import run_cli


def test_help_introduces_peft_bench_and_lists_only_the_real_options():
    out = run_cli(["--help"])
    assert out.returncode == 0
    text = out.stdout
    assert text.startswith("peft_bench: sweep and compare parameter-efficient fine-tuning methods.")
    assert "powered by Hydra" not in text and "_schema" not in text
    for option in (
        "lora ",
        "sparse_lora ",
        "qlora ",
        "hira ",
        "full ",
        "sst2 ",
        "imdb ",
        "wikitext2 ",
        "minilm ",
        "slurm_gpu ",
        "submitit_local ",
    ):
        assert f"\n  {option}" in text, option


def test_a_jobs_output_is_its_own_lines(tmp_path):
    # the pretrained MiniLM gets a new classification head: transformers' LOAD REPORT territory
    out = run_cli(
        [
            "model=minilm",
            "dataset=demo",
            "logger=none",
            "trainer=fast",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            f"hydra.run.dir={tmp_path}",
        ],
        env={"PATH": os.environ["PATH"] + ":/usr/bin"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    foreign = [line for line in lines if "[peft_bench]" not in line and not line.startswith("peft_bench:")]
    assert not foreign, foreign
    assert any("-> " in line and "results.json" in line for line in lines)


def test_an_unreachable_hub_is_detected_once_and_the_run_goes_offline(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there: refused at once
    import subprocess
    import sys

    from tests.helpers import ROOT

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "peft_bench",
            "model=tiny",
            "dataset=sst2",
            "logger=none",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    assert "the Hugging Face Hub (127.0.0.1) cannot be reached: running offline" in out.stderr
    assert "thrown while requesting" not in out.stderr  # no retries of the Hub
    assert "peft_bench: error: dataset sst2: cannot load 'stanfordnlp/sst2'" in out.stderr
