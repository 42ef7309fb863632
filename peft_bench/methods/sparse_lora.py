"""Sparse LoRA: LoRA with an L1 penalty on the adapter weights, pruned by magnitude to the target
sparsity by the GradualPruning callback. Sparsity of the adapter, not of the frozen base weights."""

from __future__ import annotations

import torch
from torch import nn

from peft_bench.callbacks.pruning import GradualPruning
from peft_bench.config import SparseLoRAConfig
from peft_bench.methods.lora import LoRAModule


class SparseLoRAModule(LoRAModule):
    method_cfg: SparseLoRAConfig
    evaluate_best = (
        False  # an early checkpoint would be less sparse than the target: report the final weights
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pruning = GradualPruning(self.method_cfg.pruning)
        self._adapter: list[torch.Tensor] = []

    def configure_callbacks(self):
        return [self.pruning]

    def extra_losses(self) -> dict[str, torch.Tensor]:
        if self.method_cfg.l1_lambda == 0:
            return {}
        if not self._adapter:  # the same Parameter objects for the whole run (.to() moves them in place)
            self._adapter = list(self.prunable_parameters().values())
        l1 = torch.stack(torch._foreach_norm(self._adapter, 1)).sum()  # one fused kernel, not one per matrix
        return {"l1": self.method_cfg.l1_lambda * l1}

    def prunable_parameters(self) -> dict[str, nn.Parameter]:
        """The adapter's matrices (LoRA's A and B): what the L1 term and the pruning act on."""
        return {n: p for n, p in self.adapter_parameters().items() if p.ndim >= 2}

    def after_training(self) -> dict | None:
        before = self.adapter_figures()
        return before if self.pruning.after_training(self) else None

    def method_results(self) -> dict:
        out = super().method_results()
        p = self.pruning
        out["pruning"] = {
            "l1_lambda": self.method_cfg.l1_lambda,
            "target": p.target,
            "schedule": p.schedule,
            "criterion": p.criterion,
            "steps": p.history,
        }
        return out
