"""Benchmarks: peft_bench's speed and memory against references, as ratios measured side by side.

    python -m peft_bench.bench [--short] [--out DIR] [--data ../shared/data]      (make bench)

Every comparison alternates A and B in one process (or one after the other as subprocesses where
peak memory is the measure), several repetitions, and reports the median ratio: absolute times
drift on shared machines, ratios much less. Writes DIR/BENCHMARKS.md and DIR/bench.json.
--short runs each case once on the tiny model and generated data (seconds; what `make test` runs).

Cases:
 1 framework overhead: a peft_bench run (Hydra config + Lightning + our module, LoRA r=8) against a
   hand-written PyTorch + PEFT loop over the same model, batches, precision and threads;
 2 the seeds' pipeline: HF Trainer padding every example to max_length (SST-2 128, IMDB 512),
   batch 16, against peft_bench's defaults; validation accuracy after the same examples (SST-2);
 3 MFU: the runs' model FLOP/s over the measured matmul peak (peft_bench.flops);
 4 QLoRA memory: quantized linear weights against fp32, peak memory against LoRA;
 5 pruning overhead: Sparse LoRA (L1 + gradual pruning) against LoRA at equal settings;
 6 sweep start-up: job start to first optimizer step, cold (empty cache) and warm (tokenized data cached).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def compose_run(overrides: list[str], run_dir: Path):
    """The job config of these overrides (as Hydra builds it), checked."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from peft_bench.train import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"run_dir={run_dir}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


