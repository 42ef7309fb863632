"""MiSS (Kang et al., 2025; the successor of Bone) through PEFT's MissConfig: a shared trainable block
of r rows per layer, expanded over the weight; cheap in parameters and compute."""

from __future__ import annotations

from peft import MissConfig

from peft_bench.config import MiSSConfig
from peft_bench.methods.adapter import AdapterModule


class MiSSModule(AdapterModule):
    method_cfg: MiSSConfig
    uses_layers = True
    supports_4bit = True
    supports_conv1d = False  # PEFT has no Conv1D layer for it

    def peft_config(self) -> MissConfig:
        m = self.method_cfg
        return MissConfig(
            **self.common(),
            r=m.r,
            miss_dropout=m.dropout,
        )
