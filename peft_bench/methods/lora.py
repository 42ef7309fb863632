"""LoRA (Hu et al., 2021) through HF PEFT: frozen backbone, low-rank adapters on the target modules,
the task head trained in full."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from peft import LoraConfig, TaskType, get_peft_model
from torch import nn

from peft_bench.callbacks.pruning import sparsity_report
from peft_bench.config import LoRAConfig
from peft_bench.methods.base import BenchModule


class LoRAModule(BenchModule):
    method_cfg: LoRAConfig
    mergeable = True

    def peft_config(self) -> LoraConfig:
        m = self.method_cfg
        return LoraConfig(
            task_type=self.peft_task_type(),
            r=m.r,
            lora_alpha=m.alpha,
            lora_dropout=m.dropout,
            target_modules=list(m.target_modules),
            layers_to_transform=m.layers,
            modules_to_save=self.head_modules(),
        )

    def peft_task_type(self) -> TaskType:
        return self.task.task_type()

    def head_modules(self) -> list[str] | None:
        """A classification head is new and trained in full; a language model's head is pretrained."""
        return list(self.model_cfg.head_modules) if self.task.trains_head else None

    def build_model(self, backbone: nn.Module) -> nn.Module:
        return get_peft_model(backbone, self.peft_config())

    def export(self, run_dir: Path) -> dict:
        """The adapter (and trained head) in PEFT's format: PeftModel.from_pretrained(base, path)."""
        path = run_dir / "adapter"
        self.model.save_pretrained(path)
        out = {
            "adapter_dir": str(path.relative_to(run_dir)),
            "adapter_file_bytes": sum(f.stat().st_size for f in path.iterdir() if f.is_file()),
        }
        if self.method_cfg.export_merged and self.mergeable:
            merged = run_dir / "merged"  # a plain transformers model: no PEFT needed to serve it
            self.model.merge_and_unload(safe_merge=True).save_pretrained(merged)
            out["merged_dir"] = str(merged.relative_to(run_dir))
        return out

    @contextmanager
    def merged(self):
        """Adapter folded into the base weights (zero inference overhead), undone on exit."""
        self.model.merge_adapter(safe_merge=True)  # safe_merge: refuse to write non-finite weights
        try:
            yield
        finally:
            self.model.unmerge_adapter()

    def adapter_figures(self) -> dict:
        """Adapter sparsity (exact zeros, |w| < 1e-3, per matrix) and its sparse vs dense size."""
        return sparsity_report(self.adapter_parameters())

    def method_results(self) -> dict:
        m = self.method_cfg
        return {
            "lora": {
                "r": m.r,
                "alpha": m.alpha,
                "dropout": m.dropout,
                "target_modules": list(m.target_modules),
                "layers": m.layers,
            },
            **self.adapter_figures(),
        }
