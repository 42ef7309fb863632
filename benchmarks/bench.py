"""Benchmarks: peft_bench's speed and memory against references, as ratios measured side by side.

    python benchmarks/bench.py [--short] [--out DIR] [--data ../shared/data] [--work DIR]      (make bench)

Kept outside the installed package, beside BENCHMARKS.md (as PEFT keeps method_comparison/ outside
its library); it runs against whatever peft_bench is installed.

Every comparison alternates A and B in one process (or one after the other as subprocesses where
peak memory is the measure), several repetitions, and reports the median ratio: absolute times
drift on shared machines, ratios much less. Writes DIR/BENCHMARKS.md and DIR/bench.json.
--short runs each case once on the tiny model and generated data (seconds; what `make test` runs).

Cases:
 1 framework overhead: a peft_bench run (Hydra config + Lightning + our module, LoRA r=8) against a
   hand-written PyTorch + PEFT loop over the same model, batches, precision and threads;
 2 the seeds' pipeline: HF Trainer padding every example to max_length (SST-2 128, IMDB 512),
   batch 16, against peft_bench's defaults; validation accuracy after the same examples (SST-2);
 3 MFU: the runs' model FLOP/s over the measured matmul peak (peft_bench.flops): case 1's SST-2 runs and
   an IMDB run (mfu_imdb: longer sequences);
 4 QLoRA memory: quantized linear weights against fp32, peak memory against LoRA;
 5 pruning overhead: Sparse LoRA (L1 + gradual pruning) against LoRA at equal settings;
 6 sweep start-up: job start to first optimizer step, cold (empty cache) and warm (tokenized data cached);
 8 tuning: the median pruner's saving in trial compute at an equal budget, and the best validation
   score of the pruned against the unpruned search (python -m peft_bench.tune, same TPE seed);
 9 sweep pre-check: seconds per job of the check of a 200-job sweep (rank x seed) before its first job,
   against Hydra composing every job whole (the reference);
 11 generation: the generation task's scoring loop (collate, greedy decoding with the KV cache, decoding,
   stop strings) against transformers' generate called bare on the same prompts, batch and model;
 10 pairs: a text-pair job's (MRPC's sentence pairs, tokenized as pairs) examples/s against a single-text
   job on the same examples with the same tokens (each pair joined around the separator token);
 7 how cost grows: examples/s and peak memory of each method against rank (1..32) and sequence length
   (64..512), one process per point (its peak memory is its own), two interleaved rounds (the
   fastest of each point kept), plotted to scaling.png/.svg.
--cases NAME... runs only those cases and merges their figures into the existing bench.json.
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

from peft_bench.checks import compose_job
from peft_bench.env import setup_process
from peft_bench.resolvers import default_cache

ROOT = Path(__file__).resolve().parent.parent  # the checkout: benchmarks/ is beside peft_bench/
PREPARED: dict[str, str] = {}  # the user's cache (prepared models), read before the bench's own is set


class Bench:
    def __init__(self, short: bool, data: Path, out: Path, work: Path | None = None):
        self.short, self.data, self.out = short, data.resolve(), out
        self.work = work.resolve() if work else Path(tempfile.mkdtemp(prefix="peft_bench-bench-"))
        self.reps = 1 if short else 3
        self.figures: dict = {"short": short, "reps": self.reps, "machine": machine()}
        if short:
            self.base = ["model=tiny", "dataset=demo", "dataset.generator_size=600"]
        else:
            train, val = self.data / "sst2/train.jsonl", self.data / "sst2/validation.jsonl"
            self.base = [
                "model=minilm",
                "dataset=sst2",
                f"dataset.data_files={{train:'{train}',validation:'{val}'}}",
            ]
        self.quiet = ["logger=none", "checkpoint=false", "trainer.limit_test_batches=2"]
        self.val = ["trainer.limit_val_batches=2"]
        self.steps = 6 if short else 60
        self._n = 0
        self._raw: dict = {}
        self._imdb_run: dict | None = None

    def run_dir(self) -> Path:
        self._n += 1
        path = self.work / f"run{self._n}"
        if path.exists():  # a completed run there would be skipped, and its old timings read as new
            raise SystemExit(f"bench: {path} exists: --work resumes the tune case only; give a fresh folder")
        return path

    # ------------------------------------------------------------------ one training, ours or bare

    def ours(self, extra: list[str], base: list[str] | None = None) -> dict:
        """A peft_bench run; its results plus `step_starts`: the clock at the start of every training step.
        `base`: the model and dataset arguments, when not the suite's own (SST-2)."""
        import lightning as L

        from peft_bench.train import run

        starts: list[float] = []

        class StepClock(L.Callback):  # instrumentation only: one clock read per step
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                starts.append(time.perf_counter())

        base = self.base if base is None else base
        out = run(
            compose_job(
                [*base, *self.quiet, *self.val, f"trainer.max_steps={self.steps}", *extra],
                self.run_dir(),
            ),
            callbacks=[StepClock()],
        )
        return {**out, "step_starts": starts}

    def bare(self, extra: list[str]) -> dict:
        """A hand-written loop: same model (our LoRA module builds it with PEFT), same batches (our
        datamodule's loader), same optimizer settings and clipping, same threads; nothing else."""
        import lightning as L
        from hydra.utils import get_class
        from transformers import get_linear_schedule_with_warmup

        from peft_bench.checks import check_config
        from peft_bench.models import load_tokenizer

        run = check_config(compose_job([*self.base, *self.quiet, *self.val, *extra], self.run_dir()))
        L.seed_everything(run.seed)
        dm = get_class(run.dataset._target_)(
            dataset=run.dataset, tokenizer=load_tokenizer(run.model), cache_dir=run.cache_dir, seed=run.seed
        )
        dm.prepare_data()
        model = get_class(run.method._target_)(method=run.method, model=run.model, dataset=run.dataset).model
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=run.method.lr, weight_decay=run.method.weight_decay)
        sched = get_linear_schedule_with_warmup(opt, int(run.method.warmup_ratio * self.steps), self.steps)
        examples, starts = 0, []
        start = time.perf_counter()
        batches = iter(dm.train_dataloader())
        for _ in range(self.steps):
            batch = next(batches)
            starts.append(time.perf_counter())
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            examples += len(batch["labels"])
        return {"train_examples_per_s": examples / (time.perf_counter() - start), "step_starts": starts}

    @staticmethod
    def ours_rate(r: dict) -> float:
        return r["train_examples"] / r["train_compute_s"]

    # ------------------------------------------------------------------ the cases

    @staticmethod
    def step_time(runs: list[dict]) -> float:
        """Total time of the steps, each step at its fastest over the repetitions: the runs take the
        same batches in the same order, so step i is the same work in each, and a step slowed by
        something else on the machine counts at its unhindered time. Every step counts (a pruning
        step too); the first and last are left out (warm-up; no end mark)."""
        steps = [
            [b - a for a, b in zip(r["step_starts"], r["step_starts"][1:], strict=False)][1:] for r in runs
        ]
        return sum(min(times) for times in zip(*steps, strict=True))

    def overhead(self) -> None:
        ours_runs, bare_runs, ours, bare, mfu = [], [], [], [], []
        # 5 repetitions in full mode: a busy spell on a shared machine can slow one framework's run
        # by 5% for dozens of steps (measured here: 0.953 and 1.008 for the same code, minutes apart)
        for _ in range(self.reps if self.short else max(self.reps, 5)):
            a = self.ours([])
            b = self.bare([])
            ours_runs.append(a)
            bare_runs.append(b)
            ours.append(self.ours_rate(a))
            bare.append(b["train_examples_per_s"])
            mfu.append(a.get("mfu"))
        ratio = self.step_time(bare_runs) / self.step_time(ours_runs)
        self.figures["overhead"] = {
            "ours_examples_per_s": ours,
            "bare_examples_per_s": bare,
            "ratios": [o / b for o, b in zip(ours, bare, strict=True)],
            "median_ratio": ratio,
            "method": "per-step fastest over repetitions, summed",
            "target": 0.97,
        }
        self.figures["mfu"] = {
            "mfu": mfu,
            "median": statistics.median(mfu),
            "target": 0.6,
            "gemm_peak_flops_per_s": a.get("gemm_peak_flops_per_s"),
            "model_flops_per_s": a.get("model_flops_per_s"),
        }

    def mfu_imdb(self) -> None:
        """MFU on longer sequences: IMDB reviews at up to 512 tokens, length-grouped (bigger matmuls)."""
        steps = 3 if self.short else 30
        r = self._imdb_run or self.ours_for("imdb", steps)  # case 2's IMDB run where it ran: the same run
        self.figures["mfu_imdb"] = {
            "mfu": r.get("mfu"),
            "steps": steps,
            "target": 0.6,
            "model_flops_per_s": r.get("model_flops_per_s"),
            "gemm_peak_flops_per_s": r.get("gemm_peak_flops_per_s"),
            "tokens_per_example": r["train_tokens"] / r["train_examples"],
        }

    def pruning(self) -> None:
        lora, sparse = [], []
        for _ in range(self.reps):
            lora.append(self.ours(["method=lora"]))
            sparse.append(self.ours(["method=sparse_lora", "method.pruning.every_n_steps=5"]))
        self.figures["pruning"] = {
            "time_ratios": [
                s["train_compute_s"] / r["train_compute_s"] for s, r in zip(sparse, lora, strict=True)
            ],
            "median_overhead": self.step_time(sparse) / self.step_time(lora) - 1,
            "method": "per-step fastest over repetitions, summed",
            "target": 0.01,
            "final_sparsity": sparse[-1].get("sparsity_exact_zero"),
        }

    def tune_pruner(self) -> None:
        """The pruner's saving: the same study (LoRA's learning rate, TPE with the same seed, the same
        budget of finished trials) with and without the median pruner; trial compute (training time
        without validation, pruned trials included) and the best validation score of each."""
        import optuna

        trials = 3 if self.short else 8
        limits = (
            ["trainer.limit_train_batches=8"]
            if self.short
            else ["dataset.max_train_examples=1500", "trainer.limit_val_batches=6"]
        )
        arms = {}
        for prune in (True, False):
            folder = self.work / f"tune-prune-{prune}"
            args = [
                *self.base,
                "logger=none",
                "method=lora",
                "trainer.max_epochs=1",
                *limits,
                f"tune.trials={trials}",
                "tune.seeds=1",
                "tune.defaults=false",
                f"tune.prune={str(prune).lower()}",
                f"tune.dir={folder}",
            ]
            out = subprocess.run(
                [sys.executable, "-m", "peft_bench.tune", *args], cwd=ROOT, capture_output=True, text=True
            )
            if out.returncode != 0:
                raise RuntimeError(f"peft_bench.tune failed: {out.stderr[-2000:]}")
            runs = [json.loads(p.read_text()) for p in folder.glob("trials/lora/*/results.json")]
            url = f"sqlite:///{folder / 'study.db'}"
            name = json.loads((folder / "study.json").read_text())["studies"]["lora"]
            study = optuna.load_study(study_name=name, storage=url)
            arms["pruned" if prune else "unpruned"] = {
                "trial_compute_s": sum(r.get("train_compute_s", 0.0) for r in runs),
                "best_val": study.best_value,
                "best_lr": study.best_params["lr"],
                "states": [t.state.name for t in study.trials],
            }
        p, u = arms["pruned"], arms["unpruned"]
        self.figures["tune_pruner"] = {
            "saving": 1 - p["trial_compute_s"] / u["trial_compute_s"],
            "best_val_delta": p["best_val"] - u["best_val"],
            "trials": trials,
            "arms": arms,
            "target_saving": 0.3,
            "target_delta": -0.005,
        }

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
        cmd = [
            sys.executable,
            "-m",
            "peft_bench",
            *self.base,
            *self.quiet,
            *self.val,
            f"trainer.max_steps={self.steps}",
            *extra,
            f"hydra.run.dir={d}",
        ]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr[-2000:]}")
        return json.loads((d / "results.json").read_text())

    def qlora_memory(self) -> None:
        lora = self.subprocess_run(["method=lora"])
        qlora = self.subprocess_run(["method=qlora"])
        q = qlora["quantization"]
        self.figures["qlora"] = {
            "quantized_linear_weight_ratio": q["quantized_linear_weight_ratio"],
            "target": 0.16,
            "base_weight_ratio": q["base_weight_ratio"],
            "peak_memory_qlora": qlora["peak_memory_bytes"],
            "peak_memory_lora": lora["peak_memory_bytes"],
            "peak_ratio": qlora["peak_memory_bytes"] / lora["peak_memory_bytes"],
            "peak_memory_kind": qlora["peak_memory_kind"],
        }

    def startup(self) -> None:
        """SST-2 (67k short sentences: a fast tokenizer needs ~1 s) and IMDB (25k long reviews):
        what the tokenization cache saves depends on how much tokenizing there is. Timed from the
        job's run() (the figure the target is on) and from the process start (imports included)."""
        out = {}
        for name in ["sst2"] if self.short else ["sst2", "imdb"]:
            times: dict = {"cold_s": [], "warm_s": [], "cold_process_s": [], "warm_process_s": []}
            for _ in range(self.reps):
                cache = Path(tempfile.mkdtemp(dir=self.work, prefix="cache"))
                args = [
                    *self.dataset_args(name),
                    "trainer.max_steps=1",
                ]  # after the base arguments: these win
                for kind in ("cold", "warm"):
                    r = self.subprocess_run(args, env={"PEFT_BENCH_CACHE": str(cache)})
                    times[f"{kind}_s"].append(r["time_to_first_step_s"])
                    times[f"{kind}_process_s"].append(r.get("process_to_first_step_s"))
            ratio = statistics.median([w / c for w, c in zip(times["warm_s"], times["cold_s"], strict=True)])
            process = [
                w / c
                for w, c in zip(times["warm_process_s"], times["cold_process_s"], strict=True)
                if w and c
            ]
            out[name] = {
                **times,
                "target": 0.25,
                "median_ratio": ratio,
                "median_ratio_process": statistics.median(process) if process else None,
            }
        self.figures["startup"] = out

    def seeds_pipeline(self) -> None:
        cases = [("sst2", 128)] if self.short else [("sst2", 128), ("imdb", 512)]
        out = {}
        for name, max_length in cases:
            # IMDB: the Trainer does ~2 examples/s at 512 tokens on this CPU, so one long repetition
            # (30 steps: a sample of the epoch's length-grouped batches) rather than several short ones
            steps = self.steps if name == "sst2" else (3 if self.short else 30)
            ratios, ours, trainer = [], [], []
            for _ in range(self.reps if name == "sst2" else 1):
                o = self.ours_for(name, steps)
                if name == "imdb":
                    self._imdb_run = o
                t = self.hf_trainer(name, max_length, steps)
                ours.append(self.ours_rate(o))
                trainer.append(t["train_examples_per_s"])
                ratios.append(ours[-1] / trainer[-1])
            out[name] = {
                "max_length": max_length,
                "steps": steps,
                "ours_examples_per_s": ours,
                "trainer_examples_per_s": trainer,
                "ratios": ratios,
                "median_ratio": statistics.median(ratios),
                "target": 4.0 if name == "sst2" else 2.0,
            }
        # accuracy after the same examples (SST-2), over seeds: one seed's 2,000 examples swing by points
        steps, seeds = (8, [42]) if self.short else (125, [42, 1, 2])
        acc = {"ours": [], "trainer": []}
        for seed in seeds:
            acc["ours"].append(
                self.ours_for("sst2", steps, full_eval=True, extra=[f"seed={seed}"])["val_acc"]
            )
            acc["trainer"].append(
                self.hf_trainer("sst2", 128, steps, evaluate=True, extra=[f"seed={seed}"])["val_acc"]
            )
        out["sst2"].update(
            examples=steps * 16,
            seeds=seeds,
            ours_val_acc_per_seed=acc["ours"],
            trainer_val_acc_per_seed=acc["trainer"],
            ours_val_acc=statistics.mean(acc["ours"]),
            trainer_val_acc=statistics.mean(acc["trainer"]),
        )
        self.figures["seeds_pipeline"] = out

    def dataset_args(self, name: str) -> list[str]:
        if self.short:
            return self.base
        model = ["model=minilm"]
        if name == "sst2":
            return [*model, *self.base[1:]]
        return [*model, "dataset=imdb", f"dataset.data_files='{self.data / 'imdb/train.jsonl.gz'}'"]

    def ours_for(self, name: str, steps: int, full_eval: bool = False, extra: list[str] = ()) -> dict:
        from peft_bench.train import run

        evals = [] if full_eval else self.val
        return run(
            compose_job(
                [*self.dataset_args(name), *self.quiet, f"trainer.max_steps={steps}", *evals, *extra],
                self.run_dir(),
            )
        )

    def hf_trainer(
        self, name: str, max_length: int, steps: int, evaluate: bool = False, extra: list[str] = ()
    ) -> dict:
        """The seeds' pipeline: tokenized with padding='max_length', HF Trainer, batch 16, LoRA r=8 q/v,
        the checkpoint's own attention dropout (peft_bench's default turns it off)."""
        import numpy as np
        from hydra.utils import get_class
        from transformers import Trainer, TrainingArguments

        from peft_bench.checks import check_config
        from peft_bench.data.base import RawData
        from peft_bench.data.classification import TextClassificationDataModule, make_splits
        from peft_bench.models import load_tokenizer

        run = check_config(
            compose_job(
                [*self.dataset_args(name), *self.quiet, "model.attention_dropout=null", *extra],
                self.run_dir(),
            )
        )
        tok = load_tokenizer(run.model)
        if name not in self._raw:  # parsed once per dataset, not per repetition
            validate = TextClassificationDataModule(run.dataset, tok, run.cache_dir, run.seed).validate
            raw = RawData(run.dataset, validate)
            self._raw[name] = make_splits(raw.splits, run.dataset, raw.unlabelled)[0]
        splits = self._raw[name]
        field = run.dataset.text_field

        def encode(batch):
            enc = tok(batch[field], truncation=True, max_length=max_length, padding="max_length")
            enc["labels"] = batch[run.dataset.label_field]
            return enc

        train = splits["train"].shuffle(seed=run.seed).select(range(min(len(splits["train"]), steps * 16)))
        train = train.map(encode, batched=True, remove_columns=train.column_names)
        model = get_class(run.method._target_)(method=run.method, model=run.model, dataset=run.dataset).model
        args = TrainingArguments(
            output_dir=str(self.run_dir()),
            per_device_train_batch_size=16,
            max_steps=steps,
            learning_rate=run.method.lr,
            warmup_steps=int(run.method.warmup_ratio * steps),
            weight_decay=run.method.weight_decay,
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            dataloader_num_workers=0,
            seed=run.seed,
            disable_tqdm=True,
            per_device_eval_batch_size=64,
        )
        trainer = Trainer(model=model, args=args, train_dataset=train)
        start = time.perf_counter()
        trainer.train()
        figures = {"train_examples_per_s": steps * 16 / (time.perf_counter() - start)}
        if evaluate:
            val = splits["validation"].map(
                encode, batched=True, remove_columns=splits["validation"].column_names
            )
            pred = trainer.predict(val)
            figures["val_acc"] = float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())
        return figures

    # ------------------------------------------------------------------ 10: pairs against single texts

    def pair_files(self) -> tuple[Path, Path]:
        """MRPC's training pairs (generated sentences two by two in short mode), and the same examples as
        one text each: the two joined around the tokenizer's separator token, so that each example is the
        same tokens as its pair ([CLS] a [SEP] b [SEP]) and the length-grouped batches are the same."""
        from peft_bench.models import load_tokenizer

        if self.short:
            from peft_bench.data.demo import build_demo

            sentences = list(build_demo(600, 0)["train"]["sentence"])
            pairs = [
                {"sentence1": a, "sentence2": b, "label": i % 2}
                for i, (a, b) in enumerate(zip(sentences[::2], sentences[1::2], strict=False))
            ]
        else:
            with open(self.data / "glue" / "mrpc" / "train.jsonl") as f:
                pairs = [json.loads(line) for line in f]
        sep = load_tokenizer(compose_job(self.pair_base(None)).model).sep_token
        pair_file, single_file = self.work / "pairs.jsonl", self.work / "joined.jsonl"
        pair_file.write_text("".join(json.dumps(r) + "\n" for r in pairs))
        single_file.write_text(
            "".join(
                json.dumps({"text": f"{r['sentence1']} {sep} {r['sentence2']}", "label": r["label"]}) + "\n"
                for r in pairs
            )
        )
        return pair_file, single_file

    def pair_base(self, files: Path | None) -> list[str]:
        model = "model=tiny" if self.short else "model=minilm"
        return [model, "dataset=mrpc", *([f"dataset.data_files='{files}'"] if files else [])]

    def pairs(self) -> None:
        """A text-pair job against a single-text job on the same examples and the same tokens (the same
        config but for dataset.text_pair_field), alternated; examples/s from the steps at their fastest
        over the repetitions (the same lengths give the same length-grouped batches, step for step)."""
        pair_file, single_file = self.pair_files()
        single_args = ["dataset.text_pair_field=null", "dataset.text_field=text"]
        pair_runs, single_runs = [], []
        for _ in range(self.reps):
            pair_runs.append(self.ours([], base=self.pair_base(pair_file)))
            single_runs.append(self.ours(single_args, base=self.pair_base(single_file)))
        tokens = {
            kind: statistics.median(r["train_tokens"] / r["train_examples"] for r in runs)
            for kind, runs in (("pair", pair_runs), ("single", single_runs))
        }
        self.figures["pairs"] = {
            "data": "generated pairs" if self.short else "MRPC train",
            "steps": self.steps,
            "pair_examples_per_s": [self.ours_rate(r) for r in pair_runs],
            "single_examples_per_s": [self.ours_rate(r) for r in single_runs],
            "ratios": [
                self.ours_rate(p) / self.ours_rate(s) for p, s in zip(pair_runs, single_runs, strict=True)
            ],
            "median_ratio": self.step_time(single_runs) / self.step_time(pair_runs),
            "method": "per-step fastest over repetitions, summed",
            "pair_tokens_per_example": tokens["pair"],
            "single_tokens_per_example": tokens["single"],
            "target": 0.1,
        }
        print(
            f"bench: pairs {self.figures['pairs']['median_ratio']:.3f} examples/s pair / single "
            f"({tokens['pair']:.1f} and {tokens['single']:.1f} tokens per example)",
            flush=True,
        )

    # ------------------------------------------------------------------ 11: generation

    def generation(self) -> None:
        """The generation task's scoring loop (our collate: left-padded prompts; module.generate_texts:
        greedy decoding with the KV cache, then decoding and the stop-string cut) against transformers'
        generate called bare on the same prompt tensors, batch and model (LoRA on SmolLM2-135M-Instruct;
        --short: the tiny Llama), alternated; tokens/s of each, each row's tokens up to its end."""
        from hydra.utils import get_class
        from omegaconf import OmegaConf

        from peft_bench.data.instruction import InstructionDataModule
        from peft_bench.models import load_tokenizer
        from peft_bench.tasks.generation import end_of_sequence, generated_tokens

        gsm8k = self.data / "gsm8k" / "train.jsonl"
        if not gsm8k.is_file():
            print(f"bench: generation skipped: no GSM8K problems at {gsm8k} (give --data)", flush=True)
            return
        n, batch, new = (8, 4, 16) if self.short else (32, 16, 64)
        model = (
            ["model=tiny_llama"]
            if self.short
            else ["model=smollm2", f"model.pretrained={PREPARED['cache']}/models/smollm2-135m-instruct"]
        )
        args = [
            *model,
            "dataset=gsm8k",
            f"dataset.data_files={{train:'{gsm8k}'}}",
            f"dataset.max_test_examples={n}",
            "dataset.max_train_examples=100",
            f"dataset.eval_batch_size={batch}",
            f"dataset.max_new_tokens={new}",
            "dataset.forgetting_tokens=0",  # the scoring loop alone
        ]
        r = OmegaConf.to_object(compose_job(args, str(self.run_dir())))
        tok = load_tokenizer(r.model)
        dm = InstructionDataModule(r.dataset, tok, r.cache_dir, seed=0)
        dm.prepare_data()
        module = get_class(r.method._target_)(method=r.method, model=r.model, dataset=r.dataset).eval()
        batches = [
            dm.collate([dm.data["test"][i] for i in range(j, min(n, j + batch))]) for j in range(0, n, batch)
        ]
        eos, pad = end_of_sequence(tok), tok.pad_token_id

        def ours() -> tuple[int, float]:
            module.generated = {"tokens": 0, "seconds": 0.0}
            start = time.perf_counter()
            for b in batches:
                module.generate_texts(b, tok, new, [])
            return module.generated["tokens"], time.perf_counter() - start

        def bare() -> tuple[int, float]:
            tokens, start = 0, time.perf_counter()
            with torch.no_grad():
                for b in batches:
                    out = module.model.generate(
                        input_ids=b["prompt_ids"],
                        attention_mask=b["prompt_mask"],
                        max_new_tokens=new,
                        do_sample=False,
                        pad_token_id=pad,
                        eos_token_id=eos,
                    )
                    tokens += generated_tokens(out[:, b["prompt_ids"].shape[1] :], eos, pad)
            return tokens, time.perf_counter() - start

        ours()  # warm-up: first-call allocations
        rates = {"ours": [], "bare": []}
        for _ in range(self.reps):
            for name, fn in (("ours", ours), ("bare", bare)):
                tokens, seconds = fn()
                rates[name].append(tokens / seconds)
        ratios = [a / b for a, b in zip(rates["ours"], rates["bare"], strict=True)]
        self.figures["generation"] = {
            "model": r.model.name,
            "prompts": n,
            "batch": batch,
            "max_new_tokens": new,
            "ours_tokens_per_s": rates["ours"],
            "bare_tokens_per_s": rates["bare"],
            "ratios": ratios,
            "median_ratio": statistics.median(ratios),
            "target": 0.9,
        }
        print(f"bench: generation {statistics.median(ratios):.3f} tokens/s ours / bare generate", flush=True)

    # ------------------------------------------------------------------ 9: the sweep's pre-check

    def precheck(self) -> None:
        """The pre-check of a 200-job sweep (rank=1..20 x seed=1..10, tiny model: its facts are read
        once, so the figure is the composing and checking) against the reference that has Hydra compose
        every job whole (timed on the first 40 jobs: the per-job cost is flat), alternated."""
        from hydra import compose, initialize_config_dir

        from peft_bench.config import CONF_DIR
        from peft_bench.sweep import JobComposer, check_jobs

        class EveryJob(JobComposer):  # the reference: no group-choice base, every job composed whole
            def split(self, job):
                return None, ()

        sweep = ["model=tiny", "dataset=demo", "logger=none"]
        ranks, seeds, ref_jobs = (4, 5, 20) if self.short else (20, 10, 40)
        grid = [f"rank=range(1,{ranks + 1})", f"seed=range(1,{seeds + 1})"]
        fast_s, ref_s = [], []
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):

            def composed(job):  # as the sweep callback composes
                return compose(config_name="config", overrides=[*job, "run_dir=/dev/null"])

            check_jobs([*sweep, "rank=8", "seed=1"], composed)  # imports and model facts: not timed
            for _ in range(self.reps):
                start = time.perf_counter()
                n = len(check_jobs([*sweep, *grid], composed))
                fast_s.append((time.perf_counter() - start) / n)
                ref = [*sweep, f"rank=range(1,{ref_jobs // seeds + 1})", grid[1]]
                start = time.perf_counter()
                m = len(check_jobs(ref, EveryJob(composed)))
                ref_s.append((time.perf_counter() - start) / m)
        ratios = [f / r for f, r in zip(fast_s, ref_s, strict=True)]
        self.figures["precheck"] = {
            "jobs": n,
            "reference_jobs": m,
            "per_job_s": fast_s,
            "reference_per_job_s": ref_s,
            "ratios": ratios,
            "median_ratio": statistics.median(ratios),
            "sweep_s": n * min(fast_s),
            "target_sweep_s": 10.0,
        }
        print(
            f"bench: precheck {1e3 * min(fast_s):.1f} ms per job ({n} jobs: {n * min(fast_s):.2f} s), "
            f"Hydra compose of every job {1e3 * min(ref_s):.1f} ms per job; ratio "
            f"{statistics.median(ratios):.3f}",
            flush=True,
        )

    # ------------------------------------------------------------------ 7: how cost grows

    RANK_METHODS = ("lora", "sparse_lora", "hira", "qlora", "lora_layers")  # full fine-tuning has no rank
    METHODS = (*RANK_METHODS, "full")

    def scaling(self) -> None:
        ranks, lengths = ([2, 8], [16, 32]) if self.short else ([1, 2, 4, 8, 16, 32], [64, 128, 256, 512])
        fixed_length, fixed_rank = lengths[1], 8
        points = [{"method": m, "rank": r, "length": fixed_length} for m in self.RANK_METHODS for r in ranks]
        points += [{"method": "full", "rank": fixed_rank, "length": fixed_length}]
        points += [
            {"method": m, "rank": fixed_rank, "length": n}
            for m in self.METHODS
            for n in lengths
            if n != fixed_length
        ]
        points += [
            {"method": m, "rank": fixed_rank, "length": fixed_length}
            for m in self.RANK_METHODS
            if fixed_rank not in ranks
        ]
        # Rounds over all points, one after another: a busy spell of the machine then slows one round
        # of a point, not both; each point keeps its fastest round (peak memory: the largest).
        rounds: list[list[dict]] = []
        for _ in range(1 if self.short else 2):
            rounds.append([])
            for spec in points:
                spec = {**spec, "batch_size": 8, "steps": 2 if self.short else 5}
                if self.short:  # in this process: quick, and enough to show the case runs
                    rounds[-1].append(scaling_point(spec, short=True, data=self.data))
                    continue
                cmd = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--point",
                    json.dumps(spec),
                    "--data",
                    str(self.data),
                ]
                out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
                if out.returncode != 0:
                    raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr[-2000:]}")
                rounds[-1].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"bench: scaling round {len(rounds)} {rounds[-1][-1]}", flush=True)
        figures = []
        for tries in zip(*rounds, strict=True):
            best = max(tries, key=lambda p: p["examples_per_s"])
            figures.append(
                {
                    **best,
                    "examples_per_s_rounds": [p["examples_per_s"] for p in tries],
                    "peak_memory_bytes": max(p["peak_memory_bytes"] for p in tries),
                }
            )
        self.figures["scaling"] = {
            "ranks": ranks,
            "lengths": lengths,
            "fixed_length": fixed_length,
            "fixed_rank": fixed_rank,
            "points": figures,
        }
        scaling_plot(self.figures["scaling"], self.out)

    # ------------------------------------------------------------------ all of it

    CASES = (
        "overhead",
        "pruning",
        "seeds_pipeline",
        "mfu_imdb",
        "qlora_memory",
        "startup",
        "scaling",
        "tune_pruner",
        "precheck",
        "pairs",
        "generation",
    )

    def run_all(self, cases: list[str] | None = None) -> dict:
        for name in cases or self.CASES:
            start = time.perf_counter()
            print(f"bench: {name} ...", flush=True)
            getattr(self, name)()
            print(f"bench: {name} done in {time.perf_counter() - start:.0f} s", flush=True)
        return self.figures


