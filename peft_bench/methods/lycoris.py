"""LoHa and LoKr (the LyCORIS family) through PEFT: the update is a Hadamard product of two low-rank
products (LoHa) or a Kronecker product with a low-rank factor (LoKr), scaled by alpha / r."""

from __future__ import annotations

from peft import LoHaConfig, LoKrConfig

from peft_bench.config import LycorisConfig
from peft_bench.methods.adapter import AdapterModule


class LoHaModule(AdapterModule):
    method_cfg: LycorisConfig
    uses_layers = True
    supports_conv1d = False  # PEFT has no Conv1D layer for it
    config_class = LoHaConfig

    def peft_config(self):
        m = self.method_cfg
        return self.config_class(
            **self.common(),
            r=m.r,
            alpha=m.alpha,
            rank_dropout=m.dropout,
            module_dropout=m.module_dropout,
        )


class LoKrModule(LoHaModule):
    config_class = LoKrConfig
    rank_bounded_by_width = False  # r factorises a Kronecker factor (PEFT makes it full above half its size)
