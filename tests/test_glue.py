"""GLUE on the tiny encoder: every GLUE dataset config trains on a small local file with its own field
names; pairs are tokenized as pairs; regression's loss is the MSE; the five metric kinds match figures
computed here by hand; collapsed predictions are said; the baselines; the primary metric picks the
checkpoint and the tuning objective; hostile inputs are one sentence; a pair run resumes exactly."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from peft_bench.errors import ConfigError, DataError
from peft_bench.predictions import read_predictions
from tests.helpers import assert_documented, compose, run_cli
from tests.test_hostile import files_override, jsonl, results

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

# dataset -> (first text, second text or None, classes (1: a real-valued label), primary metric)
GLUE = {
    "cola": ("sentence", None, 2, "mcc"),
    "sst2": ("sentence", None, 2, "acc"),
    "mrpc": ("sentence1", "sentence2", 2, "f1"),
    "qqp": ("question1", "question2", 2, "f1"),
    "stsb": ("sentence1", "sentence2", 1, "pearson"),
    "mnli": ("premise", "hypothesis", 3, "acc"),
    "qnli": ("question", "sentence", 2, "acc"),
    "rte": ("sentence1", "sentence2", 2, "acc"),
    "wnli": ("sentence1", "sentence2", 2, "acc"),
}


def glue_rows(name: str, n: int, offset: int = 0) -> list[dict]:
    """`n` rows with the dataset's own field names: classes 0..k-1 in turn, or STS-B's 0.0-5.0 scores."""
    first, second, classes, _ = GLUE[name]
    out = []
    for i in range(offset, offset + n):
        row = {first: f"the {WORDS[i % 10]} saw a {WORDS[(i * 3) % 10]} number {i}"}
        if second:
            row[second] = f"a {WORDS[(i * 7) % 10]} was near the {WORDS[(i + 4) % 10]} {i}"
        row["label"] = round((i * 0.37) % 5.0, 2) if classes == 1 else i % classes
        out.append(row)
    return out


def quick_run(run_dir: Path, *overrides: str, callbacks=()) -> dict:
    from peft_bench.train import run

    return run(compose([*QUICK, *overrides], run_dir), callbacks=callbacks)


def datamodule(tmp_path: Path, name: str, files, *extra: str):
    """The real datamodule of `model=tiny dataset=NAME dataset.data_files=...`, prepared."""
    from hydra.utils import get_class

    from peft_bench.checks import check_config
    from peft_bench.models import load_tokenizer

    run = check_config(compose(["model=tiny", f"dataset={name}", files_override(files), *extra]))
    dm = get_class(run.dataset._target_)(
        dataset=run.dataset,
        tokenizer=load_tokenizer(run.model),
        cache_dir=str(tmp_path / "cache"),
        seed=run.seed,
    )
    dm.prepare_data()
    return dm


# ---------------------------------------------------------------- every GLUE config trains


@pytest.mark.parametrize("name", list(GLUE))
def test_every_glue_config_checks_and_trains_on_a_local_file_with_its_own_fields(tmp_path, name):
    from peft_bench.checks import check_config
    from peft_bench.tasks import METRICS, task_for

    first, second, classes, metric = GLUE[name]
    files = {"train": jsonl(tmp_path / "train.jsonl", glue_rows(name, 160))}
    if name == "mnli":  # the mismatched genres: a labelled split of its own, scored beside test
        files["test_mismatched"] = jsonl(tmp_path / "mismatched.jsonl", glue_rows(name, 30, 5000))
    overrides = [f"dataset={name}", files_override(files)]
    run_cfg = check_config(compose([*QUICK, *overrides]))
    task = task_for(run_cfg.dataset)
    assert (run_cfg.dataset.text_field, run_cfg.dataset.text_pair_field) == (first, second)
    assert task.key == metric and task.name == ("regression" if classes == 1 else "classification")

    out = quick_run(tmp_path / "run", *overrides)
    on_disk = results(tmp_path / "run")
    assert on_disk["status"] == "completed" and on_disk["optimizer_steps"] == 3
    splits = ["val", "test", *(["test_mismatched"] if name == "mnli" else [])]
    for split in splits:
        for key in task.metric_keys:  # every metric of the task, on every scored split
            value = on_disk[f"{split}_{key}"]
            bounds = METRICS[key].bounded
            assert math.isfinite(value) and (bounds is None or bounds[0] <= value <= bounds[1]), (split, key)
    assert {task.select_by, task.score} <= set(on_disk) and out[task.select_by] == on_disk[task.select_by]
    if name == "mnli":
        assert on_disk["data"]["sizes"]["test_mismatched"] == 30 and "test_mismatched_acc" in on_disk
        assert on_disk["data"]["splits"]["test_mismatched"] == "given split 'test_mismatched'"
    else:
        assert not any(k.startswith("test_mismatched") for k in on_disk)
    assert set(on_disk["baseline"]) == {f"{s}_{k}" for s in splits for k in task.metric_keys}
    assert_documented(on_disk)


# ---------------------------------------------------------------- pairs tokenized as pairs


def test_a_pair_is_tokenized_as_a_pair_truncated_longest_first_and_cached_apart(tmp_path):
    from peft_bench.models import load_tokenizer

    rows = [
        {"sentence1": f"alpha {WORDS[i % 10]}", "sentence2": f"omega {WORDS[(i + 3) % 10]}", "label": i % 2}
        for i in range(100)
    ]
    rows[0] = {"sentence1": " ".join(["red"] * 100), "sentence2": " ".join(["blue"] * 10), "label": 0}
    rows[1] = {"sentence1": " ".join(["red"] * 100), "sentence2": " ".join(["blue"] * 100), "label": 1}
    files = {"train": jsonl(tmp_path / "train.jsonl", rows), "test": jsonl(tmp_path / "t.jsonl", rows[:20])}
    dm = datamodule(tmp_path, "mrpc", files, "dataset.max_length=32")
    tok = load_tokenizer(compose(["model=tiny"]).model)
    test = dm.data["test"]
    for i, ids in enumerate(test["input_ids"]):
        types = test["token_type_ids"][i]
        assert ids.count(tok.sep_token_id) == 2 and ids[-1] == tok.sep_token_id  # [CLS] a [SEP] b [SEP]
        assert 0 < types.count(1) < len(ids) and types == sorted(types)  # segment 0, then segment 1
        a, b = tok.decode(ids[1 : types.index(1) - 1]), tok.decode(ids[types.index(1) : -1])
        if i >= 2:  # short pairs: both texts whole, each in its own segment
            assert (a, b) == (rows[i]["sentence1"], rows[i]["sentence2"])
    long_short, long_long = test["input_ids"][0], test["input_ids"][1]
    assert len(long_short) == len(long_long) == 32  # cut to max_length
    red, blue = tok.convert_tokens_to_ids(["red", "blue"])
    # longest first: the long text gives up tokens, the short one keeps all of its 10
    assert (long_short.count(red), long_short.count(blue)) == (32 - 3 - 10, 10)
    assert sorted((long_long.count(red), long_long.count(blue))) == [14, 15]  # two long ones: halved
    # batches carry both segments to the model
    batch = next(iter(dm.train_dataloader()))
    assert {"input_ids", "attention_mask", "token_type_ids", "labels"} <= set(batch)
    assert int((batch["token_type_ids"] == 1).sum()) > 0
    # the same file read as single texts (the pair field dropped) is another cache entry
    single = datamodule(tmp_path, "mrpc", files, "dataset.max_length=32", "dataset.text_pair_field=null")
    assert single.info["cache"] == "miss" and single.info["cache_key"] != dm.info["cache_key"]
    assert all(ids.count(tok.sep_token_id) == 1 for ids in single.data["test"]["input_ids"])
    assert datamodule(tmp_path, "mrpc", files, "dataset.max_length=32").info["cache"] == "hit"


# ---------------------------------------------------------------- regression's loss


def test_regression_labels_are_floats_and_the_loss_is_the_mse_of_the_one_output(tmp_path):
    from hydra.utils import get_class

    from peft_bench.checks import check_config

    files = {"train": jsonl(tmp_path / "train.jsonl", glue_rows("stsb", 120))}
    dm = datamodule(tmp_path, "stsb", files)
    run = check_config(compose(["model=tiny", "dataset=stsb", files_override(files)]))
    module = get_class(run.method._target_)(method=run.method, model=run.model, dataset=run.dataset)
    batch = next(iter(dm.train_dataloader()))
    labels = batch["labels"]
    assert labels.dtype == torch.float32 and labels.dim() == 1 and float(labels.max()) > 1  # scores, not ids
    rows = {r["sentence1"]: r["label"] for r in glue_rows("stsb", 120)}
    assert all(0.0 <= float(y) <= 5.0 for y in labels) and len(set(rows.values())) > 20
    module.eval()
    with torch.no_grad():
        out = module.model(**batch)
    assert out.logits.shape == (len(labels), 1)
    by_hand = sum((float(p) - float(y)) ** 2 for p, y in zip(out.logits[:, 0], labels, strict=True)) / len(
        labels
    )
    assert float(out.loss) == pytest.approx(by_hand, rel=1e-5)
    assert module.model.config.problem_type == "regression"


# ---------------------------------------------------------------- the five metric kinds, by hand


LABELS = [1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1, 1, 0, 1]
PREDS = [1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1]
LABELS3 = [0, 1, 2, 2, 1, 0, 0, 2, 1, 1, 2, 0, 2, 1, 0]
PREDS3 = [0, 2, 2, 1, 1, 0, 1, 2, 1, 0, 2, 0, 0, 1, 0]
SCORES = [1.0, 2.0, 2.0, 3.0, 5.0, 5.0, 5.0, 0.5, 4.0]  # ties in both
TARGETS = [0.5, 1.5, 1.0, 3.5, 4.0, 4.0, 2.0, 0.0, 4.0]


def mcc_by_hand(labels: list[int], preds: list[int], k: int) -> float:
    """Matthews correlation as the correlation of the one-hot label and prediction matrices (Gorodkin's
    R_K), 0 where a side is constant."""
    x, y = np.eye(k)[labels], np.eye(k)[preds]
    x, y = x - x.mean(0), y - y.mean(0)
    cov = lambda a, b: float((a * b).sum())  # noqa: E731
    d = math.sqrt(cov(x, x) * cov(y, y))
    return cov(x, y) / d if d else 0.0


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, tied values sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for m in order[i : j + 1]:
            out[m] = (i + j) / 2 + 1
        i = j + 1
    return out


def pearson_by_hand(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    return sxy / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def through_the_task(task, num_labels, logits, labels, batches: int = 3) -> dict:
    """The figures the module logs: the task's metrics, fed batch by batch, computed by the task."""
    metrics = task.metrics(num_labels)
    for lo, la in zip(logits.chunk(batches), labels.chunk(batches), strict=True):
        task.update(metrics, lo, la)
    return {k: float(v) for k, v in task.compute(metrics).items()}