def scaling_point(spec: dict, short: bool, data: Path) -> dict:
    """Training examples/s and peak memory of one method at one rank and sequence length: the method's
    model as a run builds it, batches of exactly `length` real tokens (IMDB reviews that long, cut
    there; generated sentences joined in short mode), AdamW, clipping, the L1 term where the method
    has one; one warm-up step, then `steps` steps timed one by one (median). The framework's own
    cost is case 1's."""
    from hydra.utils import get_class

    from peft_bench.checks import check_config
    from peft_bench.measure import peak_memory, reset_peak_memory
    from peft_bench.models import load_tokenizer

    method, rank, length, bs, steps = (spec[k] for k in ("method", "rank", "length", "batch_size", "steps"))
    base = ["model=tiny", "dataset=demo"] if short else ["model=minilm", "dataset=imdb"]
    with tempfile.TemporaryDirectory() as tmp:
        run = check_config(
            compose_job(
                [*base, f"method={method}", f"rank={rank}", f"dataset.max_length={length}", "logger=none"],
                Path(tmp),
            )
        )
    tok = load_tokenizer(run.model)
    need = bs * (steps + 1)
    texts = long_texts(short, data, need * 4)
    rows = [ids for ids in tok(texts, truncation=True, max_length=length)["input_ids"] if len(ids) == length][
        :need
    ]
    if len(rows) < need:
        raise RuntimeError(f"scaling: only {len(rows)} texts of {length} tokens, {need} needed")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ids = torch.tensor(rows).view(steps + 1, bs, length)
    labels = torch.arange(need).view(steps + 1, bs) % 2
    module = get_class(run.method._target_)(method=run.method, model=run.model, dataset=run.dataset)
    model = module.to(device).model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda" or None)
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    reset_peak_memory()

    def step(i: int) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(
                input_ids=ids[i].to(device),
                attention_mask=torch.ones_like(ids[i]).to(device),
                labels=labels[i].to(device),
            ).loss
            loss = loss + sum(module.extra_losses().values())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(0)
    times = []
    for i in range(1, steps + 1):  # each step timed: the median resists a step slowed by the machine
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = steps * statistics.median(times)
    trainable, total = module.parameter_counts()
    return {
        **spec,
        "examples_per_s": steps * bs / seconds,
        "tokens_per_s": steps * bs * length / seconds,
        "trainable_params": trainable,
        "total_params": total,
        **peak_memory(),
    }


