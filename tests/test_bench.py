"""The benchmark suite runs end to end in its short mode (tiny model, generated data): every case
produces its figures and BENCHMARKS.md. The figures are not asserted: short mode measures nothing."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_bench_short_mode_writes_every_case(tmp_path):
    out = subprocess.run([sys.executable, "-m", "peft_bench.bench", "--short", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads((tmp_path / "bench.json").read_text())
    assert {"overhead", "mfu", "pruning", "seeds_pipeline", "qlora", "startup"} <= set(figures)
    assert figures["mfu"]["median"] > 0 and figures["seeds_pipeline"]["sst2"]["trainer_val_acc"] >= 0
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert md.count("\n| ") == 8  # header + 7 cases
