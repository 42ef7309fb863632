"""What every PEFT adapter method shares: the backbone frozen, PEFT's adapter on the target modules,
the task head trained in full; export in PEFT's format and merged inference. A method says which PEFT
config it builds (`peft_config`) and what it can do (class attributes); the rest is here."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from peft import PeftConfig, get_peft_model
from torch import nn

from peft_bench.methods.base import BenchModule

# PeftConfig fields that say nothing about the adapter (bookkeeping, or unset in every method here)
NOT_SETTINGS = (
    "peft_type",
    "task_type",
    "revision",
    "base_model_name_or_path",
    "inference_mode",
    "auto_mapping",
    "peft_version",
    "modules_to_save",
)


class AdapterModule(BenchModule):
    mergeable = True
    rank_bounded_by_width = True  # method.r is the rank of each layer's update (checks.rank_problems)

    def peft_config(self) -> PeftConfig:
        """The PEFT config of this method, from self.method_cfg (see common())."""
        raise NotImplementedError

    def common(self) -> dict:
        """What every PEFT config here takes: the task type, the task head trained in full, the target
        modules and, for a method that honours method.layers, the layers to adapt."""
        m = self.method_cfg
        out = {
            "task_type": self.task.task_type(),
            "modules_to_save": self.head_modules() or None,
            "target_modules": list(m.target_modules),
        }
        if self.uses_layers:
            out["layers_to_transform"] = m.layers
        return out

    def build_model(self, backbone: nn.Module) -> nn.Module:
        return get_peft_model(backbone, self.peft_config())

    def adapter_settings(self) -> dict:
        """The PEFT config the run trained with, as results.json records it (set fields only)."""
        config = self.model.peft_config["default"].to_dict()
        out = {}
        for key, value in config.items():
            if key in NOT_SETTINGS or value is None or value == {} or value == []:
                continue
            out[key] = sorted(value) if isinstance(value, set) else value
        return json.loads(json.dumps(out, default=str))

    def export(self, run_dir: Path) -> dict:
        """The adapter (and trained head) in PEFT's format: PeftModel.from_pretrained(base, path); with
        method.export_merged, also a plain transformers model with the adapter folded in."""
        if not self.method_cfg.export:
            return {}
        path = run_dir / "adapter"
        self.save_adapter(path)
        out = {
            "adapter_dir": str(path.relative_to(run_dir)),
            "adapter_file_bytes": sum(f.stat().st_size for f in path.iterdir() if f.is_file()),
        }
        if getattr(self.method_cfg, "export_merged", False) and self.can_merge():
            merged = run_dir / "merged"  # no PEFT needed to serve it
            self.model.merge_and_unload(safe_merge=True).save_pretrained(merged)
            out["merged_dir"] = str(merged.relative_to(run_dir))
        return out

    def save_adapter(self, path: Path) -> None:
        self.model.save_pretrained(path)

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
        return {**super().method_results(), "adapter": self.adapter_settings(), **self.adapter_figures()}


def sparsity_report(weights: dict[str, nn.Parameter], near_zero: float = 1e-3) -> dict:
    """Adapter sparsity, overall and per matrix: exact zeros, |w| < near_zero (the seeds' column),
    and the adapter's size stored sparsely (values + int32 indices of the non-zeros) vs dense."""
    if not weights:
        return {}
    per_matrix, zeros, small, total, dense_bytes = {}, 0, 0, 0, 0
    for name, w in weights.items():
        z, s, n = int((w == 0).sum()), int((w.abs() < near_zero).sum()), w.numel()
        per_matrix[name.removeprefix("model.")] = {"exact_zero": z / n, "below_1e-3": s / n}
        zeros, small, total, dense_bytes = zeros + z, small + s, total + n, dense_bytes + n * w.element_size()
    nnz = total - zeros
    itemsize = dense_bytes / total
    return {
        "sparsity_exact_zero": zeros / total,
        "sparsity_below_1e-3": small / total,
        "adapter_params": total,
        "adapter_nonzero": nnz,
        "adapter_dense_bytes": dense_bytes,
        "adapter_sparse_bytes": int(nnz * (itemsize + 4)),
        "sparsity_per_matrix": per_matrix,
    }
