"""The LightningModule every method shares: the training step, optimisation, metrics and the
divergence check. A method subclass only says how to turn the pretrained backbone into the model it
trains (timing, throughput and latency live in callbacks/run_stats.py)."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torchmetrics import MetricCollection
from transformers import get_linear_schedule_with_warmup

from peft_bench.config import DatasetConfig, MethodConfig, ModelConfig
from peft_bench.errors import DivergedError, PeftBenchError
from peft_bench.models import load_base, quantization_figures
from peft_bench.tasks import task_for
from peft_bench.tasks.generation import cut_at_stop, end_of_sequence, generated_tokens

# what an evaluation batch carries besides the model's inputs: the labels, the example's row, and for
# generation the left-padded prompt and the gold answer
EVALUATION_ONLY = frozenset({"labels", "example", "prompt_ids", "prompt_mask", "gold"})


class BenchModule(L.LightningModule):
    def __init__(
        self,
        method: MethodConfig,
        model: ModelConfig,
        dataset: DatasetConfig,
        accelerator: str = "cpu",
        total_steps: int | None = None,
        calibration: list[dict] | None = None,
    ):
        """`accelerator`: the device type the run trains on ("cpu", "cuda", "mps"), decided once by the
        run (train.device_type), so the 4-bit base is placed where training happens. `total_steps`: the
        optimizer steps the run will take, for methods whose schedule needs them up front (AdaLoRA).
        `calibration`: the training batches a data-driven init reads (calibration_batches says how many)."""
        super().__init__()
        self.method_cfg, self.model_cfg, self.task = method, model, task_for(dataset)
        self.accelerator_type, self.total_steps = accelerator, total_steps
        self.base_weight_bytes: int | None = None  # a 4-bit base's size in memory
        self.num_labels = getattr(dataset, "num_labels", None)
        wanted = self.calibration_batches(method)
        if len(calibration or ()) != wanted:
            raise PeftBenchError(
                f"method={method.name} reads {wanted} training batches before training; it was given "
                f"{len(calibration or ())} (train.build_module draws them from the datamodule)"
            )
        self.calibration, self.data_init = calibration, None
        backbone = self.load_backbone()
        # a data-driven init draws from its own RNG stream: training's dropout does not depend on it
        started = time.perf_counter()
        with torch.random.fork_rng(devices=[]) if calibration else nullcontext():
            self.model = self.build_model(backbone)
        if calibration:
            self.data_init = {
                "init": str(method.init).lower(),
                "batches": len(calibration),
                "examples": sum(len(b["input_ids"]) for b in calibration),
                "seconds": time.perf_counter() - started,
            }
            self.calibration = None
        self.model.train()  # from_pretrained returns eval mode, and Lightning keeps the mode it finds
        metrics = self.task.metrics(self.num_labels)
        self.monitor = (self.task.monitor, self.task.mode)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_splits = self.task.test_splits  # test, then test_<name> for each extra labelled split
        self.test_metrics = nn.ModuleList([metrics.clone(prefix=f"{s}/") for s in self.test_splits])
        # what the model predicts across each split (collapsed predictions are said), where the task has it
        spread = self.task.spread(self.num_labels)
        self.spreads = (
            nn.ModuleDict({s: spread.clone() for s in ("val", *self.test_splits)})
            if spread is not None
            else None
        )
        self.prediction_warnings: dict[str, str] = {}  # split -> a sentence, from its last evaluation
        self.probe_before: dict | None = None  # the task's probe before training (kept in checkpoints)
        self.generated = {"tokens": 0, "seconds": 0.0}  # the last test pass's generation, where it generates
        self.generation_checked = False  # check_generation ran in this pass
        # per test split, what the model answered on each example of the last test pass (predictions.parquet)
        self.test_examples: dict[str, dict[str, np.ndarray]] = {}
        self._examples: dict[str, list[dict[str, torch.Tensor]]] = {}
        # Checkpoints hold the trainable weights only; the frozen base comes from `pretrained`.
        self.strict_loading = False
        self._finite: torch.Tensor | None = (
            None  # all training losses finite since the last check (accelerators)
        )

    # ------------------------------------------------------------------ what a method defines

    defer_finite_check: bool | None = None  # None: check each step's loss on CPU, every N steps elsewhere
    mergeable = False  # True where the adapter folds into the base weights (merged inference)
    evaluate_best = True  # validate/test the best checkpoint by val F1; False: the final weights
    supports_4bit = False  # trains on a 4-bit base (model.quantization)
    supports_conv1d = True  # adapts GPT-2's Conv1D projections
    uses_layers = False  # honours method.layers (layer-selective adapters)

    @classmethod
    def config_problems(
        cls, method: MethodConfig, model: ModelConfig, conv1d_targets: list[str], bias_params: int
    ) -> list[str]:
        """What this method cannot do with this model, said before anything loads. `conv1d_targets`: the
        targeted modules that are GPT-2 Conv1D layers; `bias_params`: the model's bias terms (counted on
        the meta device)."""
        out = []
        name = method.name
        if model.quantization is not None and not cls.supports_4bit:
            out.append(
                f"method={name} cannot train on a 4-bit base (model.quantization={model.quantization}): "
                "PEFT has no bitsandbytes layer for it; set model.quantization=null, or use a method "
                "that has one (docs/methods.md, column 4-bit)"
            )
        if conv1d_targets and not cls.supports_conv1d:
            out.append(
                f"method={name} cannot adapt {model.name}'s Conv1D layers {conv1d_targets[:3]} (GPT-2 "
                "style): PEFT has no Conv1D layer for it; use a Llama-style model or another method "
                "(docs/methods.md, column Conv1D)"
            )
        if getattr(method, "layers", None) and not cls.uses_layers:
            out.append(
                f"method={name} adapts every layer: method.layers={method.layers} is not supported, "
                "set method.layers=null"
            )
        return out

    @classmethod
    def calibration_batches(cls, method: MethodConfig) -> int:
        """How many of the run's first training batches this method reads before training (a
        data-driven adapter init: EVA, CorDA, LoRA-GA); 0 for most."""
        return 0

    @classmethod
    def trial_problems(cls, run, facts, task) -> list[str]:
        """What this method cannot do with this model, found by trying it before the weights load (a
        method whose abilities are not declared: method=peft); `facts`: checks.ModelFacts."""
        return []

    def head_modules(self) -> list[str]:
        """A classification head is new and trained in full; a language model's head is pretrained."""
        return list(self.model_cfg.head_modules) if self.task.trains_head else []

    def load_backbone(self) -> nn.Module:
        """The pretrained (or randomly initialised) model with its task head; its frozen base in 4 bits
        when model.quantization says so (the head stays in full precision)."""
        model, self.base_weight_bytes = load_base(
            self.model_cfg, self.task, self.num_labels, self.accelerator_type
        )
        return model

    def can_merge(self) -> bool:
        """Whether merged inference is measured: the adapter folds into full-precision base weights."""
        return self.mergeable and self.model_cfg.quantization is None

    def build_model(self, backbone: nn.Module) -> nn.Module:
        """The model to train, built from the pretrained backbone (adapters, freezing, ...)."""
        raise NotImplementedError

    def extra_losses(self) -> dict[str, torch.Tensor]:
        """Regularisers added to the task loss, by name (each is logged apart)."""
        return {}

    def method_results(self) -> dict:
        """The method's own figures for results.json (and the 4-bit base's, where there is one)."""
        if self.model_cfg.quantization is None:
            return {}
        figures = quantization_figures(
            self.model, self.base_weight_bytes, self.model_cfg, self.task, self.num_labels
        )
        return {"quantization": figures}

    def after_training(self) -> dict | None:
        """Change the trained model before its final evaluation (one-shot pruning): the method's figures
        from before the change (train.py evaluates again and keeps both), or None if nothing changed."""
        return None

    def export(self, run_dir: Path) -> dict:
        """Write the trained weights a user would ship; returns their paths. Here: the trainable weights
        (a full fine-tune: all of them; BitFit: the biases and the head) as safetensors, which
        `load_state_dict(..., strict=False)` puts back on the same base. Adapter methods save PEFT's
        format."""
        if not self.method_cfg.export:
            return {}
        from safetensors.torch import save_file

        path = run_dir / "trainable.safetensors"
        trained = {
            n: p.detach().contiguous().cpu() for n, p in self.model.named_parameters() if p.requires_grad
        }
        save_file(trained, str(path))
        return {"export_file": path.name, "export_bytes": path.stat().st_size}

    def merged(self):
        """Context in which the adapter is folded into the base weights (no-op where not mergeable)."""
        return nullcontext()

    # ------------------------------------------------------------------ parameters

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total); PEFT's count knows that a 4-bit weight packs two values per byte."""
        if hasattr(self.model, "get_nb_trainable_parameters"):
            return self.model.get_nb_trainable_parameters()
        params = list(self.model.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """The method's trained adapter weights by name (as in the checkpoint's state_dict), for sparsity
        figures and pruning; {} for a method without one. Found through PEFT's own bookkeeping: every
        parameter a tuner layer keeps under its `adapter_layer_names` (LoRA's A, B and DoRA magnitude,
        HiRA's A and B, VeRA's vectors, ...), not by guessing from names."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        ids = set()
        for module in self.model.modules():
            if isinstance(module, BaseTunerLayer):
                for attr in module.adapter_layer_names:
                    container = getattr(module, attr, None)
                    for value in container.values() if hasattr(container, "values") else []:
                        ids.update(
                            id(p) for p in (value.parameters() if isinstance(value, nn.Module) else [value])
                        )
        return {n: p for n, p in self.named_parameters() if id(p) in ids and p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.check_finite()  # never keep non-finite weights as a checkpoint to resume from
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in trainable or not k.startswith("model.")
        }
        checkpoint["probe_before"] = self.probe_before  # a resumed run's "before" is the untrained model's
        # RNG streams (dropout), so a resumed run continues exactly as an uninterrupted one would
        checkpoint["rng"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.probe_before = checkpoint.get("probe_before", self.probe_before)
        rng = checkpoint.get("rng")
        if rng is not None and self.trainer.state.fn == "fit":  # resuming training, not evaluating
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

    # ------------------------------------------------------------------ steps

    def forward(self, batch: dict) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in EVALUATION_ONLY}
        return self.model(**inputs).logits

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        task_loss = loss = self.model(**batch).loss
        self.log(
            "train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["labels"])
        )
        for name, term in self.extra_losses().items():
            self.log(f"train/{name}", term, on_step=True, on_epoch=True)
            loss = loss + term
        finite = torch.isfinite(loss.detach())
        if self.trainer.world_size > 1:  # all ranks stop together (one stopping alone leaves DDP waiting)
            finite = self.trainer.strategy.reduce(finite.float(), reduce_op="min") > 0
        defer = self.defer_finite_check if self.defer_finite_check is not None else loss.device.type != "cpu"
        # on an accelerator a per-step check would stall the queue: gather on the device, check now and then
        if defer:
            self._finite = finite if self._finite is None else self._finite & finite
        elif not finite:  # free on the host: stop before the optimizer writes non-finite weights
            raise DivergedError(f"training loss became {loss.item()} at optimizer step {self.global_step}")
        return {"loss": loss, "task_loss": task_loss.detach()}  # the task loss alone: per-epoch figures

    def check_finite(self) -> None:
        """Raise if any training loss since the last check was non-finite (one host sync)."""
        if self._finite is not None and not bool(self._finite):
            raise DivergedError(
                f"training loss became non-finite at or before optimizer step {self.global_step} "
                f"(checked every trainer.log_every_n_steps={self.trainer.log_every_n_steps} "
                "steps on an accelerator)"
            )
        self._finite = None

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self._finite is not None and (batch_idx + 1) % self.trainer.log_every_n_steps == 0:
            self.check_finite()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits, _ = self.task.evaluate(self, batch, self.val_metrics, "val")
        if self.spreads is not None:
            self.task.update_spread(self.spreads["val"], logits, batch["labels"])

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        split = self.test_splits[dataloader_idx]
        logits, columns = self.task.evaluate(self, batch, self.test_metrics[dataloader_idx], split)
        if self.spreads is not None:
            self.task.update_spread(self.spreads[split], logits, batch["labels"])
        if columns is not None:
            columns["example"] = batch["example"]
            self._examples.setdefault(split, []).append(
                {
                    k: v.cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
                    for k, v in columns.items()
                }
            )

    use_kv_cache = True  # greedy generation with the KV cache (a method whose cached path is wrong: off)

    @torch.no_grad()
    def check_generation(self, prompt: torch.Tensor, tokenizer, steps: int = 4) -> None:
        """Greedy generation must continue a prompt as the model's own forward (the one training and the
        response perplexity use) would: up to `steps` tokens of transformers' generate, with the settings
        of generate_texts, against the forward's argmax after each, ties allowed: 4 units in the last place
        of the largest logit in the logits' own dtype (bf16 under bf16 autocast or a bf16 4-bit compute,
        where the cached and uncached paths round apart), at least 1e-4. Every process checks its own
        first prompt and the worst gap is shared, so all raise together (DDP). PeftBenchError, saying
        where they part, if they do: the generations would not be the trained model's."""
        eos = end_of_sequence(tokenizer)
        out = self.model.generate(
            input_ids=prompt[None],
            attention_mask=torch.ones_like(prompt)[None],
            max_new_tokens=steps,
            do_sample=False,
            num_beams=1,
            use_cache=self.use_kv_cache,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos,
        )[0, len(prompt) :]
        worst, tolerance = (0.0, 0, 0, 0), 1e-4  # gap, step, generated token, the forward's best
        for i in range(len(out)):
            seq = torch.cat([prompt, out[:i]])[None]
            raw = self.model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[0, -1]
            logits = raw.float()
            ulp = torch.finfo(raw.dtype).eps * float(logits.abs().max())
            tolerance = max(tolerance, 4 * ulp)
            gap = float(logits.max() - logits[out[i]])
            if gap > worst[0]:
                worst = (gap, i + 1, int(out[i]), int(logits.argmax()))
        gap = torch.tensor(worst[0], device=self.device)
        if self._trainer is not None and self.trainer.world_size > 1:
            gap = self.trainer.strategy.reduce(gap, reduce_op="max")
        if float(gap) > tolerance:
            where = (
                f"at new token {worst[1]} (it picked token {worst[2]}, {worst[0]:.4f} below the forward's "
                f"best, token {worst[3]})"
                if worst[0] > tolerance
                else f"on another process's prompt (by {float(gap):.4f})"
            )
            raise PeftBenchError(
                f"method={self.method_cfg.name}: greedy generation (transformers' generate with "
                f"{type(self.model).__name__}) parts from the model's own forward {where}: its generations "
                "would not be the trained model's, so exact match is not scored; use a causal_lm task "
                "(teacher-forced perplexity) for this method"
            )

    @torch.no_grad()
    def generate_texts(self, batch: dict, tokenizer, max_new_tokens: int, stops) -> list[str]:
        """Greedy continuations of the batch's left-padded prompts (the KV cache on, unless the method
        turns it off; each row stops at the end-of-sequence token or a stop string), decoded and cut at
        the first stop string. The first call of a pass checks generation against the forward."""
        prompts = batch["prompt_ids"]
        if not self.generation_checked:
            first = prompts[0][batch["prompt_mask"][0].bool()]
            self.check_generation(first, tokenizer)
            self.generation_checked = True
        if self.device.type == "cuda":
            torch.cuda.synchronize()  # the batch's forward is queued: not generation time
        started = time.perf_counter()
        out = self.model.generate(
            input_ids=prompts,
            attention_mask=batch["prompt_mask"],
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=self.use_kv_cache,
            repetition_penalty=1.0,  # greedy as such, whatever the model's generation_config says
            no_repeat_ngram_size=0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=end_of_sequence(tokenizer),
            stop_strings=list(stops) or None,
            tokenizer=tokenizer if stops else None,
        )
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        new = out[:, prompts.shape[1] :]
        self.generated["tokens"] += generated_tokens(new, end_of_sequence(tokenizer), tokenizer.pad_token_id)
        self.generated["seconds"] += time.perf_counter() - started
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        return [cut_at_stop(t, stops) for t in texts]

    def evaluation_figures(self) -> dict:
        """Figures of the last test pass beyond the metrics: generation throughput (tokens/s), where it
        generated."""
        g = self.generated
        return {"generation_tokens_per_s": g["tokens"] / g["seconds"]} if g["seconds"] > 0 else {}

    def on_test_epoch_start(self) -> None:
        self._examples = {}
        self.generated = {"tokens": 0, "seconds": 0.0}
        self.generation_checked = False

    def gather_examples(self) -> dict[str, dict[str, np.ndarray]]:
        """The test pass's per-example columns, every process's share (a DDP job's ranks each scored part
        of a split), in example order."""
        mine = {
            split: {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
            for split, batches in self._examples.items()
        }
        self._examples = {}
        parts = [mine]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, mine)
        out = {}
        for split in self.test_splits:
            shares = [p[split] for p in parts if split in p]
            if shares:
                cols = {k: np.concatenate([s[k] for s in shares]) for k in shares[0]}
                order = np.argsort(cols["example"], kind="stable")
                out[split] = {k: v[order] for k, v in cols.items()}
        return out

    def finish_split(self, split: str, metrics: MetricCollection, **log) -> None:
        """Log a split's figures (the task computes them) and say whether its predictions collapsed."""
        self.log_dict(self.task.compute(metrics), add_dataloader_idx=False, **log)
        metrics.reset()
        if self.spreads is not None:
            said = self.task.collapse_warning("validation" if split == "val" else split, self.spreads[split])
            self.prediction_warnings.pop(split, None)
            if said:
                self.prediction_warnings[split] = said
            self.spreads[split].reset()

    def on_test_epoch_end(self) -> None:
        for split, metrics in zip(self.test_splits, self.test_metrics, strict=True):
            self.finish_split(split, metrics)
        self.test_examples = self.gather_examples()

    # ------------------------------------------------------------------ checks at the boundaries

    def on_fit_start(self) -> None:
        self.task.before_training(self, self.trainer.datamodule)
        if self.probe_before is None and self.global_step == 0:  # a fresh start (a resume restored it)
            self.probe_before = self.task.probe(self, self.trainer.datamodule)

    def probe_results(self) -> dict:
        """The task's probe of the trained model against its value before training (forgetting)."""
        if self.probe_before is None:
            return {}
        return self.task.probe_results(self.probe_before, self.task.probe(self, self.trainer.datamodule))

    def on_validation_epoch_start(self) -> None:
        self.generation_checked = False  # each pass checks: the adapter it generates with has trained
        self.check_finite()  # before validation picks a checkpoint to keep

    def on_validation_epoch_end(self) -> None:
        self.finish_split("val", self.val_metrics, prog_bar=True)

    def on_train_epoch_end(self) -> None:
        self.check_finite()

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self):
        optimizer = self.make_optimizer()
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = get_linear_schedule_with_warmup(
            optimizer, int(self.method_cfg.warmup_ratio * total), total
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def make_optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the trainable weights, no weight decay on biases and norms."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": self.method_cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        fused = all(p.is_cuda for p in decay + no_decay)
        return torch.optim.AdamW(groups, lr=self.method_cfg.lr, fused=fused or None)