def one_hot_logits(preds: list[int], k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(preds), k).float() * 3.0 - 1.0


def test_accuracy_f1_and_mcc_of_a_fixed_binary_prediction_set_match_the_hand_computed_figures():
    from peft_bench.tasks import CLASSIFICATION

    tp = sum(p == y == 1 for p, y in zip(PREDS, LABELS, strict=True))
    tn = sum(p == y == 0 for p, y in zip(PREDS, LABELS, strict=True))
    fp = sum(p == 1 and y == 0 for p, y in zip(PREDS, LABELS, strict=True))
    fn = sum(p == 0 and y == 1 for p, y in zip(PREDS, LABELS, strict=True))
    assert (tp, tn, fp, fn) == (6, 4, 2, 2)
    acc, f1 = (tp + tn) / len(LABELS), 2 * tp / (2 * tp + fp + fn)
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert (
        mcc == pytest.approx(mcc_by_hand(LABELS, PREDS, 2)) == pytest.approx(20 / 48)
    )  # (6·4 − 2·2) / √(8·8·6·6)
    got = through_the_task(CLASSIFICATION, 2, one_hot_logits(PREDS, 2), torch.tensor(LABELS), batches=2)
    assert got["acc"] == pytest.approx(acc) == pytest.approx(10 / 14)
    assert got["f1"] == pytest.approx(f1) == pytest.approx(0.75)
    assert got["precision"] == pytest.approx(tp / (tp + fp)) and got["recall"] == pytest.approx(
        tp / (tp + fn)
    )
    assert got["mcc"] == pytest.approx(mcc, abs=1e-6)
    # every prediction one class: MCC 0 (undefined, as scikit-learn and GLUE's scorer give it)
    for k, labels in ((2, LABELS), (3, LABELS3)):
        for c in range(k):
            constant = through_the_task(
                CLASSIFICATION, k, one_hot_logits([c] * len(labels), k), torch.tensor(labels)
            )
            assert constant["mcc"] == 0.0 and mcc_by_hand(labels, [c] * len(labels), k) == 0.0
            assert constant["acc"] == pytest.approx(labels.count(c) / len(labels))