class Bench:
    def __init__(self, short: bool, data: Path, out: Path):
        self.short, self.data, self.out = short, data.resolve(), out
        self.work = Path(tempfile.mkdtemp(prefix="peft_bench-bench-"))
        self.reps = 1 if short else 3
        self.figures: dict = {"short": short, "reps": self.reps, "machine": machine()}
        if short:
            self.base = ["model=tiny", "dataset=demo", "dataset.generator_size=600"]
        else:
            train, val = self.data / "sst2/train.jsonl", self.data / "sst2/validation.jsonl"
            self.base = ["model=minilm", "dataset=sst2", f"dataset.data_files={{train:'{train}',validation:'{val}'}}"]
        self.quiet = ["logger=none", "checkpoint=false", "trainer.limit_test_batches=2"]
        self.val = ["trainer.limit_val_batches=2"]
        self.steps = 6 if short else 60
        self._n = 0

    def run_dir(self) -> Path:
        self._n += 1
        return self.work / f"run{self._n}"

    # ------------------------------------------------------------------ one training, ours or bare

    def ours(self, extra: list[str]) -> dict:
        from peft_bench.train import run

        return run(compose_run([*self.base, *self.quiet, *self.val, f"trainer.max_steps={self.steps}", *extra],
                               self.run_dir()))

    def bare(self, extra: list[str]) -> dict:
        """A hand-written loop: same model (our LoRA module builds it with PEFT), same batches (our
        datamodule's loader), same optimizer settings and clipping, same threads; nothing else."""
        import lightning as L
        from hydra.utils import get_class
        from transformers import get_linear_schedule_with_warmup

        from peft_bench.config import check_config
        from peft_bench.models import load_tokenizer

        run = check_config(compose_run([*self.base, *self.quiet, *self.val, *extra], self.run_dir()))
        L.seed_everything(run.seed)
        dm = get_class(run.dataset._target_)(dataset=run.dataset, tokenizer=load_tokenizer(run.model),
                                             cache_dir=run.cache_dir, seed=run.seed)
        dm.prepare_data()
        model = get_class(run.method._target_)(method=run.method, model=run.model, dataset=run.dataset).model
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=run.method.lr, weight_decay=run.method.weight_decay)
        sched = get_linear_schedule_with_warmup(opt, int(run.method.warmup_ratio * self.steps), self.steps)
        examples = 0
        start = time.perf_counter()
        batches = iter(dm.train_dataloader())
        for _ in range(self.steps):
            batch = next(batches)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            examples += len(batch["labels"])
        return {"train_examples_per_s": examples / (time.perf_counter() - start)}

    @staticmethod
    def ours_rate(r: dict) -> float:
        return r["train_examples"] / r["train_compute_s"]

    # ------------------------------------------------------------------ the cases

    def overhead(self) -> None:
        ratios, ours, bare, mfu = [], [], [], []
        for _ in range(self.reps):
            a = self.ours([])
            b = self.bare([])["train_examples_per_s"]
            ours.append(self.ours_rate(a))
            bare.append(b)
            ratios.append(ours[-1] / b)
            mfu.append(a.get("mfu"))
        self.figures["overhead"] = {"ours_examples_per_s": ours, "bare_examples_per_s": bare, "ratios": ratios,
                                    "median_ratio": statistics.median(ratios), "target": 0.97}
        self.figures["mfu"] = {"mfu": mfu, "median": statistics.median(mfu), "target": 0.6,
                               "gemm_peak_flops_per_s": a.get("gemm_peak_flops_per_s"),
                               "model_flops_per_s": a.get("model_flops_per_s")}

    def pruning(self) -> None:
        ratios = []
        for _ in range(self.reps):
            lora = self.ours(["method=lora"])
            sparse = self.ours(["method=sparse_lora", "method.pruning.every_n_steps=5"])
            ratios.append(sparse["train_compute_s"] / lora["train_compute_s"])
        self.figures["pruning"] = {"time_ratios": ratios, "median_overhead": statistics.median(ratios) - 1,
                                   "target": 0.01, "final_sparsity": sparse.get("sparsity_exact_zero")}

    def subprocess_run(self, extra: list[str], env: dict | None = None) -> dict:
        """A job in a process of its own (its peak memory and start-up are its own); in short mode in
        this process, which is quicker and enough to show the case runs."""
        if self.short:
            saved = os.environ.copy()
            os.environ.update(env or {})
            try:
                return self.ours(extra)
            finally:
                os.environ.clear()
                os.environ.update(saved)
        d = self.run_dir()
        cmd = [sys.executable, "-m", "peft_bench", *self.base, *self.quiet, *self.val, f"trainer.max_steps={self.steps}", *extra,
               f"hydra.run.dir={d}"]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr[-2000:]}")
        return json.loads((d / "results.json").read_text())

    def qlora_memory(self) -> None:
        lora = self.subprocess_run(["method=lora"])
        qlora = self.subprocess_run(["method=qlora"])
        q = qlora["qlora"]
        self.figures["qlora"] = {
            "quantized_linear_weight_ratio": q["quantized_linear_weight_ratio"], "target": 0.16,
            "base_weight_ratio": q["base_weight_ratio"], "peak_memory_qlora": qlora["peak_memory_bytes"],
            "peak_memory_lora": lora["peak_memory_bytes"], "peak_ratio": qlora["peak_memory_bytes"] / lora["peak_memory_bytes"],
            "peak_memory_kind": qlora["peak_memory_kind"]}

    def startup(self) -> None:
        cold, warm = [], []
        for _ in range(self.reps):
            cache = Path(tempfile.mkdtemp(dir=self.work, prefix="cache"))
            cold.append(self.subprocess_run([], env={"PEFT_BENCH_CACHE": str(cache)})["time_to_first_step_s"])
            warm.append(self.subprocess_run([], env={"PEFT_BENCH_CACHE": str(cache)})["time_to_first_step_s"])
        self.figures["startup"] = {"cold_s": cold, "warm_s": warm, "median_ratio": statistics.median(
            [w / c for w, c in zip(warm, cold, strict=True)]), "target": 0.25}

    def seeds_pipeline(self) -> None:
        cases = [("sst2", 128)] if self.short else [("sst2", 128), ("imdb", 512)]
        out = {}
        for name, max_length in cases:
            steps = self.steps if name == "sst2" else (3 if self.short else 10)
            ratios, ours, trainer = [], [], []
            for _ in range(self.reps if name == "sst2" else max(1, self.reps - 1)):
                o = self.ours_for(name, steps)
                t = self.hf_trainer(name, max_length, steps)
                ours.append(self.ours_rate(o))
                trainer.append(t["train_examples_per_s"])
                ratios.append(ours[-1] / trainer[-1])
            out[name] = {"max_length": max_length, "ours_examples_per_s": ours, "trainer_examples_per_s": trainer,
                         "ratios": ratios, "median_ratio": statistics.median(ratios),
                         "target": 4.0 if name == "sst2" else 2.0}
        # accuracy after the same examples (SST-2): one longer run each
        steps = 8 if self.short else 125
        o = self.ours_for("sst2", steps, full_eval=True)
        t = self.hf_trainer("sst2", 128, steps, evaluate=True)
        out["sst2"].update(examples=steps * 16, ours_val_acc=o["val_acc"], trainer_val_acc=t["val_acc"],
                           ours_examples_per_s_long=self.ours_rate(o),
                           trainer_examples_per_s_long=t["train_examples_per_s"])
        self.figures["seeds_pipeline"] = out

    def dataset_args(self, name: str) -> list[str]:
        if self.short:
            return self.base
        model = ["model=minilm"]
        if name == "sst2":
            return [*model, *self.base[1:]]
        return [*model, "dataset=imdb", f"dataset.data_files='{self.data / 'imdb/train.jsonl.gz'}'"]

    def ours_for(self, name: str, steps: int, full_eval: bool = False) -> dict:
        from peft_bench.train import run

        evals = [] if full_eval else self.val
        return run(compose_run([*self.dataset_args(name), *self.quiet, f"trainer.max_steps={steps}", *evals],
                               self.run_dir()))

    def hf_trainer(self, name: str, max_length: int, steps: int, evaluate: bool = False) -> dict:
        """The seeds' pipeline: tokenized with padding='max_length', HF Trainer, batch 16, LoRA r=8 q/v."""
        import numpy as np
        from hydra.utils import get_class
        from transformers import Trainer, TrainingArguments

        from peft_bench.config import check_config
        from peft_bench.data.classification import load_raw, make_splits
        from peft_bench.models import load_tokenizer

        run = check_config(compose_run([*self.dataset_args(name), *self.quiet], self.run_dir()))
        tok = load_tokenizer(run.model)
        raw, _, _ = load_raw(run.dataset)
        splits, _ = make_splits(raw, run.dataset)
        field = run.dataset.text_field

        def encode(batch):
            enc = tok(batch[field], truncation=True, max_length=max_length, padding="max_length")
            enc["labels"] = batch[run.dataset.label_field]
            return enc

        train = splits["train"].shuffle(seed=run.seed).select(range(min(len(splits["train"]), steps * 16)))
        train = train.map(encode, batched=True, remove_columns=train.column_names)
        model = get_class(run.method._target_)(method=run.method, model=run.model, dataset=run.dataset).model
        args = TrainingArguments(output_dir=str(self.run_dir()), per_device_train_batch_size=16, max_steps=steps,
                                 learning_rate=run.method.lr, warmup_steps=int(run.method.warmup_ratio * steps),
                                 weight_decay=run.method.weight_decay, logging_strategy="no", save_strategy="no",
                                 report_to=[], dataloader_num_workers=0, seed=run.seed, disable_tqdm=True,
                                 per_device_eval_batch_size=64)
        trainer = Trainer(model=model, args=args, train_dataset=train)
        start = time.perf_counter()
        trainer.train()
        figures = {"train_examples_per_s": steps * 16 / (time.perf_counter() - start)}
        if evaluate:
            val = splits["validation"].map(encode, batched=True, remove_columns=splits["validation"].column_names)
            pred = trainer.predict(val)
            figures["val_acc"] = float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())
        return figures

    # ------------------------------------------------------------------ all of it

    def run_all(self) -> dict:
        for name in ("overhead", "pruning", "seeds_pipeline", "qlora_memory", "startup"):
            start = time.perf_counter()
            print(f"bench: {name} ...", flush=True)
            getattr(self, name)()
            print(f"bench: {name} done in {time.perf_counter() - start:.0f} s", flush=True)
        return self.figures


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def markdown(f: dict) -> str:
    def ok(value: float, target: float, higher: bool = True) -> str:
        return "meets" if (value >= target if higher else value <= target) else "**misses**"

    m = f["machine"]
    lines = ["# Benchmarks", "", f"Measured by `python -m peft_bench.bench{' --short' if f['short'] else ''}` on "
             f"{m['device']} ({m['cpus']} CPUs, {m['torch_threads']} torch threads, torch {m['torch']}); "
             f"{f['reps']} alternated repetition(s) per comparison, medians. Raw figures: bench.json.", ""]
    if f["short"]:
        lines += ["Short mode: tiny random model and generated data, one repetition: the figures only show the "
                  "script runs; they say nothing about speed.", ""]
    o, mfu = f["overhead"], f["mfu"]
    sp = f["seeds_pipeline"]
    q, p, s = f["qlora"], f["pruning"], f["startup"]
    rows = [
        ["1 framework overhead: peft_bench / hand-written loop, examples/s", f"{o['median_ratio']:.3f}", "≥ 0.97",
         ok(o["median_ratio"], 0.97), f"ours {statistics.median(o['ours_examples_per_s']):.1f}, bare "
         f"{statistics.median(o['bare_examples_per_s']):.1f} examples/s"],
        *[[f"2 seeds' pipeline ({k}, Trainer padding to {v['max_length']}): examples/s ratio",
           f"{v['median_ratio']:.2f}×", f"≥ {v['target']:.0f}×", ok(v["median_ratio"], v["target"]),
           f"ours {statistics.median(v['ours_examples_per_s']):.1f}, Trainer "
           f"{statistics.median(v['trainer_examples_per_s']):.1f} examples/s"] for k, v in sp.items()],
        ["2 validation accuracy after the same examples (SST-2): ours − Trainer",
         f"{sp['sst2']['ours_val_acc'] - sp['sst2']['trainer_val_acc']:+.4f}", "≥ −0.005",
         ok(sp["sst2"]["ours_val_acc"] - sp["sst2"]["trainer_val_acc"], -0.005),
         f"{sp['sst2']['examples']} examples: ours {sp['sst2']['ours_val_acc']:.4f}, Trainer "
         f"{sp['sst2']['trainer_val_acc']:.4f}"],
        ["3 MFU, LoRA (model FLOP/s / measured matmul peak)", f"{mfu['median']:.3f}", "≥ 0.6", ok(mfu["median"], 0.6),
         f"{mfu['model_flops_per_s'] / 1e9:.1f} GFLOP/s of {mfu['gemm_peak_flops_per_s'] / 1e9:.1f} peak"],
        ["4 QLoRA quantized linear weights / fp32", f"{q['quantized_linear_weight_ratio']:.3f}×", "≤ 0.16×",
         ok(q["quantized_linear_weight_ratio"], 0.16, higher=False),
         f"all weights {q['base_weight_ratio']:.3f}×; peak memory QLoRA / LoRA {q['peak_ratio']:.2f}× "
         f"({q['peak_memory_kind']})"],
        ["5 pruning overhead: Sparse LoRA / LoRA train time − 1", f"{p['median_overhead']:+.2%}", "< 1%",
         ok(p["median_overhead"], 0.01, higher=False), f"pruning every 5 steps; final sparsity {p['final_sparsity']}"],
        ["6 start-up, warm / cold (job start → first step)", f"{s['median_ratio']:.2f}", "≤ 0.25",
         ok(s["median_ratio"], 0.25, higher=False), f"cold {statistics.median(s['cold_s']):.2f} s, warm "
         f"{statistics.median(s['warm_s']):.2f} s"],
    ]
    lines += ["| case | measured | target | | detail |", "|---|---|---|---|---|",
              *["| " + " | ".join(r) + " |" for r in rows]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m peft_bench.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="tiny model, generated data, one repetition")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks", help="folder for BENCHMARKS.md, bench.json")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="SST-2 / IMDB jsonl folders")
    args = parser.parse_args(argv)
    if not args.short and not (args.data / "sst2" / "train.jsonl").is_file():
        parser.error(f"no SST-2 under {args.data} (sst2/train.jsonl): give --data, or run --short")
    os.environ.setdefault("PEFT_BENCH_CACHE", str(Path(tempfile.mkdtemp(prefix="peft_bench-bench-cache-"))))
    figures = Bench(args.short, args.data, args.out).run_all()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(figures, indent=2))
    (args.out / "BENCHMARKS.md").write_text(markdown(figures))
    print(markdown(figures))
    print(f"bench: wrote {args.out / 'BENCHMARKS.md'} and bench.json")


if __name__ == "__main__":
    main()
