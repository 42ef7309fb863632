"""The LightningModule every method shares: the training step, optimisation, metrics and the
divergence check. A method subclass only says how to turn the pretrained backbone into the model it
trains (timing, throughput and latency live in callbacks/run_stats.py)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection
from transformers import get_linear_schedule_with_warmup

from peft_bench.config import DatasetConfig, MethodConfig, ModelConfig
from peft_bench.errors import DivergedError
from peft_bench.models import load_backbone
from peft_bench.tasks import get_task


class BenchModule(L.LightningModule):
    def __init__(
        self, method: MethodConfig, model: ModelConfig, dataset: DatasetConfig, accelerator: str = "cpu"
    ):
        """`accelerator`: the device type the run trains on ("cpu", "cuda", "mps"), decided once by the
        run (train.device_type), so a method that places weights itself (4-bit loading) agrees with it."""
        super().__init__()
        self.method_cfg, self.model_cfg, self.task = method, model, get_task(dataset.task)
        self.accelerator_type = accelerator
        self.num_labels = getattr(dataset, "num_labels", None)
        self.model = self.build_model(self.load_backbone())
        self.model.train()  # from_pretrained returns eval mode, and Lightning keeps the mode it finds
        metrics = self.task.metrics(self.num_labels)
        self.monitor = (self.task.monitor, self.task.mode)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        # Checkpoints hold the trainable weights only; the frozen base comes from `pretrained`.
        self.strict_loading = False
        self._finite: torch.Tensor | None = (
            None  # all training losses finite since the last check (accelerators)
        )

    # ------------------------------------------------------------------ what a method defines

    defer_finite_check: bool | None = None  # None: check each step's loss on CPU, every N steps elsewhere
    mergeable = False  # True where the adapter folds into the base weights (merged inference)
    evaluate_best = True  # validate/test the best checkpoint by val F1; False: the final weights

    def load_backbone(self) -> nn.Module:
        """The pretrained (or randomly initialised) model with its task head."""
        return load_backbone(self.model_cfg, self.task, self.num_labels)

    def build_model(self, backbone: nn.Module) -> nn.Module:
        """The model to train, built from the pretrained backbone (adapters, freezing, ...)."""
        raise NotImplementedError

    def extra_losses(self) -> dict[str, torch.Tensor]:
        """Regularisers added to the task loss, by name (each is logged apart)."""
        return {}

    def method_results(self) -> dict:
        """The method's own figures for results.json."""
        return {}

    def after_training(self) -> dict | None:
        """Change the trained model before its final evaluation (one-shot pruning): the method's figures
        from before the change (train.py evaluates again and keeps both), or None if nothing changed."""
        return None

    def export(self, run_dir: Path) -> dict:
        """Write the trained weights a user would ship (e.g. the adapter); returns their paths."""
        return {}

    def merged(self):
        """Context in which the adapter is folded into the base weights (no-op where not mergeable)."""
        return nullcontext()

    # ------------------------------------------------------------------ parameters

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total); PEFT's count knows that a 4-bit weight packs two values per byte."""
        if hasattr(self.model, "get_nb_trainable_parameters"):
            return self.model.get_nb_trainable_parameters()
        params = list(self.model.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """The method's trained adapter weights by name (as in the checkpoint's state_dict), for sparsity
        figures and pruning; {} for a method without one. Found through PEFT's own bookkeeping: every
        parameter a tuner layer keeps under its `adapter_layer_names` (LoRA's A, B and DoRA magnitude,
        HiRA's A and B, VeRA's vectors, ...), not by guessing from names."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        ids = set()
        for module in self.model.modules():
            if isinstance(module, BaseTunerLayer):
                for attr in module.adapter_layer_names:
                    container = getattr(module, attr, None)
                    for value in container.values() if hasattr(container, "values") else []:
                        ids.update(
                            id(p) for p in (value.parameters() if isinstance(value, nn.Module) else [value])
                        )
        return {n: p for n, p in self.named_parameters() if id(p) in ids and p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.check_finite()  # never keep non-finite weights as a checkpoint to resume from
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in trainable or not k.startswith("model.")
        }
        # RNG streams (dropout), so a resumed run continues exactly as an uninterrupted one would
        checkpoint["rng"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng = checkpoint.get("rng")
        if rng is not None and self.trainer.state.fn == "fit":  # resuming training, not evaluating
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

    # ------------------------------------------------------------------ steps

    def forward(self, batch: dict) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.model(**inputs).logits

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        task_loss = loss = self.model(**batch).loss
        self.log(
            "train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["labels"])
        )
        for name, term in self.extra_losses().items():
            self.log(f"train/{name}", term, on_step=True, on_epoch=True)
            loss = loss + term
        finite = torch.isfinite(loss.detach())
        defer = self.defer_finite_check if self.defer_finite_check is not None else loss.device.type != "cpu"
        # on an accelerator a per-step check would stall the queue: gather on the device, check now and then
        if defer:
            self._finite = finite if self._finite is None else self._finite & finite
        elif not finite:  # free on the host: stop before the optimizer writes non-finite weights
            raise DivergedError(f"training loss became {loss.item()} at optimizer step {self.global_step}")
        return {"loss": loss, "task_loss": task_loss.detach()}  # the task loss alone: per-epoch figures

    def check_finite(self) -> None:
        """Raise if any training loss since the last check was non-finite (one host sync)."""
        if self._finite is not None and not bool(self._finite):
            raise DivergedError(
                f"training loss became non-finite at or before optimizer step {self.global_step} "
                f"(checked every trainer.log_every_n_steps={self.trainer.log_every_n_steps} "
                "steps on an accelerator)"
            )
        self._finite = None

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self._finite is not None and (batch_idx + 1) % self.trainer.log_every_n_steps == 0:
            self.check_finite()

    def update_metrics(self, metrics: MetricCollection, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.task.update(metrics, logits, labels)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch)
        self.update_metrics(self.val_metrics, logits, batch["labels"])

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.update_metrics(self.test_metrics, self(batch), batch["labels"])

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    # ------------------------------------------------------------------ checks at the boundaries

    def on_validation_epoch_start(self) -> None:
        self.check_finite()  # before validation picks a checkpoint to keep

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()

    def on_train_epoch_end(self) -> None:
        self.check_finite()

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": self.method_cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        fused = all(p.is_cuda for p in decay + no_decay)
        optimizer = torch.optim.AdamW(groups, lr=self.method_cfg.lr, fused=fused or None)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = get_linear_schedule_with_warmup(
            optimizer, int(self.method_cfg.warmup_ratio * total), total
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
