"""HiRA (Huang et al., ICLR 2025) through PEFT's HiraConfig: dW = W0 * (B A), a Hadamard product
with the frozen weight, so rank-r factors give a high-rank update; no alpha scaling."""

from __future__ import annotations

from peft import HiraConfig

from peft_bench.config import HiRAConfig
from peft_bench.methods.lora import LoRAModule


class HiRAModule(LoRAModule):
    method_cfg: HiRAConfig

    def peft_config(self) -> HiraConfig:
        m = self.method_cfg
        return HiraConfig(
            task_type=self.peft_task_type(),
            r=m.r,
            hira_dropout=m.dropout,
            target_modules=list(m.target_modules),
            layers_to_transform=m.layers,
            modules_to_save=self.head_modules(),
        )

    def method_results(self) -> dict:
        m = self.method_cfg
        return {
            "hira": {
                "r": m.r,
                "dropout": m.dropout,
                "target_modules": list(m.target_modules),
                "layers": m.layers,
            },
            **self.adapter_figures(),
        }