def test_three_class_mcc_and_macro_accuracy_match_the_hand_computed_figures():
    from peft_bench.tasks import CLASSIFICATION

    got = through_the_task(CLASSIFICATION, 3, one_hot_logits(PREDS3, 3), torch.tensor(LABELS3))
    assert got["mcc"] == pytest.approx(mcc_by_hand(LABELS3, PREDS3, 3), abs=1e-6)
    assert 0.3 < got["mcc"] < 0.7
    # multi-class accuracy is macro (mean of per-class recall), as torchmetrics' average="macro"
    recall = [
        sum(p == y == c for p, y in zip(PREDS3, LABELS3, strict=True)) / LABELS3.count(c) for c in range(3)
    ]
    assert got["acc"] == pytest.approx(sum(recall) / 3)
    assert got["recall"] == pytest.approx(sum(recall) / 3)


def test_pearson_and_spearman_with_ties_match_the_hand_computed_figures():
    from peft_bench.tasks import REGRESSION

    assert ranks(SCORES) == [2.0, 3.5, 3.5, 5.0, 8.0, 8.0, 8.0, 1.0, 6.0]
    pearson = pearson_by_hand(SCORES, TARGETS)
    spearman = pearson_by_hand(ranks(SCORES), ranks(TARGETS))
    mse = sum((p - y) ** 2 for p, y in zip(SCORES, TARGETS, strict=True)) / len(SCORES)
    logits = torch.tensor(SCORES).unsqueeze(-1)  # the head's one output
    got = through_the_task(REGRESSION, 1, logits, torch.tensor(TARGETS))
    assert got["pearson"] == pytest.approx(pearson, abs=1e-5)
    assert got["spearman"] == pytest.approx(spearman, abs=1e-5)
    assert got["mse"] == pytest.approx(mse, rel=1e-6)
    assert spearman != pytest.approx(pearson, abs=0.01)  # the ranks matter: not Pearson again


