"""BitFit (Ben Zaken et al., ACL 2022): only the bias terms train, with the task head; the classic
cheap baseline. No adapter, no rank; nothing to merge (the trained biases are the model's own)."""

from __future__ import annotations

from torch import nn

from peft_bench.config import MethodConfig, ModelConfig
from peft_bench.methods.base import BenchModule


class BitFitModule(BenchModule):
    supports_4bit = True  # the biases of bitsandbytes' 4-bit layers stay in full precision

    @classmethod
    def config_problems(
        cls, method: MethodConfig, model: ModelConfig, conv1d_targets: list[str], bias_params: int
    ) -> list[str]:
        out = super().config_problems(method, model, conv1d_targets, bias_params)
        if not bias_params:
            out.append(
                f"method=bitfit: model {model.name} has no bias terms (Llama-style layers are bias-free), "
                "so BitFit would train the task head alone, if any: use another method for this model"
            )
        return out

    def build_model(self, backbone: nn.Module) -> nn.Module:
        backbone.requires_grad_(False)
        heads = tuple(self.head_modules())
        for name, param in backbone.named_parameters():
            if name.endswith(".bias") or name.split(".", 1)[0] in heads:
                param.requires_grad_(True)
        return backbone
