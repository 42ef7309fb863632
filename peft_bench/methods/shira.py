"""SHiRA (Bhardwaj et al., 2024) through PEFT's ShiraConfig: a sparse, high-rank adapter that trains
r (m + n) chosen weights of each m x n matrix directly (the parameter count of a rank-r LoRA); the
mask is random, seeded per run."""

from __future__ import annotations

from peft import ShiraConfig

from peft_bench.config import SHiRAConfig
from peft_bench.methods.adapter import AdapterModule


class SHiRAModule(AdapterModule):
    method_cfg: SHiRAConfig
    supports_4bit = True
    supports_conv1d = False  # PEFT has no Conv1D layer for it

    def peft_config(self) -> ShiraConfig:
        m = self.method_cfg
        return ShiraConfig(
            **self.common(),
            r=m.r,
            mask_type=m.mask_type,
            random_seed=m.mask_seed,
        )