# ---------------------------------------------------------------- collapsed predictions, baselines


def test_collapse_is_said_at_the_task_level_for_classes_and_for_constant_scores():
    from peft_bench.tasks import CLASSIFICATION, REGRESSION
    from peft_bench.tasks.classification import COLLAPSE_SHARE

    def said(task, k, logits, labels):
        spread = task.spread(k)
        task.update_spread(spread, logits, labels)
        return task.collapse_warning("test", spread)

    labels = torch.tensor([i % 2 for i in range(100)])
    all_one = said(CLASSIFICATION, 2, one_hot_logits([1] * 100, 2), labels)
    assert all_one.startswith("predictions on test are all one class: class 1 for 100 of 100 examples")
    nearly = [0] * 4 + [1] * 96
    assert "nearly all one class: class 1 for 96 of 100" in said(
        CLASSIFICATION, 2, one_hot_logits(nearly, 2), labels
    )
    spread_out = [0] * int(100 * (1 - COLLAPSE_SHARE) + 1) + [1] * 94
    assert said(CLASSIFICATION, 2, one_hot_logits(spread_out, 2), labels) is None
    # regression: a constant prediction has correlations 0 (not NaN) and is said
    targets = torch.tensor(TARGETS)
    constant = torch.full((len(TARGETS), 1), 2.5)
    figures = through_the_task(REGRESSION, 1, constant, targets)
    assert figures["pearson"] == figures["spearman"] == 0.0
    assert figures["mse"] == pytest.approx(sum((2.5 - y) ** 2 for y in TARGETS) / len(TARGETS))
    assert "predictions on test are nearly constant (standard deviation 0 " in said(
        REGRESSION, 1, constant, targets
    )
    assert said(REGRESSION, 1, torch.tensor(SCORES).unsqueeze(-1), targets) is None


