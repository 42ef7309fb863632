"""Full fine-tuning: every parameter of the backbone and its head is trained (the baseline)."""

from __future__ import annotations

from torch import nn

from peft_bench.methods.base import BenchModule


class FullFineTuneModule(BenchModule):
    def build_model(self, backbone: nn.Module) -> nn.Module:
        backbone.requires_grad_(True)
        return backbone
