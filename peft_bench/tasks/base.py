"""The task object every task kind subclasses, and the metrics it may name. A task owns everything
that differs between kinds of task: its dataset schema and datamodule, the model's Auto class and PEFT
task type, its loss (the model's own: cross-entropy, MSE for one output, next-token), how a batch
updates its metrics, the primary metric and its direction (named by the dataset config), the
results.json keys it adds and the report's columns. Nothing else tests a task's name or a metric's.
Heavy libraries are imported only where they are needed, so the report reads a task without torch."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Metric:
    key: str  # in results.json keys (val_<key>, test_<key>) and logged names (val/<key>)
    label: str  # in words
    header: str  # in a table header
    higher_is_better: bool = True
    bounded: tuple[float, float] | None = (0.0, 1.0)  # its range, where it has one


METRICS = {
    m.key: m
    for m in (
        Metric("acc", "accuracy", "Acc"),
        Metric("precision", "precision", "Precision"),
        Metric("recall", "recall", "Recall"),
        Metric("f1", "F1", "F1"),
        Metric("mcc", "Matthews correlation", "MCC", bounded=(-1.0, 1.0)),
        Metric("pearson", "Pearson correlation", "Pearson", bounded=(-1.0, 1.0)),
        Metric("spearman", "Spearman correlation", "Spearman", bounded=(-1.0, 1.0)),
        Metric("mse", "mean squared error", "MSE", higher_is_better=False, bounded=None),
        Metric("ppl", "perplexity", "PPL", higher_is_better=False, bounded=None),
        Metric("em", "exact match", "EM"),
    )
}


@dataclass(frozen=True)
class Task:
    name: str  # dataset.task
    label: str  # in words, for reports
    schema: str  # the dataset schema's name in the ConfigStore (group dataset)
    datamodule: str  # its LightningDataModule (the schema's _target_)
    auto_class_name: str  # transformers Auto class with this task's head
    peft_task_type: str  # peft.TaskType member name
    metric_keys: tuple[str, ...]  # every metric it computes, in METRICS
    default_metric: str  # the primary metric when the dataset config names none
    shown: tuple[str, ...]  # the metrics of the report's tables, beside the primary one
    has_classes: bool  # labels with a majority class (a chance level to show)
    spec: str  # number format of its scores
    trains_head: bool  # a new task head, trained in full beside the adapters
    length_key: str  # the dataset key that caps a sequence's tokens
    models_hint: str  # the model options that have this head
    # the method comparison's columns of this task beyond its metrics: (header, results.json key, dotted
    # for a nested one, number format)
    figures: tuple[tuple[str, str, str], ...] = field(default=())
    # bound to a dataset config by task_for: its primary metric and its extra test splits
    primary: str | None = None
    extra_tests: tuple[str, ...] = field(default=())
    reported: tuple[str, ...] = field(default=())  # dataset.report_metrics

    # ------------------------------------------------------------------ the primary metric

    def bind(self, dataset) -> Task:
        """This task as a dataset config sets it: its primary metric (dataset.metric) and the extra
        labelled test splits it scores (dataset.extra_test_splits, e.g. MNLI's mismatched)."""
        metric = getattr(dataset, "metric", None) or self.default_metric
        extra = tuple(getattr(dataset, "extra_test_splits", None) or ())
        reported = tuple(getattr(dataset, "report_metrics", None) or ())
        return replace(self, primary=metric, extra_tests=extra, reported=reported)

    @property
    def key(self) -> str:
        return self.primary or self.default_metric

    @property
    def metric(self) -> Metric:
        return METRICS[self.key]

    @property
    def higher_is_better(self) -> bool:
        return self.metric.higher_is_better

    @property
    def mode(self) -> str:
        return "max" if self.higher_is_better else "min"

    def better(self, a: float, b: float) -> bool:
        return a > b if self.higher_is_better else a < b

    @property
    def monitor(self) -> str:  # the logged validation metric: best checkpoint, early stopping, pruner
        return f"val/{self.key}"

    @property
    def select_by(self) -> str:  # the validation figure a trial or a method's best setting is chosen by
        return f"val_{self.key}"

    @property
    def score(self) -> str:  # the primary test figure of a run
        return f"test_{self.key}"

    @property
    def score_label(self) -> str:
        return f"test {self.metric.label}"

    @property
    def select_label(self) -> str:
        return f"val {self.metric.label}"

    @property
    def curve_metric(self) -> str:  # the validation metric of the training-curve plot
        return self.monitor

    @property
    def columns(self) -> tuple[str, ...]:
        """The metrics a table shows: the primary one first, then the task's usual ones."""
        return tuple(dict.fromkeys((self.key, *self.shown)))

    @property
    def table_scores(self) -> tuple[str, ...]:
        """The test keys a benchmark table shows for this dataset (dataset.report_metrics, else the primary
        metric, on every test split): the dataset's score in the table's average is their mean."""
        metrics = self.reported or (self.key,)
        return tuple(f"{s}_{k}" for s in self.test_splits for k in metrics)

    @property
    def test_splits(self) -> tuple[str, ...]:
        """The labelled splits scored at test time: test, and test_<name> for each extra one."""
        return ("test", *(f"test_{x}" for x in self.extra_tests))

    @property
    def val_scores(self) -> tuple[str, ...]:  # results.json keys of the validation columns
        return tuple(f"val_{k}" for k in self.columns)

    @property
    def test_scores(self) -> tuple[str, ...]:
        return tuple(f"{s}_{k}" for s in self.test_splits for k in self.columns)

    @property
    def comparison_scores(self) -> tuple[str, ...]:  # the test figures of the report's comparison
        return self.test_scores

    def result_keys(self) -> tuple[str, ...]:
        """Every score key this task may add to results.json (merged_ ones: with the adapter folded in)."""
        splits = ("val", *self.test_splits)
        keys = tuple(f"{s}_{k}" for s in splits for k in self.metric_keys)
        return keys + tuple(f"merged_{k}" for k in keys if k.startswith("test"))

    # ------------------------------------------------------------------ the model

    def auto_class(self):
        import transformers

        return getattr(transformers, self.auto_class_name)

    def task_type(self):
        from peft import TaskType

        return getattr(TaskType, self.peft_task_type)

    # ------------------------------------------------------------------ evaluation

    def metrics(self, num_labels: int | None):
        """The torchmetrics collection a split is scored with (keys: metric_keys)."""
        raise NotImplementedError

    def update(self, metrics, logits, labels) -> None:
        """Feed one batch's logits and labels to the metrics."""
        raise NotImplementedError

    def evaluate(self, module, batch: dict, metrics, split: str):
        """One evaluation batch of `split` (val, test, test_<name>): the model's output fed to the metrics.
        Returns the logits (for the spread) and the batch's per-example columns where the batch carries
        its examples' rows (test), else None."""
        logits = module(batch)
        self.update(metrics, logits, batch["labels"])
        columns = self.example_columns(logits.detach(), batch["labels"]) if "example" in batch else None
        return logits, columns

    def before_training(self, module, datamodule) -> None:
        """Raise what would make this run's scores wrong and can be known before it trains (generation:
        generate parts from the forward); every fit start calls it."""

    def probe(self, module, datamodule) -> dict | None:
        """A figure of the model taken before training and again once trained (generation: the loss on a
        reference text, whose rise is forgetting); None for a task without one."""
        return None

    def probe_results(self, before: dict, after: dict) -> dict:
        """results.json's keys from the probe before and after training."""
        return {}

    def correct(self, key: str, columns: dict):
        """Per example, whether the answer was right, where metric `key` is the share right (McNemar
        compares two runs on it); None for any other metric."""
        return None

    def example_columns(self, logits, labels) -> dict:
        """One test batch's columns of predictions.parquet, one value an example (tensors): the label and
        what the model answered."""
        raise NotImplementedError

    def resampled(self, key: str, columns: dict, idx, num_labels: int | None):
        """Metric `key` of a split's predictions.parquet columns (numpy), once per row of `idx` (resamples
        × examples: the rows of each resample; arange(n)[None] for the split itself): an array, one
        figure per resample, as the run's metrics compute it. KeyError for a metric it cannot compute."""
        raise KeyError(key)

    def compute(self, metrics) -> dict:
        """The split's figures, from its collection."""
        return metrics.compute()

    def spread(self, num_labels: int | None):
        """A metric that tracks what the model predicts across a split (to see collapsed predictions),
        or None for a task without one."""
        return None

    def update_spread(self, spread, logits, labels) -> None:
        pass

    def collapse_warning(self, split: str, spread) -> str | None:
        """A sentence when a split's predictions are (nearly) all one class or one value."""
        return None

    def trivial_prediction(self, train_labels: list):
        """The constant a trivial predictor answers, from the training labels (None: the task has none)."""
        return None

    def trivial_figures(self, metrics) -> dict[str, float]:
        """The trivial predictor's figures, from its filled collection."""
        return {k: float(v) for k, v in self.compute(metrics).items()}

    def baselines(self, data, num_labels: int | None) -> dict[str, float]:
        """The scores of the trivial predictor (the training split's majority class, or its mean) on the
        validation and test splits, as {val_<metric>: value, test_<metric>: ...}; {} where none."""
        import torch

        train = list(data["train"]["labels"]) if "labels" in data["train"].column_names else []
        constant = self.trivial_prediction(train) if train else None
        if constant is None:
            return {}
        out = {}
        for split in ("validation", *self.test_splits):
            if split not in data or not len(data[split]):
                continue
            labels = torch.tensor(list(data[split]["labels"]))
            logits = torch.full((len(labels), 1), float(constant))
            metrics = self.metrics(num_labels)
            metrics.update(self.predictions(logits, num_labels), labels)
            prefix = "val" if split == "validation" else split
            out.update({f"{prefix}_{k}": v for k, v in self.trivial_figures(metrics).items()})
        return out

    def predictions(self, constant_logits, num_labels: int | None):
        """What the metrics are fed for a constant (one column of the constant per example)."""
        return constant_logits.squeeze(-1)


def column(key: str) -> str:
    """A score key as a table header: val_f1 -> Val F1, test_mismatched_acc -> Test mismatched Acc."""
    parts = key.split("_")
    metric = METRICS.get(parts[-1])
    header = metric.header if metric else parts[-1].title()
    return " ".join([parts[0].title(), *parts[1:-1], header])


def token_nll(logits, labels):
    """Per sequence: the summed next-token NLL of its scored tokens (labels not -100), and their count."""
    import torch.nn.functional as F

    target = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, ignore_index=-100, reduction="none")
    return nll.double().sum(-1), (target != -100).sum(-1)


def resampled_ppl(columns: dict, idx):
    """Perplexity of each resample of sequences: exp(its summed NLL / its scored tokens)."""
    import numpy as np

    return np.exp(columns["nll"][idx].sum(1) / np.maximum(columns["tokens"][idx].sum(1), 1))