def long_texts(short: bool, data: Path, n: int) -> list[str]:
    """Texts long enough to cut at 512 tokens: IMDB's longest reviews, or generated sentences joined."""
    if short:
        from peft_bench.data.demo import build_demo

        sentences = list(build_demo(600, 0)["train"]["sentence"])
        return [" ".join(sentences[i : i + 20]) for i in range(0, len(sentences) - 20, 5)][:n]
    import gzip

    with gzip.open(data / "imdb" / "train.jsonl.gz", "rt") as f:
        texts = [json.loads(line)["text"] for line in f]
    return sorted(texts, key=len, reverse=True)[:n]


def scaling_plot(f: dict, out: Path) -> None:
    """scaling.png/.svg: examples/s and peak memory against rank (left) and sequence length (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = f["points"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    for col, (axis, fixed, other) in enumerate(
        (("rank", f["fixed_length"], "length"), ("length", f["fixed_rank"], "rank"))
    ):
        for method in Bench.METHODS:
            pts = sorted(
                ((p[axis], p) for p in points if p["method"] == method and p[other] == fixed),
                key=lambda t: t[0],
            )
            if method == "full" and axis == "rank":  # no rank: its one point as a level
                for row, key in enumerate(("examples_per_s", "peak_memory_bytes")):
                    if pts:
                        scale = 1 if row == 0 else 2**-20
                        axes[row][col].axhline(pts[0][1][key] * scale, color="k", ls="--", lw=1, label="full")
                continue
            if not pts:
                continue
            xs = [x for x, _ in pts]
            axes[0][col].plot(xs, [p["examples_per_s"] for _, p in pts], marker="o", label=method)
            axes[1][col].plot(xs, [p["peak_memory_bytes"] / 2**20 for _, p in pts], marker="o", label=method)
        for row in (0, 1):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            ticks = f["ranks"] if axis == "rank" else f["lengths"]
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.set_xlabel("LoRA rank" if axis == "rank" else "sequence length (tokens)")
            ax.set_title(
                f"{'rank' if axis == 'rank' else 'sequence length'} varies "
                f"({other} {fixed}, batch {points[0]['batch_size']})"
            )
            ax.grid(alpha=0.3)
        axes[0][col].set_ylabel("training examples/s")
        axes[1][col].set_ylabel(f"peak memory, MiB ({points[0]['peak_memory_kind']})")
    axes[0][0].legend(fontsize=8)
    axes[0][1].legend(fontsize=8)
    out.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "svg"):
        fig.savefig(out / f"scaling.{ext}", dpi=120)
    plt.close(fig)


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }


NOTES = "<!-- notes: written by hand, kept when the figures are regenerated -->"


def markdown(f: dict, notes: str = "") -> str:
    def ok(value: float, target: float, higher: bool = True) -> str:
        return "meets" if (value >= target if higher else value <= target) else "**misses**"

    m = f["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `python benchmarks/bench.py{' --short' if f['short'] else ''}` on "
        f"{m['device']} ({m['cpus']} CPUs, {m['torch_threads']} torch threads, torch {m['torch']}); "
        f"{f['reps']} alternated repetition(s) per comparison, medians. Raw figures: bench.json.",
        "",
    ]
    if f["short"]:
        lines += [
            "Short mode: tiny random model and generated data, one repetition: the figures only show the "
            "script runs; they say nothing about speed.",
            "",
        ]
    rows = []
    if "overhead" in f:
        o = f["overhead"]
        rows += [
            [
                "1 framework overhead: peft_bench / hand-written loop, examples/s",
                f"{o['median_ratio']:.3f}",
                "≥ 0.97",
                ok(o["median_ratio"], 0.97),
                f"steps at their fastest of {len(o['ratios'])} repetitions; whole runs: ours "
                f"{statistics.median(o['ours_examples_per_s']):.1f}, "
                f"bare {statistics.median(o['bare_examples_per_s']):.1f} "
                f"examples/s (ratios {fmt_list(o['ratios'])})",
            ]
        ]
    if "seeds_pipeline" in f:
        sp = f["seeds_pipeline"]
        a = sp["sst2"]
        rows += [
            *[
                [
                    f"2 seeds' pipeline ({k}, Trainer padding to {v['max_length']}): examples/s ratio",
                    f"{v['median_ratio']:.2f}×",
                    f"≥ {v['target']:.0f}×",
                    ok(v["median_ratio"], v["target"]),
                    f"ours {statistics.median(v['ours_examples_per_s']):.1f}, Trainer "
                    f"{statistics.median(v['trainer_examples_per_s']):.1f} examples/s "
                    f"({v.get('steps', '?')} steps)",
                ]
                for k, v in sp.items()
            ],
            [
                "2 validation accuracy after the same examples (SST-2): ours − Trainer",
                f"{a['ours_val_acc'] - a['trainer_val_acc']:+.4f}",
                "≥ −0.005",
                ok(a["ours_val_acc"] - a["trainer_val_acc"], -0.005),
                f"{a['examples']} examples, mean over seeds {a.get('seeds', [42])}: "
                f"ours {a['ours_val_acc']:.4f} "
                f"{fmt_list(a.get('ours_val_acc_per_seed'))}, Trainer {a['trainer_val_acc']:.4f} "
                f"{fmt_list(a.get('trainer_val_acc_per_seed'))}",
            ],
        ]

    def mfu_row(data: str, mfu: float, figures: dict, detail: str) -> list[str]:
        return [
            f"3 MFU, LoRA on {data} (model FLOP/s / measured matmul peak)",
            f"{mfu:.3f}",
            "≥ 0.6",
            ok(mfu, 0.6),
            f"{figures['model_flops_per_s'] / 1e9:.1f} GFLOP/s "
            f"of {figures['gemm_peak_flops_per_s'] / 1e9:.1f} "
            f"peak; {detail}",
        ]

    if "mfu" in f:
        rows.append(mfu_row("SST-2", f["mfu"]["median"], f["mfu"], "case 1's runs"))
    if f.get("mfu_imdb", {}).get("mfu"):
        mi = f["mfu_imdb"]
        rows.append(
            mfu_row(
                "IMDB (up to 512 tokens, length-grouped)",
                mi["mfu"],
                mi,
                f"{mi['steps']} steps, {mi['tokens_per_example']:.0f} tokens per example",
            )
        )
    if "qlora" in f:
        q = f["qlora"]
        rows += [
            [
                "4 QLoRA quantized linear weights / fp32",
                f"{q['quantized_linear_weight_ratio']:.3f}×",
                "≤ 0.16×",
                ok(q["quantized_linear_weight_ratio"], 0.16, higher=False),
                f"all weights {q['base_weight_ratio']:.3f}×; peak memory QLoRA / LoRA {q['peak_ratio']:.2f}× "
                f"({q['peak_memory_kind']})",
            ]
        ]
    if "pruning" in f:
        p = f["pruning"]
        rows += [
            [
                "5 pruning overhead: Sparse LoRA / LoRA train time − 1",
                f"{p['median_overhead']:+.2%}",
                "< 1%",
                ok(p["median_overhead"], 0.01, higher=False),
                f"pruning every 5 steps; final sparsity {p['final_sparsity']}; steps at their fastest of "
                f"{f['reps']} repetitions; whole-run time ratios {fmt_list(p['time_ratios'])}",
            ]
        ]
    if "startup" in f:
        for name, s in f["startup"].items():
            process = ""
            if s.get("median_ratio_process") is not None:
                process = (
                    f"; from the process start (imports included): {s['median_ratio_process']:.2f}, cold "
                    f"{statistics.median(s['cold_process_s']):.2f} s, "
                    f"warm {statistics.median(s['warm_process_s']):.2f} s"
                )
            rows += [
                [
                    f"6 start-up ({name}), warm / cold (job start → first step)",
                    f"{s['median_ratio']:.2f}",
                    "≤ 0.25",
                    ok(s["median_ratio"], 0.25, higher=False),
                    f"cold {statistics.median(s['cold_s']):.2f} s, "
                    f"warm {statistics.median(s['warm_s']):.2f} s{process}",
                ]
            ]
    if "tune_pruner" in f:
        t = f["tune_pruner"]
        p, u = t["arms"]["pruned"], t["arms"]["unpruned"]
        rows += [
            [
                "8 tuning: the pruner's saving in trial compute at an equal budget",
                f"{t['saving']:.1%}",
                "≥ 30%",
                ok(t["saving"], t["target_saving"]),
                f"{t['trials']} finished trials each (LoRA lr, TPE same seed); "
                f"compute {p['trial_compute_s']:.0f} s "
                f"pruned ({p['states'].count('PRUNED')} trials stopped) against {u['trial_compute_s']:.0f} s",
            ],
            [
                "8 tuning: best validation, pruned − unpruned search",
                f"{t['best_val_delta']:+.4f}",
                "≥ −0.005",
                ok(t["best_val_delta"], t["target_delta"]),
                f"best val {p['best_val']:.4f} (lr {p['best_lr']:.2e}) against {u['best_val']:.4f} "
                f"(lr {u['best_lr']:.2e})",
            ],
        ]
    if "precheck" in f:
        c = f["precheck"]
        rows += [
            [
                f"9 sweep pre-check, {c['jobs']} jobs (rank × seed): seconds before the first job",
                f"{c['sweep_s']:.2f} s",
                f"< {c['target_sweep_s']:.0f} s",
                ok(c["sweep_s"], c["target_sweep_s"], higher=False),
                f"{1e3 * min(c['per_job_s']):.1f} ms per job against "
                f"{1e3 * min(c['reference_per_job_s']):.1f} ms composing every job with Hydra "
                f"({c['reference_jobs']} jobs): ratio {c['median_ratio']:.3f} {fmt_list(c['ratios'])}",
            ]
        ]
    if "pairs" in f:
        pc = f["pairs"]
        rows += [
            [
                f"10 pair task ({pc['data']}) / single text of the same tokens: examples/s",
                f"{pc['median_ratio']:.3f}",
                "0.90-1.10",
                "meets" if abs(pc["median_ratio"] - 1) <= pc["target"] else "**misses**",
                f"{pc['pair_tokens_per_example']:.1f} and {pc['single_tokens_per_example']:.1f} tokens per "
                f"example; steps at their fastest of {len(pc['ratios'])} repetitions; whole runs: pair "
                f"{statistics.median(pc['pair_examples_per_s']):.1f}, single "
                f"{statistics.median(pc['single_examples_per_s']):.1f} examples/s "
                f"(ratios {fmt_list(pc['ratios'])})",
            ]
        ]
    if "generation" in f:
        g = f["generation"]
        rows += [
            [
                f"11 generation ({g['model']}): our scoring loop / bare transformers generate, tokens/s",
                f"{g['median_ratio']:.3f}",
                f"≥ {g['target']}",
                ok(g["median_ratio"], g["target"]),
                f"{g['prompts']} GSM8K prompts, batch {g['batch']}, up to {g['max_new_tokens']} new tokens, "
                f"greedy; ours {fmt_list(g['ours_tokens_per_s'])} against {fmt_list(g['bare_tokens_per_s'])} "
                "tokens/s",
            ]
        ]
    lines += [
        "| case | measured | target | | detail |",
        "|---|---|---|---|---|",
        *["| " + " | ".join(r) + " |" for r in rows],
    ]
    if "scaling" in f:
        lines += ["", *scaling_tables(f["scaling"])]
    if notes:
        lines += ["", NOTES, notes.strip()]
    return "\n".join(lines) + "\n"


def rounds_note(points: list[dict]) -> str:
    rounds = len(points[0].get("examples_per_s_rounds", [None]))
    return f"; {rounds} rounds over all points, each point at its fastest round" if rounds > 1 else ""


def fmt_list(values: list[float] | None) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")" if values else ""


def scaling_tables(f: dict) -> list[str]:
    points = f["points"]
    kind = points[0]["peak_memory_kind"]

    def table(axis: str, fixed_key: str, fixed: int, values: list[int]) -> list[str]:
        out = []
        for key, title, fmt in (
            ("examples_per_s", "training examples/s", "{:.1f}"),
            ("peak_memory_bytes", f"peak memory, MiB ({kind})", "{:.0f}"),
        ):
            head = [f"{axis} →", *map(str, values)]
            rows = []
            for method in Bench.METHODS:
                by = {p[axis]: p[key] for p in points if p["method"] == method and p[fixed_key] == fixed}
                if method == "full" and axis == "rank":
                    by = {v: next(iter(by.values())) for v in values} if by else {}
                scale = 2**-20 if key == "peak_memory_bytes" else 1
                rows.append([method, *[fmt.format(by[v] * scale) if v in by else "" for v in values]])
            out += [
                f"{title}, {fixed_key} {fixed}:",
                "",
                "| " + " | ".join(head) + " |",
                "|" + "---|" * len(head),
                *["| " + " | ".join(r) + " |" for r in rows],
                "",
            ]
        return out

    return [
        "## 7 How cost grows",
        "",
        f"Batch {points[0]['batch_size']}, every sequence exactly its length in real tokens, "
        f"median of {points[0]['steps']} steps timed one by one after one warm-up, one process per point"
        f"{rounds_note(points)}. Plot: scaling.png / scaling.svg. "
        "Full fine-tuning has no rank: its figure is repeated across the rank columns.",
        "",
        *table("rank", "length", f["fixed_length"], f["ranks"]),
        *table("length", "rank", f["fixed_rank"], f["lengths"]),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--short", action="store_true", help="tiny model, generated data, one repetition")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks", help="folder for BENCHMARKS.md, bench.json"
    )
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared" / "data", help="SST-2 / IMDB jsonl folders"
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=Bench.CASES,
        metavar="CASE",
        help=f"only these ({', '.join(Bench.CASES)}); their figures replace those in OUT/bench.json",
    )
    parser.add_argument(
        "--work",
        type=Path,
        help="folder for the cases' runs (default: a new temporary one); an interrupted bench's folder "
        "resumes its tune case's studies (the same command goes on)",
    )
    parser.add_argument(
        "--point", help=argparse.SUPPRESS
    )  # one scaling point, in a process of its own (JSON)
    args = parser.parse_args(argv)
    setup_process(check_hub=False)  # as every entry point: quiet libraries, no tokenizer threads
    if args.point:
        print(json.dumps(scaling_point(json.loads(args.point), short=False, data=args.data)))
        return
    if not args.short and not (args.data / "sst2" / "train.jsonl").is_file():
        parser.error(f"no SST-2 under {args.data} (sst2/train.jsonl): give --data, or run --short")
    PREPARED["cache"] = default_cache()  # where `make smollm2` put the model (case 11), before the cold cache
    os.environ.setdefault("PEFT_BENCH_CACHE", str(Path(tempfile.mkdtemp(prefix="peft_bench-bench-cache-"))))
    old = (
        json.loads((args.out / "bench.json").read_text())
        if args.cases and (args.out / "bench.json").is_file()
        else {}
    )
    if old and old.get("short") != args.short:
        parser.error(
            f"{args.out / 'bench.json'} holds {'short' if old.get('short') else 'full'}-mode figures: "
            "merge only like with like (or give another --out)"
        )
    figures = {**old, **Bench(args.short, args.data, args.out, args.work).run_all(args.cases)}
    args.out.mkdir(parents=True, exist_ok=True)
    md = args.out / "BENCHMARKS.md"
    notes = md.read_text().partition(NOTES)[2] if md.is_file() else ""
    (args.out / "bench.json").write_text(json.dumps(figures, indent=2))
    md.write_text(markdown(figures, notes))
    print(markdown(figures))
    print(f"bench: wrote {md} and bench.json")


if __name__ == "__main__":
    main()
