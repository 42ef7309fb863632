"""Sequence regression (num_labels 1, e.g. STS-B's similarity from 0 to 5): the head's one output, the
mean squared error (the model's own loss for one label), scored by Pearson and Spearman correlation and
MSE. A correlation of constant predictions is undefined: it is recorded as 0 (as for the mean-label
baseline), and nearly constant predictions are said."""

from __future__ import annotations

import math

from peft_bench.tasks.base import Task

# predictions whose standard deviation is below this share of the labels' are "(nearly) constant"
CONSTANT_SHARE = 0.01


def prediction_spread():
    """A torchmetrics Metric of the predictions' and labels' standard deviations over a split."""
    import torch
    from torchmetrics import Metric

    class PredictionSpread(Metric):
        full_state_update = False

        def __init__(self):
            super().__init__()
            for name in ("n", "p", "pp", "y", "yy"):
                self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

        def update(self, preds, labels) -> None:
            p, y = preds.detach().double().flatten(), labels.detach().double().flatten()
            self.n += p.numel()
            self.p, self.pp = self.p + p.sum(), self.pp + (p * p).sum()
            self.y, self.yy = self.y + y.sum(), self.yy + (y * y).sum()

        def compute(self):
            n = max(float(self.n), 1.0)
            std = lambda s, ss: math.sqrt(max(float(ss) / n - (float(s) / n) ** 2, 0.0))  # noqa: E731
            return {"n": int(self.n), "pred_std": std(self.p, self.pp), "label_std": std(self.y, self.yy)}

    return PredictionSpread()


class RegressionTask(Task):
    def metrics(self, num_labels: int | None):
        from torchmetrics import MeanSquaredError, MetricCollection
        from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

        return MetricCollection(
            {"pearson": PearsonCorrCoef(), "spearman": SpearmanCorrCoef(), "mse": MeanSquaredError()}
        )

    def update(self, metrics, logits, labels) -> None:
        metrics.update(logits.squeeze(-1).float(), labels.float())

    def example_columns(self, logits, labels) -> dict:
        return {"label": labels.float(), "prediction": logits.squeeze(-1).float()}

    def resampled(self, key: str, columns: dict, idx, num_labels: int | None):
        """Pearson, Spearman (average ranks of ties, within each resample) and MSE of each resample; a
        correlation of constant predictions is 0, as the run records it."""
        import numpy as np
        from scipy.stats import rankdata

        p, y = columns["prediction"].astype(np.float64)[idx], columns["label"].astype(np.float64)[idx]
        if key == "mse":
            return ((p - y) ** 2).mean(1)
        if key == "spearman":
            p, y = rankdata(p, axis=1), rankdata(y, axis=1)
        elif key != "pearson":
            raise KeyError(key)
        p, y = p - p.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
        den = np.sqrt((p * p).sum(1) * (y * y).sum(1))
        return np.divide((p * y).sum(1), den, out=np.zeros(len(p)), where=den > 0)

    def compute(self, metrics) -> dict:
        import warnings

        import torch

        with warnings.catch_warnings():  # torchmetrics warns of a constant input; collapse_warning says it
            warnings.simplefilter("ignore")
            out = metrics.compute()
        return {k: torch.zeros_like(v) if k != "mse" and not torch.isfinite(v) else v for k, v in out.items()}

    def spread(self, num_labels: int | None):
        return prediction_spread()

    def update_spread(self, spread, logits, labels) -> None:
        spread.update(logits.squeeze(-1), labels)

    def collapse_warning(self, split: str, spread) -> str | None:
        s = spread.compute()
        if not s["n"] or s["pred_std"] >= CONSTANT_SHARE * s["label_std"]:
            return None
        return (
            f"predictions on {split} are nearly constant (standard deviation {s['pred_std']:.3g} against "
            f"the labels' {s['label_std']:.3g}, {s['n']:,} examples): the model has not learnt the "
            "labels' scale, and correlations of so small a spread say little (of constant ones: 0)"
        )

    def trivial_prediction(self, train_labels: list):
        """Always the training split's mean label."""
        return sum(train_labels) / len(train_labels)

    def predictions(self, constant_logits, num_labels: int | None):
        return constant_logits.squeeze(-1).float()

    def trivial_figures(self, metrics) -> dict[str, float]:
        figures = super().trivial_figures(metrics)
        return {**figures, "pearson": 0.0, "spearman": 0.0}  # of a constant: undefined (not rounding's 1e-7)
