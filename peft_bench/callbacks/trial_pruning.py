"""Optuna's pruner fed from inside a run: the monitored validation metric after every validation, the run
stopped when the pruner says its trial trails. Not optuna-integration's PyTorchLightningPruningCallback:
that one reports at step = epoch, and a trial validates several times in an epoch (tune.eval_every)."""

from __future__ import annotations

import math

import lightning as L

from peft_bench.errors import TrialStopped


class ReportToPruner(L.Callback):
    """Reports the monitored validation metric to the trial after every validation during training and
    stops the run (TrialStopped) when the pruner says the trial trails. A NaN is not reported: a diverged
    trial fails on its own, the study goes on."""

    def __init__(self, trial, monitor: str):
        self.trial, self.monitor = trial, monitor

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        self.trial.report(float(value), trainer.global_step)
        if self.trial.should_prune():
            raise TrialStopped(
                f"pruned at optimizer step {trainer.global_step}: {self.monitor} {float(value):.4f} "
                "trails the median of the trials before it"
            )
