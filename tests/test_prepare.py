"""`python -m peft_bench.prepare`: fetch and tokenize, once, everything a sweep's jobs need, so that
they run without network; bad input stops it before anything is fetched."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.utils import get_class

from peft_bench.checks import check_config
from peft_bench.models import load_tokenizer
from tests.helpers import ROOT, compose


def prepare_cli(args, cache):
    import os

    return subprocess.run(
        [sys.executable, "-m", "peft_bench.prepare", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PEFT_BENCH_CACHE": str(cache)},
        timeout=300,
    )


@pytest.mark.slow  # prepare and a sweep as subprocesses: ~35 s
def test_prepare_tokenizes_each_distinct_dataset_once_and_jobs_then_hit_the_cache(tmp_path, monkeypatch):
    sweep = ["model=minilm", "dataset=demo", "dataset.generator_size=400", "rank=2,4", "seed=1,2", "-m"]
    out = prepare_cli(sweep, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "4 job(s) checked" in out.stdout
    # the four jobs share one model and one tokenized dataset (the cache key ignores rank and seed)
    assert out.stdout.count("model minilm:") == 1
    assert out.stdout.count("data demo x minilm tokenizer: miss") == 1
    assert len(list((tmp_path / "tokenized").iterdir())) == 1
    # a job of the sweep (offline: conftest sets HF_HUB_OFFLINE) finds its tokenized data there
    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path))
    run = check_config(
        compose(["model=minilm", "dataset=demo", "dataset.generator_size=400", "rank=4", "seed=2"])
    )
    data = get_class(run.dataset._target_)(
        dataset=run.dataset, tokenizer=load_tokenizer(run.model), cache_dir=run.cache_dir, seed=run.seed
    )
    data.prepare_data()
    assert data.info["cache"] == "hit"
    again = prepare_cli(sweep, tmp_path)
    assert "data demo x minilm tokenizer: hit" in again.stdout


def test_prepare_refuses_bad_input_before_fetching_anything(tmp_path):
    out = prepare_cli(["model=minilm", "dataset=demo", "rank=0,4"], tmp_path)
    assert out.returncode == 2
    assert "job model=minilm dataset=demo rank=0: method.r=0: the adapter rank" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "tokenized").exists()
    out = prepare_cli(["model=minilm", "--bogus"], tmp_path)
    assert out.returncode == 2 and "unknown option --bogus" in out.stderr