def _constant_modules():
    """LoRA modules whose evaluation predicts one thing for every example: class 1 / the score 2.5."""
    from peft_bench.methods.lora import LoRAModule

    class ConstantClass(LoRAModule):
        def forward(self, batch):
            logits = super().forward(batch)
            return torch.zeros_like(logits).index_fill_(-1, torch.tensor([1]), 1.0)

    class ConstantScore(LoRAModule):
        def forward(self, batch):
            return torch.full_like(super().forward(batch), 2.5)

    return ConstantClass, ConstantScore


ConstantClassLoRA, ConstantScoreLoRA = _constant_modules()


def test_a_run_predicting_one_class_is_warned_and_scores_the_majority_baseline(tmp_path):
    # CoLA-like: 70% of the rows acceptable (class 1), the rest not
    rows = [{**r, "label": int(i % 10 < 7)} for i, r in enumerate(glue_rows("cola", 200))]
    files = {"train": jsonl(tmp_path / "train.jsonl", rows)}
    out = quick_run(
        tmp_path / "run",
        "dataset=cola",
        files_override(files),
        "method._target_=tests.test_glue.ConstantClassLoRA",
    )
    on_disk = results(tmp_path / "run")
    counts = on_disk["data"]["label_counts"]
    for split in ("validation", "test"):
        warning = f"predictions on {split} are all one class: class 1 for {sum(counts[split].values())} of"
        assert any(w.startswith(warning) for w in on_disk["warnings"]), on_disk["warnings"]
    # the majority class of train is 1: its baseline, by hand, on each split
    assert max(counts["train"], key=counts["train"].get) == "1"
    for split, prefix in (("validation", "val"), ("test", "test")):
        n1, n = counts[split].get("1", 0), sum(counts[split].values())
        base = on_disk["baseline"]
        assert base[f"{prefix}_acc"] == pytest.approx(n1 / n) and base[f"{prefix}_mcc"] == 0.0
        assert base[f"{prefix}_f1"] == pytest.approx(2 * n1 / (2 * n1 + (n - n1)))
        # a model predicting one class everywhere scores the majority rate: MCC says 0
        assert out[f"{prefix}_acc"] == pytest.approx(n1 / n) and out[f"{prefix}_mcc"] == 0.0


def test_a_regression_run_predicting_a_constant_records_correlations_0_and_warns(tmp_path):
    rows = glue_rows("stsb", 200)
    files = {"train": jsonl(tmp_path / "train.jsonl", rows)}
    out = quick_run(
        tmp_path / "run",
        "dataset=stsb",
        files_override(files),
        "method._target_=tests.test_glue.ConstantScoreLoRA",
    )
    on_disk = results(tmp_path / "run")
    assert on_disk["status"] == "completed"
    for prefix in ("val", "test"):
        assert on_disk[f"{prefix}_pearson"] == on_disk[f"{prefix}_spearman"] == 0.0
    said = [w for w in on_disk["warnings"] if "are nearly constant (standard deviation 0 " in w]
    assert len(said) == 2 and {w.split()[2] for w in said} == {"validation", "test"}
    # the mean-label baseline: correlations 0, the MSE of the train mean, by hand
    stats = on_disk["data"]["label_stats"]
    base = on_disk["baseline"]
    for split, prefix in (("validation", "val"), ("test", "test")):
        mean, std = stats["train"]["mean"], stats[split]["std"]
        assert base[f"{prefix}_pearson"] == base[f"{prefix}_spearman"] == 0.0
        # E[(y - m)^2] = var(y) + (mean(y) - m)^2
        assert base[f"{prefix}_mse"] == pytest.approx(std**2 + (stats[split]["mean"] - mean) ** 2, rel=1e-4)
    assert out["test_mse"] == pytest.approx(
        stats["test"]["std"] ** 2 + (stats["test"]["mean"] - 2.5) ** 2, rel=1e-4
    )
    answers = read_predictions(tmp_path / "run", on_disk["predictions"])  # the per-example answers
    assert (answers["prediction"] == 2.5).all() and len(answers["label"]) == on_disk["data"]["sizes"]["test"]
    assert ((answers["prediction"] - answers["label"]) ** 2).mean() == pytest.approx(
        out["test_mse"], rel=1e-5
    )


