"""A Hydra callback that prints one table of a sweep's runs when the sweep ends."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from peft_bench.results import RESULTS_FILE


def collect(root: Path) -> list[tuple[Path, dict | None]]:
    """Every results.json under root, parsed (None where unreadable), in job order."""
    def job_order(p: Path):
        return [int(x) if x.isdigit() else x for x in p.relative_to(root).parts]

    out = []
    for path in sorted(root.rglob(RESULTS_FILE), key=job_order):
        try:
            out.append((path.parent, json.loads(path.read_text())))
        except (OSError, ValueError):
            out.append((path.parent, None))
    return out


def majority_share(results: dict, split: str) -> float | None:
    """Accuracy of always answering the most frequent class: the chance level to beat."""
    counts = results.get("data", {}).get("label_counts", {}).get(split)
    return max(counts.values()) / sum(counts.values()) if counts else None


def runs_table(root: Path) -> Table:
    runs = collect(root)
    table = Table(title=f"runs in {root}")
    lm = any(r and "val_ppl" in r for _, r in runs)
    chance = [majority_share(r, "test") for _, r in runs if r]
    if chance and chance[0] is not None and not lm:
        table.caption = f"chance level (majority class) on the test split: acc {chance[0]:.4f}"
    scores = ["val_ppl", "test_ppl"] if lm else ["val_acc", "val_f1", "test_acc", "test_f1"]
    for col in ("run", "method", "rank", "trainable / total", "ratio", *[k.replace("_", " ") for k in scores],
                "train time (s)", "status"):
        table.add_column(col, justify="left" if col in ("run", "method", "status") else "right")
    for run_dir, r in runs:
        name = str(run_dir.relative_to(root)) or "."
        if r is None:
            table.add_row(name, *[""] * (5 + len(scores)), "unreadable results.json")
            continue

        def fmt(key: str, spec: str = ".4f", r: dict = r) -> str:
            return format(r[key], spec) if isinstance(r.get(key), int | float) else "-"

        params = f"{r['trainable_params']:,} / {r['total_params']:,}" if "total_params" in r else "-"
        status = r.get("status", "?") + (f": {r['error']}" if r.get("error") else "")
        table.add_row(name, r.get("method", "?"), str(r.get("rank", "-")), params, fmt("trainable_ratio", ".4%"),
                      *[fmt(k, ".2f" if lm else ".4f") for k in scores], fmt("train_time_s", ".1f"),
                      status)
    return table


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        root = Path(config.hydra.sweep.dir)
        if root.is_dir():
            Console(width=200).print(runs_table(root))
