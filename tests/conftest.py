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
def process_set_up():
    """What every entry point does first (peft_bench.env): tests that call run() directly get it too."""
    from peft_bench.env import setup_process

    setup_process(check_hub=False)


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory):
    """One tokenization cache for the session (as a sweep shares one)."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["PEFT_BENCH_CACHE"] = str(path)
    return path


def pytest_addoption(parser):
    parser.addoption(
        "--slow",
        action="store_true",
        help="also run the tests marked slow (end-to-end runs of real processes; make test-slow)",
    )


def pytest_collection_modifyitems(config, items):
    """`make test` stays short: the tests marked slow skip, saying so, unless --slow is given
    (`make test-slow` runs only them, `make test-all` everything; CI runs both halves)."""
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow (an end-to-end run of real processes): make test-slow runs it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