def test_baselines_at_the_task_level_are_the_train_majority_and_mean():
    from datasets import Dataset, DatasetDict

    from peft_bench.tasks import CLASSIFICATION, REGRESSION, task_for

    def data(train, val, test):
        return DatasetDict(
            {
                s: Dataset.from_dict({"labels": v})
                for s, v in zip(("train", "validation", "test"), (train, val, test), strict=True)
            }
        )

    # train's majority is 2 (of 3 classes); on validation 2 is a minority
    cls = CLASSIFICATION.baselines(data([2, 2, 2, 0, 1], [0, 0, 1, 2], [2, 2, 1, 0, 2]), 3)
    assert cls["test_mcc"] == cls["val_mcc"] == 0.0
    assert cls["test_acc"] == pytest.approx(3 / 5)  # the share right: 3 of the 5 test labels are class 2
    assert cls["val_recall"] == pytest.approx(1 / 3)
    two = CLASSIFICATION.baselines(data([0, 1, 1], [1, 1, 0, 0], [0, 0, 0, 1]), 2)
    assert two["val_acc"] == 0.5 and two["test_acc"] == 0.25 and two["test_f1"] == pytest.approx(2 / 5)
    # a tie in train: the lower class, every time
    assert CLASSIFICATION.baselines(data([1, 0], [0, 1, 1], [0]), 2)["val_acc"] == pytest.approx(1 / 3)
    reg = REGRESSION.baselines(data([1.0, 2.0, 6.0], [0.0, 3.0], [3.0]), 1)
    assert reg["val_mse"] == pytest.approx(((0 - 3) ** 2 + 0) / 2) and reg["test_mse"] == 0.0
    assert reg["val_pearson"] == reg["test_spearman"] == 0.0
    # MNLI's extra test split gets its baseline too
    mnli = task_for(compose(["model=tiny", "dataset=mnli"]).dataset)
    d = data([0, 0, 1], [0], [1])
    d["test_mismatched"] = Dataset.from_dict({"labels": [0, 2, 0, 0]})
    assert mnli.baselines(d, 3)["test_mismatched_mcc"] == 0.0


# ---------------------------------------------------------------- the primary metric selects


