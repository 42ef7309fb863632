"""Fixtures and the test environment: the CPU, no network (the Hub off, W&B offline), one tokenization
cache per session. Shared helpers are in tests/helpers.py."""

from __future__ import annotations

import os

import pytest

# No test touches the network: the Hub is off, W&B writes locally.
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    WANDB_MODE="offline",
    WANDB_SILENT="true",
    TOKENIZERS_PARALLELISM="false",
)


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory):
    """One tokenization cache for the session (as a sweep shares one)."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["PEFT_BENCH_CACHE"] = str(path)
    return path
