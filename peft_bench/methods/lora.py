"""LoRA (Hu et al., 2021) and the variants PEFT builds from LoraConfig: DoRA (use_dora), rsLoRA
(use_rslora), PiSSA and OLoRA (init: the adapter starts from the base weights' principal singular
vectors / a QR factor, and the base keeps the residual), LoRA+ (B trained with a larger learning rate).
Also method=lora_layers (adapters on some layers only) and, on a 4-bit base, QLoRA.

The data-driven initialisations read the run's first training batches (BenchModule's `calibration`)
before training: EVA (the layers' input directions), CorDA (the weights' SVD whitened by the inputs'
covariance) and LoRA-GA (the SVD of the weights' gradient), each through PEFT's own preprocessing. LoftQ
starts the adapter at the low-rank part of the 4-bit base's quantization error W - Q(W)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from peft import (
    EvaConfig,
    LoraConfig,
    LoraGAConfig,
    get_peft_model,
    get_peft_model_state_dict,
    initialize_lora_eva_weights,
    preprocess_loraga,
)
from peft.optimizers import create_loraplus_optimizer
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.config import CordaConfig
from peft.tuners.lora.corda import preprocess_corda
from safetensors.torch import load_file, save_file
from torch import nn

from peft_bench.config import DATA_INITS, LoRAConfig, MethodConfig, ModelConfig
from peft_bench.methods.adapter import AdapterModule
from peft_bench.methods.base import EVALUATION_ONLY
from peft_bench.models import load_base


def init_weights(init: str) -> bool | str:
    """method.init as LoraConfig's init_lora_weights."""
    return True if str(init).lower() == "true" else str(init).lower()


