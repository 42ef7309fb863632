"""VeRA (Kopiczko et al., ICLR 2024) through PEFT's VeraConfig: one pair of frozen random matrices
(rank r, from projection_prng_key) shared by every adapted layer; each layer trains two scaling
vectors, so the trainable count hardly grows with r."""

from __future__ import annotations

from peft import VeraConfig

from peft_bench.config import VeRAConfig
from peft_bench.methods.adapter import AdapterModule


class VeRAModule(AdapterModule):
    method_cfg: VeRAConfig
    uses_layers = True
    supports_4bit = True
    rank_bounded_by_width = False  # r is the shared frozen projections' size; it trains r + out per layer

    def peft_config(self) -> VeraConfig:
        m = self.method_cfg
        return VeraConfig(
            **self.common(),
            r=m.r,
            vera_dropout=m.dropout,
            d_initial=m.d_initial,
            projection_prng_key=m.projection_prng_key,
        )
