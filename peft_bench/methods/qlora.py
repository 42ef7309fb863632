"""QLoRA (Dettmers et al., 2023): the frozen base quantized to 4-bit NF4 with double quantization by
bitsandbytes (through transformers' BitsAndBytesConfig), LoRA adapters on top. The task head stays in
full precision and trainable. Compute dtype: bf16 on a GPU, fp32 on the CPU."""

from __future__ import annotations

import tempfile

import bitsandbytes as bnb
import torch
from peft import prepare_model_for_kbit_training
from torch import nn
from transformers import BitsAndBytesConfig

from peft_bench.config import QLoRAConfig
from peft_bench.methods.lora import LoRAModule
from peft_bench.models import adaptable_module_names, load_backbone, load_model_config


class QLoRAModule(LoRAModule):
    method_cfg: QLoRAConfig
    mergeable = False  # merging into 4-bit weights would re-quantize them: not the model that was trained

    def load_backbone(self) -> nn.Module:
        m, cuda = self.method_cfg, self.accelerator_type == "cuda"  # the run's device, decided once
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=m.quant_type,
            bnb_4bit_use_double_quant=m.double_quant,
            bnb_4bit_compute_dtype=torch.bfloat16
            if cuda and torch.cuda.is_bf16_supported()
            else torch.float32,
            # a classification head stays unquantized (quantized, it cannot be trained); a language model
            # keeps transformers' default (lm_head and tied embeddings unquantized)
            llm_int8_skip_modules=self.head_modules() or None,
        )
        device_map = {"": torch.cuda.current_device() if cuda else "cpu"}
        if self.model_cfg.pretrained is not None:
            model = load_backbone(
                self.model_cfg, self.task, self.num_labels, quantization_config=quant, device_map=device_map
            )
        else:  # random init: quantization happens on loading, so save the fresh model and load it back
            with tempfile.TemporaryDirectory() as tmp:
                load_backbone(self.model_cfg, self.task, self.num_labels).save_pretrained(tmp)
                model = self.task.auto_class().from_pretrained(
                    tmp, quantization_config=quant, device_map=device_map
                )
        self.base_weight_bytes = model.get_memory_footprint()
        for module in model.modules():
            # bitsandbytes 0.50 repacks 4-bit CPU weights for inference on the first eval forward (the
            # sanity check) and keeps that layout, whose kernel then breaks the next training step
            # ("a view of a leaf Variable ... in-place operation"): keep the trainable layout throughout.
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = False
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)

    def method_results(self) -> dict:
        out = super().method_results()
        config = load_model_config(self.model_cfg, self.num_labels)
        with torch.device("meta"):
            reference = self.task.auto_class().from_config(config)
        full_bytes = sum(p.numel() * 4 for p in reference.parameters())  # the same model in fp32
        linear = adaptable_module_names(config, self.task)
        layers = [mod for mod in self.model.modules() if isinstance(mod, bnb.nn.Linear4bit)]
        quantized = sum(quantized_bytes(mod.weight) for mod in layers)
        quantized_fp32 = sum(4 * mod.in_features * mod.out_features for mod in layers)
        out["qlora"] = {
            "quant_type": self.method_cfg.quant_type,
            "double_quant": self.method_cfg.double_quant,
            "base_weight_bytes": self.base_weight_bytes,
            "base_weight_bytes_fp32": full_bytes,
            "base_weight_ratio": self.base_weight_bytes / full_bytes,
            "quantized_linear_modules": len(layers),
            "quantized_linear_weight_bytes": quantized,
            "quantized_linear_weight_bytes_fp32": quantized_fp32,
            "quantized_linear_weight_ratio": quantized / max(1, quantized_fp32),
            "linear_modules": len(linear),
        }
        return out


def quantized_bytes(weight) -> int:
    """Storage of a 4-bit weight: the packed values plus its quantization state (absmax, nested state)."""
    state = weight.quant_state.as_dict(packed=True)
    return weight.data.nbytes + sum(v.nbytes for v in state.values() if isinstance(v, torch.Tensor))
