"""Magnitude pruning of the LoRA adapter weights (Sparse LoRA), as a Lightning Callback.

Gradual: every `every_n_steps` optimizer steps between start and end, the target sparsity follows
Zhu & Gupta's (2017) cubic schedule s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3. One-shot:
train dense, evaluate, prune to the target, evaluate again (train.py calls `after_training`).
Pruned weights are re-zeroed after every optimizer step (AdamW's moments would revive them), and the
masks are part of the callback's state, so they travel in the checkpoint and a resumed run keeps them.

Lightning's ModelPruning is not used: its default lottery-ticket reset puts every lora_B back to its
initial zeros (wiping the adapter), it prunes only at epoch ends, and its masks are not checkpointed.
"""

from __future__ import annotations

import lightning as L
import torch

from peft_bench.config import PruningConfig


def cubic_sparsity(step: int, target: float, start: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta's schedule at optimizer step `step` (0 before start, target from end on)."""
    if step < start:
        return 0.0
    if step >= end or end <= start:
        return target
    return target + (initial - target) * (1 - (step - start) / (end - start)) ** 3


def masks_for(weights: dict[str, torch.Tensor], sparsity: float, criterion: str) -> dict[str, torch.Tensor]:
    """Boolean keep-masks that zero the `sparsity` fraction of smallest |w| under the criterion."""
    if criterion == "magnitude_global":
        # Exactly k dropped, ties broken by position: early Adam steps give many weights the same |w|.
        flat = torch.cat([w.detach().abs().flatten().float() for w in weights.values()])
        keep = torch.ones_like(flat, dtype=torch.bool)
        k = int(round(sparsity * flat.numel()))
        if k:
            keep[flat.topk(k, largest=False).indices] = False
        parts = keep.split([w.numel() for w in weights.values()])
        return {n: part.reshape(w.shape) for (n, w), part in zip(weights.items(), parts, strict=True)}
    masks = {}
    for n, w in weights.items():
        a = w.detach().abs().float()
        rows = a if criterion == "topk_per_row" else a.flatten()[None]
        drop = int(round(sparsity * rows.shape[1]))
        keep = torch.ones_like(rows, dtype=torch.bool)
        if drop:
            idx = rows.topk(drop, dim=1, largest=False).indices
            keep.scatter_(1, idx, False)
        masks[n] = keep.reshape(w.shape)
    return masks


class GradualPruning(L.Callback):
    """Prunes what the module's `prunable_parameters()` returns, as its PruningConfig says (the config
    schema is the one home of the defaults and of the checks on them)."""

    def __init__(self, cfg: PruningConfig, initial: float = 0.0):
        self.target, self.schedule, self.criterion = cfg.target, cfg.schedule, cfg.criterion
        self.start_step, self.end_step, self.every_n_steps = cfg.start_step, cfg.end_step, cfg.every_n_steps
        self.start_fraction, self.end_fraction = cfg.start_fraction, cfg.end_fraction
        self.initial = initial
        self.masks: dict[str, torch.Tensor] = {}
        self.current = 0.0
        # per-step work is kept small: the adapter's tensors and float masks in step with self.masks,
        # built when the masks change, applied with one fused multiply
        self._weights: list[torch.Tensor] = []
        self._float_masks: list[torch.Tensor] = []
        self.pruned_steps: set[int] = set()
        self.history: list[list] = []  # [optimizer step, sparsity applied]

    # ------------------------------------------------------------------ schedule

    def steps(self, total: int) -> tuple[int, int]:
        """(t0, t0 + n dt): start_step and end_step, or else start_fraction and end_fraction of training."""
        start = self.start_step if self.start_step is not None else int(self.start_fraction * total)
        end = self.end_step if self.end_step is not None else int(self.end_fraction * total)
        return start, max(start, end)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.total = int(trainer.estimated_stepping_batches)
        self.apply(pl_module)  # masks restored from a checkpoint hold from the first step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if self.schedule == "gradual":
            step = trainer.global_step  # optimizer steps taken so far
            start, end = self.steps(self.total)
            due = start <= step <= end and ((step - start) % self.every_n_steps == 0 or step == end)
            if due and step not in self.pruned_steps:
                self.prune(pl_module, cubic_sparsity(step, self.target, start, end, self.initial), step)
        self.apply(pl_module)

    # ------------------------------------------------------------------ masks

    def prune(self, pl_module: L.LightningModule, sparsity: float, step: int) -> None:
        self.apply(pl_module)  # re-zero what the last optimizer step revived, so old masks nest in the new
        weights = pl_module.prunable_parameters()
        new = masks_for(weights, sparsity, self.criterion)
        self.masks = {n: m & self.masks[n].to(m.device) if n in self.masks else m for n, m in new.items()}
        self.current = sparsity
        self.history.append([step, sparsity])
        self.pruned_steps.add(step)
        self._float_masks = []  # rebuilt from the new masks
        self.apply(pl_module)

    @torch.no_grad()
    def apply(self, pl_module: L.LightningModule) -> None:
        """Zero the pruned weights (after every optimizer step: AdamW's moments would revive them)."""
        if not self.masks:
            return
        if not self._float_masks or self._float_masks[0].device != self._weights[0].device:
            weights = pl_module.prunable_parameters()
            self._weights = list(weights.values())
            self._float_masks = [self.masks[n].to(device=w.device, dtype=w.dtype) for n, w in weights.items()]
        torch._foreach_mul_(self._weights, self._float_masks)

    def after_training(self, pl_module: L.LightningModule) -> bool:
        """One-shot: prune to the target now (train.py evaluates before and after). True if it pruned."""
        if self.schedule != "one_shot":
            return False
        self.prune(pl_module, self.target, getattr(pl_module.trainer, "global_step", -1))
        return True

    def state_dict(self) -> dict:
        return {
            "masks": {n: m.cpu() for n, m in self.masks.items()},
            "current": self.current,
            "history": self.history,
        }

    def load_state_dict(self, state: dict) -> None:
        self.masks = dict(state["masks"])
        self._float_masks = []
        self.current = state["current"]
        self.history = [list(h) for h in state["history"]]
        self.pruned_steps = {s for s, _ in self.history}
