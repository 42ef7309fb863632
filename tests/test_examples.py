"""Per-example test answers (predictions.parquet) and what the report does with them: the metrics
recomputed from the answers (against torchmetrics, an independent implementation), single-seed pairs
compared example by example (McNemar by hand), the interval over seeds and examples, and the files the
report refuses (swapped, edited, or not the run's figures)."""

from __future__ import annotations

import json
import math
from math import comb
from pathlib import Path

import numpy as np
import pytest
import torch

from peft_bench.predictions import PREDICTIONS_FILE, read_predictions, write_predictions
from peft_bench.report import write_report
from peft_bench.report.examples import Answers, two_level_interval
from peft_bench.tasks import TASKS
from tests.test_report import result

CLASSIFICATION, REGRESSION, LM = TASKS["classification"], TASKS["regression"], TASKS["causal_lm"]


def whole(n: int) -> np.ndarray:
    return np.arange(n)[None]


# --------------------------------------------------------------------------- metrics from the answers


@pytest.mark.parametrize("num_labels", [2, 3])
def test_classification_figures_from_the_answers_are_the_runs_torchmetrics_figures(num_labels):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, num_labels, (500,), generator=g)
    logits = torch.randn(500, num_labels, generator=g) + 1.5 * torch.nn.functional.one_hot(labels, num_labels)
    metrics = CLASSIFICATION.metrics(num_labels)
    CLASSIFICATION.update(metrics, logits, labels)
    expected = {k: float(v) for k, v in CLASSIFICATION.compute(metrics).items()}
    columns = {k: v.numpy() for k, v in CLASSIFICATION.example_columns(logits, labels).items()}
    for key in CLASSIFICATION.metric_keys:
        got = CLASSIFICATION.resampled(key, columns, whole(500), num_labels)[0]
        assert got == pytest.approx(expected[key], abs=1e-6), key


def test_regression_and_perplexity_figures_from_the_answers_are_the_runs_figures():
    g = torch.Generator().manual_seed(1)
    labels = torch.rand(300, generator=g) * 5
    labels[:40] = 2.0  # ties, for Spearman's average ranks
    logits = (labels + torch.randn(300, generator=g)).unsqueeze(-1)
    metrics = REGRESSION.metrics(1)
    REGRESSION.update(metrics, logits, labels)
    expected = {k: float(v) for k, v in REGRESSION.compute(metrics).items()}
    columns = {k: v.numpy() for k, v in REGRESSION.example_columns(logits, labels).items()}
    for key in REGRESSION.metric_keys:
        assert REGRESSION.resampled(key, columns, whole(300), 1)[0] == pytest.approx(expected[key], rel=1e-5)
    # a language model: blocks of 12 tokens, the last one short (its padding masked out)
    ids = torch.randint(0, 50, (6, 12), generator=g)
    labels = ids.clone()
    labels[-1, 7:] = -100
    logits = torch.randn(6, 12, 50, generator=g)
    metrics = LM.metrics(None)
    LM.update(metrics, logits, labels)
    columns = {k: v.numpy() for k, v in LM.example_columns(logits, labels).items()}
    assert list(columns["tokens"]) == [11] * 5 + [6]
    assert LM.resampled("ppl", columns, whole(6), None)[0] == pytest.approx(float(metrics["ppl"].compute()))


# --------------------------------------------------------------------------- the file


def answers(correct: list[bool], labels: list[int] | None = None) -> dict[str, np.ndarray]:
    y = np.array(labels if labels is not None else [i % 2 for i in range(len(correct))])
    return {"example": np.arange(len(y)), "label": y, "prediction": np.where(correct, y, 1 - y)}


def test_the_file_round_trips_and_a_swapped_or_edited_one_is_refused(tmp_path):
    cols = answers([True, False, True, True])
    record = write_predictions(tmp_path, {"test": cols, "test_mismatched": answers([False, True])})
    assert record["file"] == PREDICTIONS_FILE and record["examples"] == {"test": 4, "test_mismatched": 2}
    back = read_predictions(tmp_path, record)
    assert {k: list(v) for k, v in back.items()} == {k: list(v) for k, v in cols.items()}
    assert list(read_predictions(tmp_path, record, "test_mismatched")["prediction"]) == [1, 1]
    with pytest.raises(ValueError, match="names no predictions file"):
        read_predictions(tmp_path, None)
    other = tmp_path / "other"
    write_predictions(other, {"test": answers([True, True, True, True])})
    (tmp_path / PREDICTIONS_FILE).write_bytes((other / PREDICTIONS_FILE).read_bytes())  # swapped
    with pytest.raises(ValueError, match="SHA-256 differs from results.json's"):
        read_predictions(tmp_path, record)
    (tmp_path / PREDICTIONS_FILE).unlink()
    with pytest.raises(ValueError, match="is missing"):
        read_predictions(tmp_path, record)


# --------------------------------------------------------------------------- the report


def run_folder(root: Path, name: str, method: str, seed: int, correct: list[bool], **extra) -> None:
    """A results.json whose test_acc is the answers' accuracy, beside its predictions.parquet."""
    folder = root / name
    record = write_predictions(folder, {"test": answers(correct)})
    r = result(method, seed, sum(correct) / len(correct), predictions=record, **extra)
    r["config"]["dataset"].update(num_labels=2, metric="acc")  # the primary metric: accuracy
    (folder / "results.json").write_text(json.dumps(r))


def flips(n: int, wrong: set[int]) -> list[bool]:
    return [i not in wrong for i in range(n)]


def pairs_section(md: str) -> list[str]:
    lines = md.split("\n")
    start = lines.index("### Pairs on one seed, example by example")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), len(lines))
    return lines[start:end]


