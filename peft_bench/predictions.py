"""predictions.parquet: what a run's model answered on every test example (docs/results.md), so that two
runs can be compared example by example (McNemar, a paired bootstrap over examples) and an interval can
resample test examples as well as seeds. One row per example of each labelled test split: `split`
(test, test_<name>), `example` (its row in the split as the run's data made it: the same for every run
of the same data and split_seed), and the task's columns (label and prediction; a language model's
summed negative log-likelihood and token count per block). Written atomically; results.json holds its
SHA-256, so a file swapped or edited after the run is refused by the report rather than compared.
Where the answers are text (generation), the same rows are also written as predictions.jsonl, one JSON
object per line, for reading (`head -3 predictions.jsonl`); the report reads the parquet only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from peft_bench.io import atomic_path, file_digest

PREDICTIONS_FILE = "predictions.parquet"
READABLE_FILE = "predictions.jsonl"


def write_predictions(run_dir: Path, splits: dict[str, dict[str, np.ndarray]]) -> dict:
    """Write {split: {column: one value per example}} (each split's columns the same length, `example`
    among them) as one table; returns results.json's `predictions` record (file, sha256, examples)."""
    columns: dict[str, list] = {"split": []}
    for split, cols in splits.items():
        n = len(cols["example"])
        columns["split"] += [split] * n
        for name, values in cols.items():
            columns.setdefault(name, []).append(np.asarray(values))
    table = pa.table(
        {"split": pa.array(columns.pop("split"), pa.string())}
        | {name: pa.array(np.concatenate(parts)) for name, parts in columns.items()}
    )
    path = Path(run_dir) / PREDICTIONS_FILE
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    record = {
        "file": PREDICTIONS_FILE,
        "sha256": file_digest(path),
        "examples": {split: len(cols["example"]) for split, cols in splits.items()},
    }
    texts = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    if set(texts) - {"split"}:  # a column of text (generations): a copy to read as it is
        readable = Path(run_dir) / READABLE_FILE
        with atomic_path(readable) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for row in table.to_pylist():
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        record["readable"] = READABLE_FILE
    return record


def read_predictions(run_dir: Path, record: dict | None, split: str = "test") -> dict[str, np.ndarray]:
    """One split's columns of a run's predictions.parquet, ordered by example, checked against the
    results.json record that names it. ValueError, saying why, if the record names none, the file is
    missing, or it is not the file the run wrote."""
    if not record or not record.get("sha256"):
        raise ValueError("results.json names no predictions file (a run written before they were kept)")
    path = Path(run_dir) / record.get("file", PREDICTIONS_FILE)
    if not path.is_file():
        raise ValueError(f"{path} is missing")
    if file_digest(path) != record["sha256"]:
        raise ValueError(f"{path} is not the file the run wrote (its SHA-256 differs from results.json's)")
    table = pq.read_table(path)
    rows = table.filter(pc.equal(table["split"], split))
    if not rows.num_rows:
        raise ValueError(f"{path} has no rows of split {split!r}")
    out = {name: rows[name].to_numpy() for name in rows.column_names if name != "split"}
    order = np.argsort(out["example"], kind="stable")
    out = {name: values[order] for name, values in out.items()}
    if len(np.unique(out["example"])) != len(out["example"]):
        raise ValueError(f"{path} lists an example of split {split!r} twice")
    return out
