"""Sequence classification, one text or a pair of texts (dataset.text_pair_field): argmax of the head's
logits, cross-entropy (the model's own loss), scored by accuracy, precision, recall, F1 and Matthews
correlation; a split predicted (nearly) all one class is said, and the majority class is the baseline."""

from __future__ import annotations

from peft_bench.tasks.base import Task

# a split whose most predicted class covers at least this share of its examples is "(nearly) all one
# class": accuracy and F1 then say little (docs/data.md, "Collapsed predictions")
COLLAPSE_SHARE = 0.95


def class_kind(num_labels: int) -> dict:
    return (
        {"task": "binary"}
        if num_labels == 2
        else {"task": "multiclass", "num_classes": num_labels, "average": "macro"}
    )


def predicted_classes(num_labels: int):
    """A torchmetrics Metric counting the predicted classes of a split (summed across processes)."""
    import torch
    from torchmetrics import Metric

    class PredictedClasses(Metric):
        full_state_update = False

        def __init__(self):
            super().__init__()
            self.add_state("counts", default=torch.zeros(num_labels, dtype=torch.long), dist_reduce_fx="sum")

        def update(self, preds, labels) -> None:
            self.counts += torch.bincount(preds.flatten().long(), minlength=num_labels)[:num_labels]

        def compute(self):
            return self.counts

    return PredictedClasses()


def matthews(num_labels: int):
    """Matthews correlation from the split's confusion matrix (summed across processes), 0 where it is
    undefined (every prediction, or every label, one class), as scikit-learn and GLUE's scorer give it:
    torchmetrics' MatthewsCorrCoef gives constant predictions a small non-zero value there (measured:
    0.030 on 200 demo sentences predicted all one class)."""
    import torch
    from torchmetrics import Metric

    class Matthews(Metric):
        full_state_update = False
        higher_is_better = True

        def __init__(self):
            super().__init__()
            self.add_state(
                "confusion",
                default=torch.zeros(num_labels, num_labels, dtype=torch.float64),
                dist_reduce_fx="sum",
            )

        def update(self, preds, labels) -> None:
            index = labels.flatten().long() * num_labels + preds.flatten().long()
            self.confusion += torch.bincount(index, minlength=num_labels**2).reshape(num_labels, num_labels)

        def compute(self):
            c = self.confusion
            s, correct = c.sum(), c.trace()
            t, p = c.sum(1), c.sum(0)  # per class: true, predicted
            denominator = torch.sqrt((s * s - p @ p) * (s * s - t @ t))
            mcc = (correct * s - t @ p) / denominator if denominator > 0 else torch.zeros((), dtype=c.dtype)
            return mcc.float()

    return Matthews()


class ClassificationTask(Task):
    def metrics(self, num_labels: int | None):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import Accuracy, F1Score, Precision, Recall

        kind = class_kind(num_labels)
        return MetricCollection(
            {
                # accuracy is the share right over every example (GLUE's MNLI accuracy), never a macro
                # average of per-class recalls
                "acc": Accuracy(**{**kind, "average": "micro"}) if num_labels > 2 else Accuracy(**kind),
                "precision": Precision(**kind),
                "recall": Recall(**kind),
                "f1": F1Score(**kind),
                "mcc": matthews(num_labels),
            }
        )

    def update(self, metrics, logits, labels) -> None:
        metrics.update(logits.argmax(-1), labels)

    def example_columns(self, logits, labels) -> dict:
        return {"label": labels, "prediction": logits.argmax(-1)}

    def correct(self, key: str, columns: dict):
        return columns["prediction"] == columns["label"] if key == "acc" else None

    def resampled(self, key: str, columns: dict, idx, num_labels: int | None):
        """From each resample's confusion matrix: accuracy; precision, recall and F1 of class 1 (two
        classes) or their macro average over the classes present in labels or predictions (torchmetrics'
        macro); Matthews correlation (0 where undefined)."""
        import numpy as np

        k = num_labels or 2
        code = columns["label"].astype(np.int64) * k + columns["prediction"].astype(np.int64)
        rows = np.arange(len(idx))[:, None] * k * k
        c = np.bincount((rows + code[idx]).ravel(), minlength=len(idx) * k * k).reshape(-1, k, k)
        c = c.astype(np.float64)  # [resample, true, predicted]
        total, tp = c.sum((1, 2)), np.diagonal(c, axis1=1, axis2=2)
        true, pred = c.sum(2), c.sum(1)
        ratio = lambda a, b: np.divide(a, b, out=np.zeros_like(a), where=b > 0)  # noqa: E731
        if key == "acc":
            return tp.sum(1) / total
        if key == "mcc":
            num = tp.sum(1) * total - (true * pred).sum(1)
            den = np.sqrt((total**2 - (pred * pred).sum(1)) * (total**2 - (true * true).sum(1)))
            return ratio(num, den)
        per_class = {
            "precision": ratio(tp, pred),
            "recall": ratio(tp, true),
            "f1": ratio(2 * tp, true + pred),
        }[key]
        if k == 2:
            return per_class[:, 1]
        present = (true + pred) > 0
        return (per_class * present).sum(1) / np.maximum(present.sum(1), 1)

    def spread(self, num_labels: int | None):
        return predicted_classes(num_labels)

    def update_spread(self, spread, logits, labels) -> None:
        spread.update(logits.argmax(-1), labels)

    def collapse_warning(self, split: str, spread) -> str | None:
        counts = [int(c) for c in spread.compute().tolist()]
        n = sum(counts)
        if not n:
            return None
        top = max(range(len(counts)), key=counts.__getitem__)
        if counts[top] / n < COLLAPSE_SHARE:
            return None
        return (
            f"predictions on {split} are {'all' if counts[top] == n else 'nearly all'} one class: class "
            f"{top} for {counts[top]:,} of {n:,} examples ({counts[top] / n:.1%}); accuracy and F1 then "
            "reward the majority class (MCC does not): compare with the majority baseline"
        )

    def trivial_prediction(self, train_labels: list):
        """Always the training split's most frequent class (ties: the lower class)."""
        return max(sorted(set(train_labels)), key=train_labels.count)

    def predictions(self, constant_logits, num_labels: int | None):
        return constant_logits.squeeze(-1).long()