def changes_base(init: str) -> bool:
    """PiSSA, OLoRA, CorDA and LoRA-GA move part of W into the adapter: the base keeps the residual."""
    return str(init).lower().startswith(("pissa", "olora", "corda", "lora_ga"))


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
        init = str(method.init).lower()
        if init == "olora" and conv1d_targets:
            out.append(
                f"method.init=olora: PEFT's OLoRA init cannot factor {model.name}'s Conv1D layers "
                f"{conv1d_targets[:3]}; use a Llama-style model, or method=pissa"
            )
        if init in ("corda", "lora_ga") and model.quantization is not None:
            out.append(
                f"method.init={init}: PEFT computes it from full-precision weights (and their gradients), "
                "not a 4-bit base: use model.quantization=null"
            )
        if init == "loftq" and model.quantization is None:
            out.append(
                "method.init=loftq starts LoRA at a 4-bit base's quantization error: set "
                "model.quantization=nf4 (method=loftq does), or use another method.init"
            )
        if init == "loftq" and conv1d_targets:
            out.append(
                f"method.init=loftq: {model.name}'s Conv1D layers {conv1d_targets[:3]} are not quantized "
                "as Linear4bit; use a Llama-style model"
            )
        return out

    @classmethod
    def calibration_batches(cls, method: MethodConfig) -> int:
        return method.init_batches if str(method.init).lower() in DATA_INITS else 0

    def load_backbone(self) -> nn.Module:
        """LoftQ: the 4-bit base, and the full-precision weights it was quantized from."""
        if init_weights(self.method_cfg.init) != "loftq":
            return super().load_backbone()
        model, self.base_weight_bytes, self.full_precision = load_base(
            self.model_cfg, self.task, self.num_labels, self.accelerator_type, keep_full_precision=True
        )
        return model

    def peft_config(self) -> LoraConfig:
        m = self.method_cfg
        init = init_weights(m.init)
        # each data-driven init's PEFT defaults; EVA skips padding, and on a language model (labels per
        # token, -100 where not trained) the tokens the loss ignores
        sub = {
            "eva": {"eva_config": EvaConfig(use_label_mask=not self.task.trains_head)},
            "corda": {"corda_config": CordaConfig()},
            "lora_ga": {"lora_ga_config": LoraGAConfig()},
        }.get(init, {})
        return LoraConfig(
            **self.common(),
            r=m.r,
            lora_alpha=m.alpha,
            lora_dropout=m.dropout,
            use_dora=m.use_dora,
            use_rslora=m.use_rslora,
            # LoftQ's adapter is set after the 4-bit layers exist (loftq_init); PEFT's own LoftQ init
            # computes on CUDA only and quantizes the base itself
            init_lora_weights=True if init == "loftq" else init,
            **sub,
        )

    def build_model(self, backbone: nn.Module) -> nn.Module:
        init, batches = init_weights(self.method_cfg.init), self.calibration
        config = self.peft_config()
        if init == "corda":  # the inputs' covariance per target layer, before the adapter exists
            preprocess_corda(backbone, config, run_model=lambda: self.run_sequences(backbone, batches))
        elif init == "lora_ga":  # the target weights' gradient over the batches
            preprocess_loraga(backbone, config, train_step=lambda: self.run_batches(backbone, batches, True))
        model = get_peft_model(backbone, config)
        if init == "eva":
            initialize_lora_eva_weights(  # every DDP rank reads the same batches: nothing to gather
                model,
                dataloader=[self.model_inputs(b) for b in batches],
                gather_distributed_inputs=False,
                show_progress_bar=False,
            )
        elif init == "loftq":
            loftq_init(model, self.full_precision)
            del self.full_precision
        # PiSSA / OLoRA: the adapter's starting point, so the export can be converted into a plain LoRA
        # adapter of the original base weights (PEFT's conversion on save)
        self.initial_adapter = (
            {k: v.detach().clone().cpu() for k, v in get_peft_model_state_dict(model).items()}
            if changes_base(self.method_cfg.init)
            else None
        )
        return model

    @staticmethod
    def model_inputs(batch: dict) -> dict:
        return {k: v for k, v in batch.items() if k not in EVALUATION_ONLY or k == "labels"}

    def run_batches(self, model: nn.Module, batches: list[dict], backward: bool = False) -> None:
        """The forward (and, for gradients, backward) passes a data-driven init reads."""
        for batch in batches:
            with torch.set_grad_enabled(backward):
                loss = model(**self.model_inputs(batch)).loss
            if backward:
                loss.backward()

    def run_sequences(self, model: nn.Module, batches: list[dict]) -> None:
        """The batches' sequences one at a time, without their padding: CorDA's covariance hook reads
        one sequence per forward (PEFT's calib_cov_distribution squeezes a batch of one)."""
        for batch in batches:
            inputs = self.model_inputs(batch)
            inputs.pop("labels", None)
            mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).bool()
            for i, keep in enumerate(mask):
                one = {k: v[i][keep] if v.shape == mask.shape else v[i] for k, v in inputs.items()}
                model(**{k: v[None] for k, v in one.items()})

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


@torch.no_grad()
def loftq_init(model: nn.Module, full_precision: dict[str, torch.Tensor]) -> None:
    """LoftQ (Li et al., 2024) with the base quantized once, as PEFT's replace_lora_weights_loftq does
    it: each adapter starts at the best rank-r approximation of W - Q(W), the error of its 4-bit
    weight, so the adapted layer starts nearer to full precision (Q + s B A ~ W). Computed here on any
    device (PEFT's version runs on CUDA only) and with LoRA's scale s divided out of B."""
    import bitsandbytes as bnb

    for name, layer in model.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        base = layer.get_base_layer()
        weight = full_precision[name.removeprefix("base_model.model.")].to(base.weight.device, torch.float32)
        quantized = bnb.functional.dequantize_4bit(base.weight.data, base.weight.quant_state).float()
        u, s, vh = torch.linalg.svd(weight - quantized, full_matrices=False)
        r, scale = layer.r["default"], layer.scaling["default"]
        a = layer.lora_A["default"].weight
        a.copy_((s[:r].sqrt()[:, None] * vh[:r]).to(a.dtype))
        b = layer.lora_B["default"].weight
        b.copy_((u[:, :r] * s[:r].sqrt() / scale).to(b.dtype))
