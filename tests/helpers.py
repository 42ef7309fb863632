"""What the tests share: the real config composed as a command line would (then shrunk: tiny model,
demo data, few batches), the CLI in a subprocess, and the check that a results.json is documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"
TINY = ["model=tiny", "dataset=demo", "logger=none"]


def compose(overrides: list[str], run_dir: Path | None = None):
    """The job config Hydra would build for these command-line overrides."""
    from peft_bench.checks import compose_job

    return compose_job(overrides, run_dir if run_dir is not None else "/nonexistent-run-dir")


def build_module(run_cfg, total_steps: int = 100):
    """The method's module built outside a run. A data-driven init (EVA, CorDA, LoRA-GA) reads training
    batches first: here seeded random tokens (a run reads its first training batches)."""
    import torch
    from hydra.utils import get_class

    cls = get_class(run_cfg.method._target_)
    gen = torch.Generator().manual_seed(0)
    calibration = []
    for _ in range(cls.calibration_batches(run_cfg.method)):
        ids = torch.randint(5, 1000, (8, 16), generator=gen)
        lm = run_cfg.dataset.task in ("causal_lm", "generation")
        labels = ids if lm else torch.randint(0, run_cfg.dataset.num_labels, (8,), generator=gen)
        if run_cfg.dataset.task == "regression":
            labels = torch.rand(8, generator=gen)
        calibration.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return cls(
        method=run_cfg.method,
        model=run_cfg.model,
        dataset=run_cfg.dataset,
        total_steps=total_steps,
        calibration=calibration or None,
    )


def run_cli(args: list[str], env: dict | None = None, cwd: Path = ROOT, timeout: int = 600):
    """`python -m peft_bench ARGS` in a subprocess, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "peft_bench", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def documented_keys() -> set[str]:
    """The keys docs/results.md names in its tables (`key`, `data.key`)."""
    text = (ROOT / "docs" / "results.md").read_text()
    return set(re.findall(r"`([A-Za-z0-9_.\-]+)`", text))


def assert_documented(results: dict) -> None:
    """Every key a run wrote is in RunResult (and its data section in DataInfo) and in docs/results.md."""
    from peft_bench.results import DataInfo, RunResult, score_key

    docs = documented_keys()
    unknown = sorted(
        k for k in results if not score_key(k) and (k not in RunResult.__annotations__ or k not in docs)
    )
    assert not unknown, f"results.json keys not in RunResult or not in docs/results.md: {unknown}"
    data = results.get("data", {})
    unknown = sorted(k for k in data if k not in DataInfo.__annotations__ or f"data.{k}" not in docs)
    assert not unknown, f"results.json data keys not in DataInfo or not in docs/results.md: {unknown}"