def test_single_seed_runs_are_compared_example_by_example_with_mcnemar(tmp_path):
    n = 2000
    # lora wrong on 0..99; hira wrong on 60..219 (lora only right on 100..219: 120; hira only on 0..59: 60);
    # dora as lora but for 2 examples each way (wrong on 2..101): |Δ| 0, 4 discordant of 2000
    root = tmp_path / "sweep"
    run_folder(root, "lora", "lora", 42, flips(n, set(range(100))))
    run_folder(root, "hira", "hira", 42, flips(n, set(range(60, 220))))
    run_folder(root, "dora", "dora", 42, flips(n, set(range(2, 102))))
    md = (write_report([root], tmp_path / "report")["out"] / "report.md").read_text()
    lines = pairs_section(md)
    # McNemar exact: 2 P(X <= 60), X ~ Binomial(180, 1/2), by counting; Holm: the smallest of 3, x 3
    p = 2 * sum(comb(180, k) for k in range(61)) / 2**180
    row = next(line for line in lines if line.startswith("| lora rank=8 | hira rank=8 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:5] == ["42", "2,000", "+0.0300"]  # 0.950 - 0.920
    assert cells[6] == f"McNemar (120 / 60): p={p:.3g}" and cells[8] == "better"
    # Holm: dora - hira (dora only right on 102..219: 118, hira only on 2..59: 58) has the smallest p, x 3;
    # lora - hira's, second, x 2, is raised to it where smaller
    p_dora_hira = 2 * sum(comb(176, k) for k in range(59)) / 2**176
    assert float(cells[7]) == pytest.approx(max(3 * p_dora_hira, 2 * p), rel=1e-2)
    low, high = (float(x) for x in cells[5].strip("[]").split(", "))
    assert low < 0.03 < high and high - low < 0.03  # about ±1.96 sqrt(180) / 2000 = ±0.0131
    row = next(line for line in lines if line.startswith("| lora rank=8 | dora rank=8 |"))
    assert "McNemar (2 / 2): p=1" in row and row.rstrip().endswith("| equivalent |")
    assert any("needs more seeds to say the methods do" in line for line in lines)


def test_an_edited_or_unfaithful_predictions_file_is_named_and_not_used(tmp_path):
    root = tmp_path / "sweep"
    run_folder(root, "lora", "lora", 42, flips(200, set(range(20))))
    run_folder(root, "hira", "hira", 42, flips(200, set(range(30))))
    run_folder(root, "dora", "dora", 42, flips(200, set(range(25))))
    # hira's file replaced by another run's answers: its digest no longer matches results.json's
    write_predictions(tmp_path / "x", {"test": answers(flips(200, set()))})
    (root / "hira" / PREDICTIONS_FILE).write_bytes((tmp_path / "x" / PREDICTIONS_FILE).read_bytes())
    # dora's results.json claims a test_acc its answers do not give (0.875): refused, not compared
    r = json.loads((root / "dora" / "results.json").read_text())
    r["test_acc"] = 0.9
    (root / "dora" / "results.json").write_text(json.dumps(r))
    md = (write_report([root], tmp_path / "report")["out"] / "report.md").read_text()
    assert "### Pairs on one seed, example by example" not in md  # no pair of usable answers is left
    (refused,) = [line for line in md.split("\n") if line.startswith("Per-example answers not used")]
    assert "hira: " in refused and "is not the file the run wrote" in refused
    assert "dora: its predictions.parquet gives test_acc 0.875, results.json 0.9" in refused


def test_different_test_examples_are_not_compared(tmp_path):
    root = tmp_path / "sweep"
    run_folder(root, "lora", "lora", 42, flips(200, set(range(20))))
    run_folder(root, "hira", "hira", 42, flips(201, set(range(20))))  # one example more: another test set
    lines = pairs_section((write_report([root], tmp_path / "r")["out"] / "report.md").read_text())
    assert "Not compared, scored on different test examples: lora rank=8 and hira rank=8." in lines
    # the same rows and labels, but another raw data (its fingerprint): not the same examples either
    other = tmp_path / "other"
    run_folder(other, "lora", "lora", 42, flips(200, set(range(20))), data={"raw_fingerprint": "a"})
    run_folder(other, "hira", "hira", 42, flips(200, set(range(30))), data={"raw_fingerprint": "b"})
    lines = pairs_section((write_report([other], tmp_path / "r2")["out"] / "report.md").read_text())
    assert "Not compared, scored on different test examples: lora rank=8 and hira rank=8." in lines


def test_the_interval_over_seeds_and_examples_stays_in_range_and_holds_both_noises():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    seeds = [Answers(answers(list(rng.random(400) < q), list(y)), 2) for q in (0.97, 0.985, 0.999)]
    both = two_level_interval(seeds, CLASSIFICATION, (0.0, 1.0))
    assert 0.0 <= both.low < both.mean < both.high <= 1.0
    figures = [CLASSIFICATION.resampled("acc", s.columns, whole(400), 2)[0] for s in seeds]
    assert both.mean == pytest.approx(np.mean(figures))
    # wider than over the examples of the middle seed alone, and than the seeds' own range
    one = two_level_interval(seeds[1:2], CLASSIFICATION, (0.0, 1.0))
    assert one.n == 1 and both.high - both.low > one.high - one.low
    assert both.low < min(figures) and both.high > max(figures) - 1e-9
    # seeds scored on different examples: no interval
    shifted = Answers({**seeds[0].columns, "example": seeds[0].examples + 1}, 2)
    assert two_level_interval([shifted, seeds[1]], CLASSIFICATION, (0.0, 1.0)) is None
    assert math.isfinite(one.low)
