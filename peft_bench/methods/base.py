"""The LightningModule every method shares: optimisation, metrics, timing and the run's figures.
A method subclass only says how to turn the pretrained backbone into the model it trains."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import Accuracy, F1Score, Precision, Recall
from torchmetrics.text import Perplexity
from transformers import get_linear_schedule_with_warmup

from peft_bench.config import DatasetConfig, DivergedError, MethodConfig, ModelConfig
from peft_bench.flops import TrainFlops, gemm_peak
from peft_bench.models import load_backbone


class BenchModule(L.LightningModule):
    def __init__(self, method: MethodConfig, model: ModelConfig, dataset: DatasetConfig):
        super().__init__()
        self.method_cfg, self.model_cfg, self.task = method, model, dataset.task
        self.num_labels = getattr(dataset, "num_labels", None)
        self.model = self.build_model(self.load_backbone())
        self.model.train()  # from_pretrained returns eval mode, and Lightning keeps the mode it finds
        if self.task == "causal_lm":
            # token-weighted over the whole split: exp(total NLL / predicted tokens)
            metrics = MetricCollection({"ppl": Perplexity(ignore_index=-100)})
            self.monitor = ("val/ppl", "min")
        else:
            kind = {"task": "binary"} if self.num_labels == 2 else {
                "task": "multiclass", "num_classes": self.num_labels, "average": "macro"}
            metrics = MetricCollection({"acc": Accuracy(**kind), "precision": Precision(**kind),
                                        "recall": Recall(**kind), "f1": F1Score(**kind)})
            self.monitor = ("val/f1", "max")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        # Checkpoints hold the trainable weights only; the frozen base comes from `pretrained`.
        self.strict_loading = False
        self.epoch_times: list[float] = []
        self.epoch_train_loss: list[float] = []
        self.infer_seconds = 0.0
        self.infer_examples = 0
        self.examples_seen = 0
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.long), persistent=False)  # no host sync
        self.flops: TrainFlops | None = None
        self.train_flops = 0  # model FLOPs of the training steps (peft_bench.flops), counted on the host
        self.fit_val_seconds = 0.0  # validation inside training epochs: not training compute
        # A resumed run's totals include the time before its checkpoint (restored by on_load_checkpoint)
        self.prior = {"train_time_s": 0.0, "train_compute_s": 0.0}
        self._fit_start: float | None = None
        self._epoch_start: float | None = None  # set while a training epoch runs
        self.first_batch_at: float | None = None  # perf_counter at the first training step
        self.first_batch_wall: float | None = None  # ... and wall-clock time (against the process start)
        self._finite: torch.Tensor | None = None  # all training losses finite since the last check (accelerators)

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

    def after_training(self) -> bool:
        """Change the trained model before its final evaluation (one-shot pruning); True if it did."""
        return False

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

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.check_finite()  # never keep non-finite weights as a checkpoint to resume from
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if k in trainable or not k.startswith("model.")}
        # RNG streams (dropout), so a resumed run continues exactly as an uninterrupted one would
        checkpoint["rng"] = {"torch": torch.get_rng_state(),
                             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        # what the run has done so far, so a resumed run reports the whole run's time, examples and FLOPs
        now = time.perf_counter()
        checkpoint["peft_bench_progress"] = {
            "train_time_s": self.prior["train_time_s"] + (now - self._fit_start if self._fit_start else 0.0),
            "train_compute_s": self.compute_seconds(), "examples_seen": self.examples_seen,
            "tokens_seen": int(self.tokens_seen), "train_flops": self.train_flops}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng = checkpoint.get("rng")
        if rng is not None and self.trainer.state.fn == "fit":  # resuming training, not evaluating
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        progress = checkpoint.get("peft_bench_progress")
        if progress is not None and self.trainer.state.fn == "fit":
            self.prior = {k: progress[k] for k in ("train_time_s", "train_compute_s")}
            self.examples_seen, self.train_flops = progress["examples_seen"], progress["train_flops"]
            self.tokens_seen.fill_(progress["tokens_seen"])

    # ------------------------------------------------------------------ steps

    def forward(self, batch: dict) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.model(**inputs).logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.examples_seen += len(batch["labels"])
        self.tokens_seen += batch["attention_mask"].sum()
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["labels"]))
        for name, term in self.extra_losses().items():
            self.log(f"train/{name}", term, on_step=True, on_epoch=True)
            loss = loss + term
        finite = torch.isfinite(loss.detach())
        defer = self.defer_finite_check if self.defer_finite_check is not None else loss.device.type != "cpu"
        if defer:  # on an accelerator a per-step check would stall the queue: gather on the device, check now and then
            self._finite = finite if self._finite is None else self._finite & finite
        elif not finite:  # free on the host: stop before the optimizer writes non-finite weights
            raise DivergedError(f"training loss became {loss.item()} at optimizer step {self.global_step}")
        return loss

    def check_finite(self) -> None:
        """Raise if any training loss since the last check was non-finite (one host sync)."""
        if self._finite is not None and not bool(self._finite):
            raise DivergedError(f"training loss became non-finite at or before optimizer step {self.global_step} "
                                f"(checked every trainer.log_every_n_steps={self.trainer.log_every_n_steps} "
                                "steps on an accelerator)")
        self._finite = None

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self._finite is not None and (batch_idx + 1) % self.trainer.log_every_n_steps == 0:
            self.check_finite()

    def update_metrics(self, metrics: MetricCollection, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if self.task == "causal_lm":  # token t predicts token t+1
            metrics.update(logits[:, :-1].float(), labels[:, 1:])
        else:
            metrics.update(logits.argmax(-1), labels)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch)
        self.update_metrics(self.val_metrics, logits, batch["labels"])

    def on_test_epoch_start(self) -> None:
        self.infer_seconds, self.infer_examples = 0.0, 0

    def test_step(self, batch: dict, batch_idx: int) -> None:
        start = time.perf_counter()
        logits = self(batch)
        if logits.is_cuda:
            torch.cuda.synchronize()
        self.infer_seconds += time.perf_counter() - start
        self.infer_examples += len(batch["labels"])
        self.update_metrics(self.test_metrics, logits, batch["labels"])

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    # ------------------------------------------------------------------ timing and FLOPs

    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()
        vocab = getattr(self.model.config, "vocab_size", 100) or 100
        self.flops = TrainFlops(self.model, vocab=min(100, vocab))

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if self.flops is not None and self.trainer.training:  # the CPU batch: counting needs no device sync
            self.train_flops += self.flops.batch(batch["attention_mask"])
        return batch

    def on_validation_epoch_start(self) -> None:
        self._val_start = time.perf_counter()
        self.check_finite()  # before validation picks a checkpoint to keep

    def on_validation_epoch_end(self) -> None:
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.fit_val_seconds += time.perf_counter() - self._val_start
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()

    def throughput_figures(self, precision: str, cache_dir: str | None = None) -> dict:
        """Achieved model FLOP/s of the training steps against the device's measured matmul peak."""
        seconds = self.compute_seconds()
        if not self.train_flops or seconds <= 0:
            return {}
        dtype = torch.bfloat16 if "bf16" in precision else torch.float16 if precision.startswith("16") else torch.float32
        peak = gemm_peak(self.device, dtype, cache_file=Path(cache_dir) / "gemm_peak.json" if cache_dir else None)
        achieved = self.train_flops / seconds
        return {"train_flops": self.train_flops, "train_compute_s": seconds, "model_flops_per_s": achieved,
                "gemm_peak_flops_per_s": peak, "gemm_peak_dtype": str(dtype).removeprefix("torch."),
                "mfu": achieved / peak}

    def compute_seconds(self) -> float:
        """Training time so far without the validation inside it, including the runs before a resume."""
        current = time.perf_counter() - self._epoch_start if self._epoch_start is not None else 0.0
        return self.prior["train_compute_s"] + sum(self.epoch_times) + current - self.fit_val_seconds

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self.first_batch_at is None:  # start-up cost of a job: everything before its first step
            self.first_batch_at, self.first_batch_wall = time.perf_counter(), time.time()

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        self.check_finite()
        self.epoch_times.append(time.perf_counter() - self._epoch_start)
        self._epoch_start = None
        loss = self.trainer.callback_metrics.get("train/loss_epoch")
        if loss is not None:
            self.epoch_train_loss.append(float(loss))

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.method_cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        fused = all(p.is_cuda for p in decay + no_decay)
        optimizer = torch.optim.AdamW(groups, lr=self.method_cfg.lr, fused=fused or None)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.method_cfg.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