def test_the_primary_metric_is_the_checkpoint_monitor_and_the_tuning_objective(tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from peft_bench.tune import Study, TuneConfig

    seen = {}

    class Monitors(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            seen["checkpoint"] = [
                (c.monitor, c.mode) for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)
            ]
            seen["module"] = pl_module.monitor

    files = {"train": jsonl(tmp_path / "train.jsonl", glue_rows("mrpc", 160))}
    args = ["dataset=mrpc", files_override(files), "dataset.metric=mcc"]
    out = quick_run(tmp_path / "run", *args, "trainer.max_epochs=2", callbacks=[Monitors()])
    assert seen == {"checkpoint": [("val/mcc", "max")], "module": ("val/mcc", "max")}
    assert out["evaluated_checkpoint"].startswith("checkpoints/best-")  # val/mcc was logged and found
    study = Study([*QUICK, *args], ["lora"], TuneConfig(), tmp_path / "study", "k")
    assert (study.task.select_by, study.task.mode, study.task.monitor) == ("val_mcc", "max", "val/mcc")
    # a figure where lower is better turns the direction: the MSE of STS-B
    stsb = Study([*QUICK, "dataset=stsb", "dataset.metric=mse"], ["lora"], TuneConfig(), tmp_path / "s", "k")
    assert (stsb.task.select_by, stsb.task.mode) == ("val_mse", "min")
    # each GLUE config's own primary metric, unless dataset.metric names another
    cola = Study([*QUICK, "dataset=cola"], ["lora"], TuneConfig(), tmp_path / "c", "k")
    assert cola.task.select_by == "val_mcc"


# ---------------------------------------------------------------- hostile inputs


def pair_rows(n: int, label=lambda i: i % 2) -> list[dict]:
    return [
        {"sentence1": f"a {WORDS[i % 10]} {i}", "sentence2": f"b {WORDS[i % 7]} {i}", "label": label(i)}
        for i in range(n)
    ]


def nan_jsonl(path: Path) -> Path:
    rows = glue_rows("stsb", 60)
    lines = [json.dumps(r) for r in rows]
    lines[5] = lines[5].replace(f'"label": {rows[5]["label"]}', '"label": NaN')
    path.write_text("\n".join(lines) + "\n")
    return path


BAD_DATA = [  # (what, dataset, the train rows or a writer, the message)
    (
        "regression label as text",
        "stsb",
        lambda p: jsonl(
            p,
            [
                *glue_rows("stsb", 5),
                {"sentence1": "x", "sentence2": "y", "label": "high"},
                *glue_rows("stsb", 50, 10),
            ],
        ),
        "train.jsonl, row 6: label 'high' is not a finite number: a regression label "
        "(dataset.task=regression) is a real value; mend or drop that row",
    ),
    ("regression label NaN", "stsb", nan_jsonl, "train.jsonl, row 6: label nan is not a finite number"),
    (
        "pair file without its second text",
        "mrpc",
        lambda p: jsonl(p, [{"sentence1": f"a {i}", "label": i % 2} for i in range(60)]),
        "train.jsonl: no column 'sentence2' (columns: ['sentence1', 'label']); set dataset.text_pair_field=",
    ),
    (
        "label 2 in a 2-class pair set",
        "rte",
        lambda p: jsonl(p, [*pair_rows(40), {"sentence1": "q", "sentence2": "r", "label": 2}]),
        "train.jsonl, row 41: label 2 is outside [0, 2): labels must be integers 0..1 (dataset.num_labels=2)",
    ),
]


@pytest.mark.parametrize("what,name,write,message", BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_bad_glue_data_is_one_data_error_naming_it_and_nothing_is_cached(
    tmp_path, what, name, write, message
):
    train = write(tmp_path / "train.jsonl")
    with pytest.raises(DataError, match=re.escape(message)):
        datamodule(tmp_path, name, {"train": train})
    cache = tmp_path / "cache" / "tokenized"
    assert not cache.exists() or not any(cache.iterdir())


BAD_CONFIGS = [
    (
        ["dataset=mrpc", "dataset.data_files={train:'TRAIN',test_x:'TRAIN'}"],
        "dataset.data_files: unknown split(s) ['test_x']: the splits are train, validation, test "
        "(a test_<name> split is scored when dataset.extra_test_splits names it: "
        "dataset.extra_test_splits=[x])",
    ),
    (
        ["dataset=sst2", "dataset.metric=pearson"],
        "dataset.metric='pearson': valid values for task classification are ['acc', 'precision', 'recall', "
        "'f1', 'mcc'], or null for acc",
    ),
    (
        ["dataset=mrpc", "dataset.num_labels=1"],
        "dataset.num_labels=1: a classification task needs >= 2 classes (a real-valued label: "
        "dataset.task=regression dataset.num_labels=1)",
    ),
    (
        ["dataset=stsb", "dataset.metric=acc"],
        "dataset.metric='acc': valid values for task regression are ['pearson', 'spearman', 'mse']",
    ),
    (
        ["dataset=stsb", "dataset.num_labels=2"],
        "dataset.num_labels=2: task=regression predicts one value, set 1",
    ),
    (
        ["dataset=mnli"],
        "dataset.extra_test_splits=['mismatched']: local data_files have no test_mismatched: give it "
        "(dataset.data_files={train: ..., test_mismatched: ...}), or score test alone with "
        "dataset.extra_test_splits=[]",
    ),
    (
        ["dataset=mrpc", "dataset.text_pair_field=sentence1"],
        "dataset.text_field and dataset.text_pair_field are both 'sentence1': "
        "name a different column for each",
    ),
]


@pytest.mark.parametrize("overrides,message", BAD_CONFIGS, ids=[" ".join(c[0][1:]) for c in BAD_CONFIGS])
def test_bad_glue_settings_are_config_errors_before_any_work(tmp_path, overrides, message):
    from peft_bench.checks import check_config

    train = jsonl(tmp_path / "train.jsonl", pair_rows(20))
    overrides = [o.replace("TRAIN", str(train)) for o in overrides]
    if not any("data_files" in o for o in overrides):
        overrides.append(f"dataset.data_files={train}")
    with pytest.raises(ConfigError) as e:
        check_config(compose(["model=tiny", "logger=none", *overrides]))
    assert message in str(e.value)


def test_a_pair_data_error_on_the_command_line_is_one_line_and_overwrites_nothing(tmp_path):
    train = jsonl(tmp_path / "train.jsonl", [{"sentence1": f"a {i}", "label": i % 2} for i in range(60)])
    out = run_cli(
        [
            "model=tiny",
            "logger=none",
            "dataset=mrpc",
            f"dataset.data_files={train}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ]
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"peft_bench: error: data file {train}: no column 'sentence2'" in out.stderr
    assert "set dataset.text_pair_field=" in out.stderr
    assert results(tmp_path / "run")["status"] == "failed"
    assert train.read_text().count("\n") == 60  # the input is untouched


# ---------------------------------------------------------------- a pair run resumes exactly


def test_a_pair_run_killed_after_a_checkpoint_resumes_step_for_step(tmp_path):
    import lightning as L

    class Record(L.Callback):
        def __init__(self, crash_at=None):
            self.steps, self.crash_at = [], crash_at

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.steps.append((trainer.global_step, float(outputs["task_loss"])))
            if trainer.global_step == self.crash_at:
                raise RuntimeError("power cut")

    files = {"train": jsonl(tmp_path / "train.jsonl", glue_rows("rte", 100))}
    args = [
        "dataset=rte",
        files_override(files),
        "trainer.limit_train_batches=null",
        "trainer.max_epochs=2",
        "checkpoint_every_n_steps=6",
        "method.lr=3e-3",
    ]
    reference, crashed, resumed = Record(), Record(crash_at=15), Record()
    ref = quick_run(tmp_path / "reference", *args, callbacks=[reference])
    with pytest.raises(RuntimeError, match="power cut"):
        quick_run(tmp_path / "run", *args, callbacks=[crashed])
    out = quick_run(tmp_path / "run", *args, callbacks=[resumed])
    assert ref["optimizer_steps"] == out["optimizer_steps"] == 20  # 80 train pairs, batches of 8, 2 epochs
    assert out["resumed_from"]["step"] == 12
    assert resumed.steps == reference.steps[12:]  # the same pairs, losses and dropout, step for step
    assert out["val_acc"] == pytest.approx(ref["val_acc"], abs=1e-6)
    assert out["test_acc"] == pytest.approx(ref["test_acc"], abs=1e-6)


def test_early_stopping_watches_the_datasets_primary_metric(tmp_path):
    """trainer.early_stopping_patience stops on val/<dataset.metric>, in the task's direction: a metric
    (mse: lower is better) is watched with mode min and the patience asked."""
    import lightning as L

    seen = {}

    class Spy(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            from lightning.pytorch.callbacks import EarlyStopping

            stop = [c for c in trainer.callbacks if isinstance(c, EarlyStopping)]
            seen["stop"] = [(c.monitor, c.mode, c.patience) for c in stop]

    from peft_bench.train import run

    train = jsonl(tmp_path / "train.jsonl", glue_rows("stsb", 160))
    cfg = compose(
        [
            "model=tiny",
            "logger=none",
            "dataset=stsb",
            files_override({"train": train}),
            "dataset.metric=mse",
            "trainer.early_stopping_patience=2",
            "trainer.max_epochs=1",
        ],
        tmp_path / "run",
    )
    run(cfg, callbacks=[Spy()])
    assert seen["stop"] == [("val/mse", "min", 2)]
    from peft_bench.checks import check_config

    with pytest.raises(ConfigError, match=r"trainer.early_stopping_patience=0: must be >= 1"):
        check_config(compose(["model=tiny", "trainer.early_stopping_patience=0"]))
