"""Tests compose the real config (conf/), shrink it (tiny model, demo data, few batches) and run it on
the CPU with no network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"

# No test touches the network: the Hub is off, W&B writes locally.
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline", WANDB_SILENT="true",
                  TOKENIZERS_PARALLELISM="false")

TINY = ["model=tiny", "dataset=demo", "logger=none"]


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory):
    """One tokenization cache for the session (as a sweep shares one)."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["PEFT_BENCH_CACHE"] = str(path)
    return path


def compose(overrides: list[str], run_dir: Path | None = None):
    """The job config Hydra would build for these command-line overrides."""
    from peft_bench.config import compose_job

    return compose_job(overrides, run_dir if run_dir is not None else "/nonexistent-run-dir")


def run_cli(args: list[str], env: dict | None = None, cwd: Path = ROOT, timeout: int = 600):
    """`python -m peft_bench ARGS` in a subprocess, as a user types it."""
    return subprocess.run([sys.executable, "-m", "peft_bench", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
