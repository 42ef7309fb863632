"""HiRA (Huang et al., ICLR 2025) through PEFT's HiraConfig: dW = W0 * (B A), a Hadamard product
with the frozen weight, so rank-r factors give a high-rank update; no alpha scaling."""

from __future__ import annotations

from peft import HiraConfig

from peft_bench.config import HiRAConfig
from peft_bench.methods.adapter import AdapterModule


class HiRAModule(AdapterModule):
    method_cfg: HiRAConfig
    supports_4bit = True
    uses_layers = True

    def peft_config(self) -> HiraConfig:
        m = self.method_cfg
        return HiraConfig(
            **self.common(),
            r=m.r,
            hira_dropout=m.dropout,
        )
