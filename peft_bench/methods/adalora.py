"""AdaLoRA (Zhang et al., ICLR 2023) through PEFT: adapters in SVD form (P diag(E) Q) whose rank budget
is moved by importance, from round(init_r_factor * r) per matrix down to an average of r, during
training. PEFT's RankAllocator is called after every optimizer step (before the gradients are zeroed),
and its state travels in the checkpoint so a resumed run allocates as an uninterrupted one."""

from __future__ import annotations

from peft import AdaLoraConfig

from peft_bench.config import AdaLoRAConfig
from peft_bench.errors import PeftBenchError
from peft_bench.methods.adapter import AdapterModule

STATE_KEY = "peft_bench_adalora"


class AdaLoRAModule(AdapterModule):
    method_cfg: AdaLoRAConfig
    supports_4bit = True
    uses_layers = True

    def peft_config(self) -> AdaLoraConfig:
        m, total = self.method_cfg, self.total_steps
        if not total:
            raise PeftBenchError(
                "method=adalora needs the run's optimizer steps up front (its rank schedule)"
            )
        return AdaLoraConfig(
            **self.common(),
            target_r=m.r,
            init_r=max(m.r, round(m.init_r_factor * m.r)),
            lora_alpha=m.alpha,
            lora_dropout=m.dropout,
            total_step=total,
            tinit=int(m.tinit * total),
            tfinal=int(m.tfinal * total),
            deltaT=m.delta_t,
            beta1=m.beta1,
            beta2=m.beta2,
            orth_reg_weight=m.orth_reg_weight,
        )

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        step = self.global_step  # optimizer steps taken; the gradients of the last one are still there
        if step != getattr(self, "_allocated_at", None):
            self.model.base_model.update_and_allocate(step)
            self._allocated_at = step

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        allocator = self.model.base_model.rankallocator
        checkpoint[STATE_KEY] = {
            "ipt": allocator.ipt,
            "exp_avg_ipt": allocator.exp_avg_ipt,
            "exp_avg_unc": allocator.exp_avg_unc,
            "rank_pattern": self.model.peft_config["default"].rank_pattern,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get(STATE_KEY)
        if state is None:
            return
        allocator = self.model.base_model.rankallocator
        allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc = (
            state["ipt"],
            state["exp_avg_ipt"],
            state["exp_avg_unc"],
        )
        self.model.peft_config["default"].rank_pattern = state["rank_pattern"]
