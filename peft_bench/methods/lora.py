"""LoRA (Hu et al., 2021) through HF PEFT: frozen backbone, low-rank adapters on the target modules,
the task head trained in full."""

from __future__ import annotations

from peft import LoraConfig, TaskType, get_peft_model
from torch import nn

from peft_bench.config import LoRAConfig
from peft_bench.methods.base import BenchModule


class LoRAModule(BenchModule):
    method_cfg: LoRAConfig

    def peft_config(self) -> LoraConfig:
        m = self.method_cfg
        return LoraConfig(task_type=TaskType.SEQ_CLS, r=m.r, lora_alpha=m.alpha, lora_dropout=m.dropout,
                          target_modules=list(m.target_modules), layers_to_transform=m.layers,
                          modules_to_save=list(self.model_cfg.head_modules))

    def build_model(self, backbone: nn.Module) -> nn.Module:
        return get_peft_model(backbone, self.peft_config())

    def method_results(self) -> dict:
        m = self.method_cfg
        return {"lora": {"r": m.r, "alpha": m.alpha, "dropout": m.dropout,
                         "target_modules": list(m.target_modules), "layers": m.layers}}
