"""What a run measures about itself, as a Lightning Callback: train time, compute time, examples,
tokens and model FLOPs of training, time and loss per epoch, start-up time and test-set latency. Its
totals travel in every checkpoint, so a resumed run reports the whole run, not the part after the
resume; nothing here reads or writes the LightningModule's own state."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import psutil
import torch
from lightning.pytorch.trainer.states import TrainerFn

from peft_bench.flops import TrainFlops, gemm_peak

STATE_KEY = "peft_bench_run_stats"


class RunStats(L.Callback):
    def __init__(self, started: float | None = None, first_in_process: bool = False):
        self.started = started if started is not None else time.perf_counter()  # run() entry (perf_counter)
        self.first_in_process = first_in_process  # only then does the process start time mean this job's
        # totals before this process (a resumed run), restored from the checkpoint
        self.prior = {"train_time_s": 0.0, "train_compute_s": 0.0, "examples": 0, "tokens": 0, "flops": 0}
        self.epoch_times: list[float] = []
        self.epoch_losses: list[float] = []
        self.examples = 0
        self._sums: torch.Tensor | None = (
            None  # [tokens, sum of squared lengths] on the batch's device: no sync
        )
        self._sequences = 0
        self._loss: torch.Tensor | None = None  # the running epoch's sum of task loss x examples, on device
        self._loss_examples = 0
        self._loss_prior = 0.0  # ... of the part of that epoch before a resume
        self.flops: TrainFlops | None = None
        self._fit_start: float | None = None
        self._fit_end: float | None = None  # the clock stops here: evaluation after training is not training
        self._epoch_start: float | None = None  # perf_counter when the running epoch's timing began
        self._epoch_offset = 0.0  # compute time of the running epoch before a mid-epoch resume
        self._val_in_epoch = 0.0  # validation inside the running epoch (not training compute)
        self._val_start: float | None = None
        self.first_step_at: float | None = None
        self.first_step_wall: float | None = None
        self.infer_seconds = 0.0
        self.infer_examples = 0
        self._test_start: float | None = None

    # ------------------------------------------------------------------ training

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start, self._fit_end = time.perf_counter(), None
        model = pl_module.model
        vocab = getattr(model.config, "vocab_size", 100) or 100
        self.flops = TrainFlops(model, vocab=min(100, vocab))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_end = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start, self._epoch_offset, self._val_in_epoch = time.perf_counter(), 0.0, 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self.first_step_at is None:  # start-up cost of a job: everything before its first step
            self.first_step_at, self.first_step_wall = now, time.time()
        if self._epoch_start is None:  # resumed mid-epoch: Lightning does not start the epoch again
            self._epoch_start, self._val_in_epoch = now, 0.0
        lengths = batch["attention_mask"].sum(dim=1)
        sums, n = torch.stack([lengths.sum(), (lengths * lengths).sum()]), len(lengths)
        if trainer.world_size > 1:  # a DDP job's figures: every rank's equal share of the batch (on device)
            sums, n = trainer.strategy.reduce(sums, reduce_op="sum"), n * trainer.world_size
        self._sums = sums if self._sums is None else self._sums + sums
        self._sequences += n
        self.examples += n

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        n = len(batch["attention_mask"])
        term = outputs["task_loss"] * n
        if trainer.world_size > 1:
            term, n = trainer.strategy.reduce(term, reduce_op="sum"), n * trainer.world_size
        self._loss = term if self._loss is None else self._loss + term
        self._loss_examples += n

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (
            trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
            and self._val_start is not None
        ):
            self._val_in_epoch += time.perf_counter() - self._val_start
        self._val_start = None

    def epoch_compute(self) -> float:
        """Compute time of the running epoch so far (validation inside it excluded)."""
        if self._epoch_start is None:
            return 0.0
        return self._epoch_offset + time.perf_counter() - self._epoch_start - self._val_in_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_times.append(self.epoch_compute())
        self._epoch_start, self._epoch_offset, self._val_in_epoch = None, 0.0, 0.0
        if self._loss_examples:  # mean task loss over the epoch's examples (the whole epoch, across a resume)
            self.epoch_losses.append(self.epoch_loss_sum() / self._loss_examples)
        self._loss, self._loss_examples, self._loss_prior = None, 0, 0.0

    def epoch_loss_sum(self) -> float:
        return self._loss_prior + (float(self._loss) if self._loss is not None else 0.0)

    # ------------------------------------------------------------------ totals

    def tokens(self) -> int:
        return self.prior["tokens"] + (int(self._sums[0]) if self._sums is not None else 0)

    def train_flops(self) -> int:
        if self.flops is None or self._sums is None:
            return self.prior["flops"]
        tokens, squares = (int(v) for v in self._sums.tolist())
        return self.prior["flops"] + self.flops.from_sums(tokens, squares, self._sequences)

    def train_time(self) -> float:
        """Wall-clock time of training (validation inside it included), the whole run."""
        if self._fit_start is None:
            return self.prior["train_time_s"]
        return self.prior["train_time_s"] + (self._fit_end or time.perf_counter()) - self._fit_start

    def compute_time(self) -> float:
        """Training time without the validation inside it, the whole run."""
        return self.prior["train_compute_s"] + sum(self.epoch_times) + self.epoch_compute()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[STATE_KEY] = {
            "train_time_s": self.train_time(),
            "train_compute_s": self.compute_time(),
            "examples": self.prior["examples"] + self.examples,
            "tokens": self.tokens(),
            "flops": self.train_flops(),
            "epoch_times": list(self.epoch_times),
            "epoch_losses": list(self.epoch_losses),
            "epoch_compute_s": self.epoch_compute(),
            "epoch_loss_sum": self.epoch_loss_sum(),
            "epoch_loss_examples": self._loss_examples,
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get(STATE_KEY)
        if state is None or trainer.state.fn != TrainerFn.FITTING:  # evaluating a checkpoint: keep the totals
            return
        done_epochs = sum(state["epoch_times"])
        self.prior = {
            "train_time_s": state["train_time_s"],
            "examples": state["examples"],
            "tokens": state["tokens"],
            "flops": state["flops"],
            "train_compute_s": state["train_compute_s"] - done_epochs - state["epoch_compute_s"],
        }
        self.epoch_times, self.epoch_losses = list(state["epoch_times"]), list(state["epoch_losses"])
        self._epoch_offset = state["epoch_compute_s"]  # the epoch the checkpoint was taken in goes on
        self._epoch_start = None
        self._loss, self._loss_prior, self._loss_examples = (
            None,
            state["epoch_loss_sum"],
            state["epoch_loss_examples"],
        )

    # ------------------------------------------------------------------ test-set latency

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.infer_seconds, self.infer_examples = 0.0, 0

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch["input_ids"].is_cuda:
            torch.cuda.synchronize()
        self._test_start = time.perf_counter()

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if batch["input_ids"].is_cuda:
            torch.cuda.synchronize()
        self.infer_seconds += time.perf_counter() - self._test_start
        self.infer_examples += len(batch["input_ids"])

    def latency_ms(self) -> float:
        """Milliseconds per example over the last test pass (forward and metric update)."""
        return 1000 * self.infer_seconds / max(1, self.infer_examples)

    # ------------------------------------------------------------------ results

    def figures(self, precision: str, device: torch.device, cache_dir: str | None) -> dict:
        """The results.json fields of training: time, throughput, FLOPs and MFU, start-up."""
        train_time = self.train_time()
        examples, tokens = self.prior["examples"] + self.examples, self.tokens()
        out = {
            "train_time_s": train_time,
            "time_per_epoch_s": list(self.epoch_times),
            "mean_time_per_epoch_s": sum(self.epoch_times) / max(1, len(self.epoch_times)),
            "train_examples": examples,
            "train_examples_per_s": examples / train_time if train_time else None,
            "train_tokens": tokens,
            "train_tokens_per_s": tokens / train_time if train_time else None,
            "train_loss_per_epoch": list(self.epoch_losses),
            "time_to_first_step_s": self.first_step_at - self.started if self.first_step_at else None,
            # from the process start, imports (torch, Lightning, transformers: seconds) included
            "process_to_first_step_s": (
                self.first_step_wall - psutil.Process().create_time()
                if self.first_step_wall and self.first_in_process
                else None
            ),
        }
        seconds, flops = self.compute_time(), self.train_flops()
        if flops and seconds > 0:
            dtype = (
                torch.bfloat16
                if "bf16" in precision
                else torch.float16
                if precision.startswith("16")
                else torch.float32
            )
            peak = gemm_peak(
                device, dtype, cache_file=Path(cache_dir) / "gemm_peak.json" if cache_dir else None
            )
            out.update(
                train_flops=flops,
                train_compute_s=seconds,
                model_flops_per_s=flops / seconds,
                gemm_peak_flops_per_s=peak,
                gemm_peak_dtype=str(dtype).removeprefix("torch."),
                mfu=flops / seconds / peak,
            )
        return out
