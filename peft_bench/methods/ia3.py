"""IA3 (Liu et al., NeurIPS 2022) through PEFT's IA3Config: learned vectors that rescale the keys, the
values and the feed-forward activations. No rank: its size is fixed by the model."""

from __future__ import annotations

from peft import IA3Config as PeftIA3Config

from peft_bench.config import IA3Config
from peft_bench.methods.adapter import AdapterModule


class IA3Module(AdapterModule):
    method_cfg: IA3Config
    supports_4bit = True

    def peft_config(self) -> PeftIA3Config:
        m = self.method_cfg
        return PeftIA3Config(
            **self.common(),
            feedforward_modules=list(m.feedforward_modules),
        )
