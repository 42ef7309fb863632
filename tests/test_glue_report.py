"""The benchmark (GLUE) table that opens a report over two or more datasets: real short runs of the tiny
model on small local files give exactly the table worked out here from their results.json (×100, mean ±
std over seeds, GLUE's average, bold on the best, the trivial predictor's row, ⚠ on collapsed runs);
hand-written records pin the layout (MNLI's two test splits, a row lacking a dataset, records from before
`baseline`, perplexity left out)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from peft_bench.report import write_report
from tests.helpers import compose

QUICK = [
    "model=tiny",
    "logger=none",
    "trainer=fast",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "dataset.batch_size=8",
]
WORDS = ["cat", "dog", "river", "market", "piano", "winter", "garden", "engine", "letter", "island"]


def pairs(n: int, regression: bool) -> list[dict]:
    """Sentence pairs with MRPC's and STS-B's field names: a class 0/1, or a score 0.0-5.0."""
    return [
        {
            "sentence1": f"the {WORDS[i % 10]} saw a {WORDS[i * 3 % 10]} number {i}",
            "sentence2": f"a {WORDS[i * 7 % 10]} was near the {WORDS[(i + 4) % 10]} {i}",
            "label": round(i * 0.37 % 5.0, 2) if regression else int(i % 3 == 0),
        }
        for i in range(n)
    ]


def jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def mean(v: list[float]) -> float:
    return sum(v) / len(v)


def std(v: list[float]) -> float:
    m = mean(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def cell(v: list[float]) -> str:
    return f"{100 * mean(v):.1f}" if len(v) == 1 else f"{100 * mean(v):.1f} ± {100 * std(v):.1f}"


def table_row(md: str, name: str) -> list[str]:
    """The cells of the benchmark table's row `name` (the table before the first dataset's section)."""
    table = md.split("## Benchmark table")[1].split("\n## ")[0]
    line = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """lora and ia3 on an MRPC-shaped and an STS-B-shaped file: four real runs (several seeds per cell and
    their average per seed: the hand-written records below)."""
    from peft_bench.train import run

    tmp = tmp_path_factory.mktemp("glue")
    files = {
        "mrpc": jsonl(tmp / "mrpc.jsonl", pairs(120, False)),
        "stsb": jsonl(tmp / "stsb.jsonl", pairs(120, True)),
    }
    for name, path in files.items():
        for method, seed in (("lora", 1), ("ia3", 1)):
            overrides = [
                *QUICK,
                f"dataset={name}",
                f"dataset.data_files={{train:'{path}'}}",
                f"method={method}",
            ]
            run(compose([*overrides, f"seed={seed}"], tmp / "sweep" / f"{name}-{method}-s{seed}"))
    return tmp / "sweep"


def test_a_report_over_two_datasets_opens_with_the_glue_table_of_their_figures(sweep, tmp_path):
    out = write_report([sweep], tmp_path / "report", wandb_mode="off")
    assert out["runs"] == 4 and not out["left_out"]
    md = (tmp_path / "report" / "report.md").read_text()
    records = {d.name: json.loads((d / "results.json").read_text()) for d in sweep.iterdir() if d.is_dir()}
    # it opens the report, before the datasets' own sections (which stay)
    assert md.index("## Benchmark table") < md.index("## mrpc") < md.index("## stsb")
    header = next(
        line for line in md.split("## Benchmark table")[1].splitlines() if line.startswith("| Method")
    )
    # MRPC: F1 and accuracy (dataset.report_metrics), STS-B: Pearson and Spearman, then GLUE's average
    assert header == (
        "| Method | Trainable Params | mrpc F1 | mrpc Acc | stsb Pearson | stsb Spearman | Avg. |"
    )
    keys = {"mrpc": ("test_f1", "test_acc"), "stsb": ("test_pearson", "test_spearman")}
    expected = {}
    for method, seeds in (("lora", (1,)), ("ia3", (1,))):
        runs = {d: [records[f"{d}-{method}-s{s}"] for s in seeds] for d in keys}
        cells = []
        for d, ks in keys.items():
            for k in ks:
                collapsed = any(
                    w.startswith("predictions on test are") for r in runs[d] for w in r["warnings"]
                )
                cells.append(cell([r[k] for r in runs[d]]) + (" ⚠" if collapsed else ""))
        # GLUE's average, per seed: each dataset's score the mean of its two figures, then over datasets
        per_seed = [
            100 * mean([mean([runs[d][i][k] for k in ks]) for d, ks in keys.items()])
            for i in range(len(seeds))
        ]
        avg = f"{mean(per_seed):.1f}" if len(seeds) == 1 else f"{mean(per_seed):.1f} ± {std(per_seed):.1f}"
        params = sorted({r["trainable_params"] for rs in runs.values() for r in rs})
        expected[method] = [method, f"{params[0]:,}–{params[1]:,}", *cells, avg]
    got = {m: table_row(md, m) for m in expected}
    # bold on the best of each column (the higher mean as printed; both where they tie)
    for i in range(2, 7):
        means = {m: float(expected[m][i].split(" ")[0]) for m in expected}
        for m in expected:
            if means[m] == max(means.values()):
                expected[m][i] = f"**{expected[m][i]}**"
    assert got == expected
    # the trivial predictor: the training split's majority class on MRPC, its mean label on STS-B (0)
    base = {d: records[f"{d}-lora-s1"]["baseline"] for d in keys}
    figures = [100 * base[d][k] for d, ks in keys.items() for k in ks]
    assert table_row(md, "Majority class / mean label") == [
        "Majority class / mean label",
        "0",
        *[f"{v:.1f}" for v in figures],
        f"{mean([mean(figures[:2]), mean(figures[2:])]):.1f}",
    ]
    assert "1 seed per cell" in md and "the mean of the datasets' scores (as GLUE computes it" in md
    # the datasets' sections show the trivial predictor's primary metric
    f1, acc = base["mrpc"]["test_f1"], base["mrpc"]["test_acc"]
    assert f"Majority class baseline: test F1 {f1:.4f} (Acc {acc:.4f})." in md
    assert "Mean label baseline: test Pearson 0.0000 (Spearman 0.0000)." in md


# ----------------------------------------------------------------------- hand-written records


def record(dataset: str, method: str, seed: int, scores: dict, **extra) -> dict:
    """A completed results.json with the fields the report reads; `scores`: test figures, the same + 0.01 on
    validation."""
    cfg = {
        "mnli": {"task": "classification", "metric": "acc", "extra_test_splits": ["mismatched"]},
        "cola": {"task": "classification", "metric": "mcc"},
        "rte": {"task": "classification", "metric": "acc"},
        "wikitext2": {"task": "causal_lm", "metric": "ppl"},
    }[dataset]
    return {
        "status": "completed",
        "method": method,
        "dataset": dataset,
        "model": "tiny",
        "rank": 8,
        "seed": seed,
        "config": {
            "method": {"name": method, "r": 8, "lr": 1e-3},
            "dataset": {"name": dataset, **cfg},
            "model": {"name": "tiny"},
            "seed": seed,
        },
        "trainable_params": {"lora": 8_000, "ia3": 900}[method],
        "total_params": 2_000_000,
        "train_time_s": 10.0,
        **{f"test_{k}": v for k, v in scores.items()},
        **{f"val_{k}": v + 0.01 for k, v in scores.items() if k.count("_") == 0},
        **extra,
    }


def write(root: Path, runs: dict[str, dict]) -> Path:
    for name, r in runs.items():
        (root / name).mkdir(parents=True)
        (root / name / "results.json").write_text(json.dumps(r))
    return root


def test_mnli_shows_both_test_splits_a_collapsed_cell_is_marked_and_a_row_lacking_a_dataset_has_no_average(
    tmp_path,
):
    collapsed = ["predictions on test are all one class: class 0 for 100 of 100 examples (100.0%); ..."]
    runs = {
        "mnli-lora-1": record("mnli", "lora", 1, {"acc": 0.80, "mismatched_acc": 0.70}),
        "mnli-lora-2": record("mnli", "lora", 2, {"acc": 0.84, "mismatched_acc": 0.74}),
        "cola-lora-1": record("cola", "lora", 1, {"mcc": 0.34}, warnings=collapsed),
        "cola-lora-2": record("cola", "lora", 2, {"mcc": 0.40}),
        "mnli-ia3-1": record("mnli", "ia3", 1, {"acc": 0.81, "mismatched_acc": 0.75}),
        "wikitext2-lora-1": record("wikitext2", "lora", 1, {"ppl": 30.0}),
    }
    runs["mnli-lora-1"]["baseline"] = {"test_acc": 0.35, "test_mismatched_acc": 0.37, "val_acc": 0.3}
    runs["cola-lora-1"]["baseline"] = {"test_mcc": 0.0, "test_acc": 0.69, "val_mcc": 0.0}
    write_report([write(tmp_path / "s", runs)], tmp_path / "r", wandb_mode="off")
    md = (tmp_path / "r" / "report.md").read_text()
    table = md.split("## Benchmark table")[1].split("\n## ")[0]
    assert "| Method | Trainable Params | cola MCC | mnli Acc | mnli mismatched Acc | Avg. |" in table
    # lora: cola 34, 40 -> 37.0 ± 4.2 (⚠: seed 1 collapsed); mnli 80, 84 -> 82.0 ± 2.8; 70, 74 -> 72.0 ± 2.8;
    # per seed: (34 + (80 + 70) / 2) / 2 = 54.5, (40 + (84 + 74) / 2) / 2 = 59.5 -> 57.0 ± 3.5
    assert table_row(md, "lora") == [
        "lora",
        "8,000",
        "37.0 ± 4.2 ⚠",
        "**82.0 ± 2.8**",
        "72.0 ± 2.8",
        "57.0 ± 3.5",
    ]
    # ia3 ran no CoLA: no average; mnli 81 (below lora's 82), mismatched 75 (the best: bold)
    assert table_row(md, "ia3") == ["ia3", "900", "-", "81.0", "**75.0**", "-"]
    # the trivial predictor: cola 0, mnli 35 and 37 -> (0 + 36) / 2
    assert table_row(md, "Majority class")[1:] == ["0", "0.0", "35.0", "37.0", "18.0"]
    assert "only for rows that have every dataset (1 row lack some: -)" in table
    assert "⚠: predictions of at least one seed on that test split are (nearly) all one class" in table
    assert "Not in the table: wikitext2" in table
    # the datasets' own sections: the baseline of the primary metric
    assert "Majority class baseline: test MCC 0.0000 (Acc 0.6900)." in md
    assert "Majority class baseline: test Acc 0.3500." in md


def test_one_dataset_has_no_table_and_an_old_record_without_baseline_keeps_the_majority_share(tmp_path):
    old = record("rte", "lora", 1, {"acc": 0.6, "f1": 0.5})
    old["data"] = {"label_counts": {"test": {"0": 30, "1": 70}}}
    write_report([write(tmp_path / "s", {"rte": old})], tmp_path / "r", wandb_mode="off")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Benchmark table" not in md
    assert "Chance (majority class) on the test split: accuracy 0.7000." in md
    other = record("cola", "lora", 1, {"mcc": 0.2})
    write_report([write(tmp_path / "t", {"rte": old, "cola": other})], tmp_path / "r2", wandb_mode="off")
    md = (tmp_path / "r2" / "report.md").read_text()
    assert table_row(md, "Majority class") == ["Majority class", "0", "-", "-", "-"]
    assert table_row(md, "lora") == ["lora", "8,000", "20.0", "60.0", "40.0"]  # one row: nothing to bold


def test_a_regression_run_is_complete_with_validation_correlations_only(tmp_path):
    r = record("cola", "lora", 1, {"mcc": 0.2})
    r["config"]["dataset"] = {"name": "stsb", "task": "regression", "metric": "pearson"}
    r.update(dataset="stsb", test_pearson=0.5, val_pearson=0.55)
    for k in ("test_mcc", "val_mcc"):
        del r[k]
    out = write_report([write(tmp_path / "s", {"stsb": r})], tmp_path / "r", wandb_mode="off")
    assert out["runs"] == 1 and not out["left_out"]
    del r["val_pearson"]
    out = write_report([write(tmp_path / "t", {"stsb": r})], tmp_path / "r2", wandb_mode="off")
    assert [why for _, why in out["left_out"]] == ["partial results.json: no val_pearson or val_spearman"]
