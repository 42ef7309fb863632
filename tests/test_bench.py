"""The benchmark suite runs end to end in its short mode (tiny model, generated data): every case
produces its figures and BENCHMARKS.md. The figures are not asserted: short mode measures nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"  # case 11's prompts


@pytest.mark.slow  # every benchmark case in its short mode: ~2 min on 2 cores
def test_bench_short_mode_writes_every_case(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--short", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads((tmp_path / "bench.json").read_text())
    assert {
        "overhead",
        "mfu",
        "mfu_imdb",
        "pruning",
        "seeds_pipeline",
        "qlora",
        "startup",
        "scaling",
        "tune_pruner",
        "precheck",
        "pairs",
        *(["generation"] if GSM8K.is_file() else []),
    } <= set(figures)
    assert figures["mfu"]["median"] > 0 and figures["seeds_pipeline"]["sst2"]["trainer_val_acc"] >= 0
    md = (tmp_path / "BENCHMARKS.md").read_text()
    cases = [line.split(" ", 2)[1] for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    # case 2: speed and accuracy; 3: SST-2 and IMDB; 8: the pruner's saving and its best score; 10: pairs
    assert cases == [
        "1",
        "2",
        "2",
        "3",
        "3",
        "4",
        "5",
        "6",
        "8",
        "8",
        "9",
        "10",
        *(["11"] if GSM8K.is_file() else []),
    ]
    assert "## 7 How cost grows" in md and (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    methods = {p["method"] for p in figures["scaling"]["points"]}
    assert methods == {"lora", "sparse_lora", "hira", "qlora", "lora_layers", "full"}
    # --cases reruns some cases and keeps the others' figures; the hand-written notes survive
    md_path = tmp_path / "BENCHMARKS.md"
    md_path.write_text(
        md + "\n<!-- notes: written by hand, kept when the figures are regenerated -->\nmy notes\n"
    )
    again = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench.py"),
            "--short",
            "--out",
            str(tmp_path),
            "--cases",
            "pruning",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    merged = json.loads((tmp_path / "bench.json").read_text())
    assert merged["scaling"] == figures["scaling"] and merged["pruning"] != figures["pruning"]
    assert md_path.read_text().rstrip().endswith("my notes")
