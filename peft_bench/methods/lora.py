"""LoRA (Hu et al., 2021) and the variants PEFT builds from LoraConfig: DoRA (use_dora), rsLoRA
(use_rslora), PiSSA and OLoRA (init: the adapter starts from the base weights' principal singular
vectors / a QR factor, and the base keeps the residual), LoRA+ (B trained with a larger learning rate).
Also method=lora_layers (adapters on some layers only) and, on a 4-bit base, QLoRA."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict
from peft.optimizers import create_loraplus_optimizer
from safetensors.torch import load_file, save_file
from torch import nn

from peft_bench.config import LoRAConfig, MethodConfig, ModelConfig
from peft_bench.methods.adapter import AdapterModule


def init_weights(init: str) -> bool | str:
    """method.init as LoraConfig's init_lora_weights."""
    return True if str(init).lower() == "true" else str(init).lower()


def changes_base(init: str) -> bool:
    """PiSSA and OLoRA move part of W into the adapter: the base keeps only the residual."""
    return str(init).lower().startswith(("pissa", "olora"))


class LoRAModule(AdapterModule):
    method_cfg: LoRAConfig
    supports_4bit = True
    uses_layers = True

    @classmethod
    def config_problems(
        cls, method: MethodConfig, model: ModelConfig, conv1d_targets: list[str], bias_params: int
    ) -> list[str]:
        out = super().config_problems(method, model, conv1d_targets, bias_params)
        if str(method.init).lower().startswith("pissa") and model.quantization is not None:
            out.append(
                f"method.init={method.init}: PEFT initialises PiSSA from full-precision weights only, not a "
                "4-bit base: use model.quantization=null"
            )
        if str(method.init).lower() == "olora" and conv1d_targets:
            out.append(
                f"method.init=olora: PEFT's OLoRA init cannot factor {model.name}'s Conv1D layers "
                f"{conv1d_targets[:3]}; use a Llama-style model, or method=pissa"
            )
        return out

    def peft_config(self) -> LoraConfig:
        m = self.method_cfg
        return LoraConfig(
            **self.common(),
            r=m.r,
            lora_alpha=m.alpha,
            lora_dropout=m.dropout,
            use_dora=m.use_dora,
            use_rslora=m.use_rslora,
            init_lora_weights=init_weights(m.init),
        )

    def build_model(self, backbone: nn.Module) -> nn.Module:
        model = super().build_model(backbone)
        # PiSSA / OLoRA: the adapter's starting point, so the export can be converted into a plain LoRA
        # adapter of the original base weights (PEFT's conversion on save)
        self.initial_adapter = (
            {k: v.detach().clone().cpu() for k, v in get_peft_model_state_dict(model).items()}
            if changes_base(self.method_cfg.init)
            else None
        )
        return model

    def save_adapter(self, path: Path) -> None:
        """PiSSA / OLoRA: an adapter of the original base weights. The trained W_res + B A equals
        W + (B A - B0 A0), a LoRA of rank 2r: A' = [A; A0], B' = [B, -B0], alpha doubled with r so the
        scale stays (rsLoRA: alpha / sqrt(r), times sqrt 2). PEFT's own conversion on save drops a
        classification head (modules_to_save), so it is done here, on the saved files."""
        super().save_adapter(path)
        if self.initial_adapter is None:
            return
        weights = path / "adapter_model.safetensors"
        state = load_file(str(weights))
        for key, value in state.items():
            if ".lora_A." in key:
                state[key] = torch.cat([value, self.initial_adapter[key].to(value)], dim=0)
            elif ".lora_B." in key:
                state[key] = torch.cat([value, -self.initial_adapter[key].to(value)], dim=1)
        save_file({k: v.contiguous() for k, v in state.items()}, str(weights), metadata={"format": "pt"})
        config = json.loads((path / "adapter_config.json").read_text())
        config["r"] *= 2
        config["lora_alpha"] *= math.sqrt(2) if config.get("use_rslora") else 2
        config["init_lora_weights"] = True  # loads as a plain LoRA on the original base
        (path / "adapter_config.json").write_text(json.dumps(config, indent=2))

    def make_optimizer(self) -> torch.optim.Optimizer:
        m = self.method_cfg
        if m.loraplus_lr_ratio is None:
            return super().make_optimizer()
        return create_loraplus_optimizer(
            self.model,
            torch.optim.AdamW,
            lr=m.lr,
            loraplus_lr_ratio=m.loraplus_lr_ratio,
            weight_decay=m.weight_decay,
        )
