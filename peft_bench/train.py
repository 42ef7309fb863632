"""One run: validate the config -> build data and model -> fit -> validate and test the best
checkpoint -> results.json. Hydra's multirun calls this once per job of a sweep."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import datasets
import hydra
import lightning as L
import psutil
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from peft_bench.config import CONF_DIR, DivergedError, PeftBenchError, RunConfig, check_config
from peft_bench.measure import peak_memory, reset_peak_memory
from peft_bench.models import load_tokenizer
from peft_bench.results import RESULTS_FILE, environment, read_results, write_results

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
log = logging.getLogger("peft_bench")


def quiet_third_party() -> None:
    """Silence library chatter that says nothing about this run (deprecations inside the libraries,
    advertising, bitsandbytes' optional CPU kernel), so the run's own lines stand out."""
    for message in (".*is_gradient_checkpointing.*", ".*null_placement.*", ".*LeafSpec.*",
                    ".*does not have many workers.*", ".*overridden `on_before_batch_transfer`.*"):
        warnings.filterwarnings("ignore", message=message)
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    chatter = ("litlogger", "returned in `LightningModule.configure_callbacks` will override")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda r: not any(c in r.getMessage() for c in chatter))
    if not sys.stderr.isatty():
        datasets.disable_progress_bars()


quiet_third_party()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        results = run(cfg)
    except Exception as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # one job's failure must not stop the sweep: results.json says why, the summary lists it
            log.error("job failed, the sweep goes on: %s", e, exc_info=not isinstance(e, PeftBenchError))
            return None
        if isinstance(e, PeftBenchError):  # the user's to fix: one message on stderr, no traceback
            print(f"peft_bench: error: {e}", file=sys.stderr)
            sys.exit(2)
        raise
    return results.get("val_f1", results.get("val_ppl"))  # for sweepers that optimise


_first_job_in_process = True  # a local sweep runs its jobs in one process: only the first pays the imports


def run(cfg: DictConfig) -> dict:
    global _first_job_in_process
    started = time.perf_counter()
    first_in_process, _first_job_in_process = _first_job_in_process, False
    run_cfg = check_config(cfg)  # every config problem at once, before any data or weights
    run_dir = Path(run_cfg.run_dir).absolute()
    config = OmegaConf.to_container(cfg, resolve=True)
    prior = read_results(run_dir) if (run_dir / RESULTS_FILE).is_file() else None
    if prior is not None and prior.get("status") == "completed" and run_cfg.skip_completed:
        if prior.get("config") != json.loads(json.dumps(config, default=str)):
            raise PeftBenchError(f"{run_dir} holds a completed run of another configuration; run with "
                                 "skip_completed=false to redo it there, or choose another hydra.run.dir=")
        log.info("%s: completed before, skipped (skip_completed=false runs it again)", run_cfg.run_name)
        return prior
    last = run_dir / "checkpoints" / "last.ckpt"
    resume_from = last if run_cfg.resume and last.is_file() and (prior or {}).get("status") != "completed" else None
    reset_peak_memory()
    results: dict = {
        "status": "running", "run_name": run_cfg.run_name, "method": run_cfg.method.name,
        "dataset": run_cfg.dataset.name, "model": run_cfg.model.name, "rank": run_cfg.rank,
        "seed": run_cfg.seed, "run_dir": str(run_dir), "config": config, **environment(),
    }
    if resume_from is not None:
        step = torch.load(resume_from, map_location="cpu", weights_only=False)["global_step"]
        results["resumed_from"] = {"checkpoint": str(resume_from.relative_to(run_dir)), "step": step}
        log.info("%s: resuming from %s (step %d)", run_cfg.run_name, resume_from, step)
    logger = None
    try:
        L.seed_everything(run_cfg.seed, workers=True)
        datamodule = get_class(run_cfg.dataset._target_)(
            dataset=run_cfg.dataset, tokenizer=load_tokenizer(run_cfg.model),
            cache_dir=run_cfg.cache_dir, seed=run_cfg.seed)
        datamodule.prepare_data()  # data problems (offline Hub, bad columns) surface before the weights load
        results["data"] = datamodule.info
        module = get_class(run_cfg.method._target_)(method=run_cfg.method, model=run_cfg.model, dataset=run_cfg.dataset)
        trainable, total = module.parameter_counts()
        if run_cfg.trainer.compile:  # compiles the model's forward in place (state_dict keys unchanged)
            module.model.compile()
        results.update(trainable_params=trainable, total_params=total, trainable_ratio=trainable / total)

        logger = instantiate(cfg.logger) if cfg.logger.get("_target_") else None
        if logger is not None:
            logger.log_hyperparams(results["config"])
        trainer, checkpoints = build_trainer(run_cfg, run_dir, logger, monitor=module.monitor)

        if run_cfg.eval_before_training:
            results["before_training"] = evaluate(trainer, module, datamodule, None)
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        train_time = time.perf_counter() - start + module.prior["train_time_s"]  # resumed: the whole run
        # Best by val F1 (perplexity for language models), unless the method's final weights are what it claims (pruned to the target).
        ckpt = "best" if checkpoints is not None and checkpoints.best_model_path and module.evaluate_best else None
        results.update(evaluate(trainer, module, datamodule, ckpt))
        before = {k: v for k, v in results.items() if k.startswith(("val_", "test_"))}
        if module.after_training():  # e.g. one-shot pruning: the model changed, evaluate it again
            results["before_pruning"] = {**before, **module.figures_before_change}
            results.update(evaluate(trainer, module, datamodule, None))
        if module.mergeable:
            with module.merged():
                merged = evaluate(trainer, module, datamodule, None, validate=False)
            results["inference_latency_merged_ms_per_example"] = merged["inference_latency_ms_per_example"]
            results.update({f"merged_{k}": v for k, v in merged.items() if k.startswith("test_")})
        results.update(
            evaluated_checkpoint=str(Path(checkpoints.best_model_path).relative_to(run_dir)) if ckpt else "final weights",
            optimizer_steps=trainer.global_step, epochs=trainer.current_epoch,
            train_time_s=train_time, time_per_epoch_s=module.epoch_times,
            mean_time_per_epoch_s=sum(module.epoch_times) / max(1, len(module.epoch_times)),
            train_examples=module.examples_seen, train_examples_per_s=module.examples_seen / train_time,
            train_tokens=int(module.tokens_seen), train_tokens_per_s=int(module.tokens_seen) / train_time,
            train_loss_per_epoch=module.epoch_train_loss,
            inference_batch_size=run_cfg.dataset.eval_batch_size,
            precision=trainer.precision, device=str(module.device),
            **module.throughput_figures(str(trainer.precision), run_cfg.cache_dir),
            time_to_first_step_s=module.first_batch_at - started if module.first_batch_at else None,
            # from the process start, imports (torch, Lightning, transformers: seconds) included
            process_to_first_step_s=(module.first_batch_wall - psutil.Process().create_time()
                                     if module.first_batch_wall and first_in_process else None),
            **module.method_results(),
        )
        results.update(module.export(run_dir))  # last: a merged export folds the adapter in for good
        results["status"] = "completed"
    except BaseException as e:
        results["status"] = ("interrupted" if isinstance(e, KeyboardInterrupt | SystemExit) else
                             "diverged" if isinstance(e, DivergedError) else "failed")
        results["error"] = f"{type(e).__name__}: {e}"
        if isinstance(e, SIGTERMException):  # Lightning's stop on SIGTERM exits 0: say it was killed
            raise SystemExit(128 + signal.SIGTERM) from e
        raise
    finally:
        results.update(peak_memory())
        write_results(run_dir, results)
        finish_logging(results["status"])
    scores = " ".join(f"{k} {results[k]:.4f}" for k in ("val_acc", "val_f1", "test_acc", "test_f1", "val_ppl",
                                                          "test_ppl") if k in results)
    log.info("%s: %s | %.1f s -> %s", run_cfg.run_name, scores, results["train_time_s"], run_dir / "results.json")
    return results


def evaluate(trainer: L.Trainer, module, datamodule, ckpt: str | None, validate: bool = True) -> dict:
    """val_* and test_* metrics of `ckpt` (None: the module's current weights), and test-set latency."""
    out = {}
    if validate:
        val = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)[0]
        out.update({f"val_{k.removeprefix('val/')}": float(v) for k, v in val.items()})
    test = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)[0]
    out.update({f"test_{k.removeprefix('test/')}": float(v) for k, v in test.items()})
    out["inference_latency_ms_per_example"] = 1000 * module.infer_seconds / max(1, module.infer_examples)
    return out


def build_trainer(run_cfg: RunConfig, run_dir: Path, logger,
                  monitor: tuple[str, str] = ("val/f1", "max")) -> tuple[L.Trainer, ModelCheckpoint | None]:
    t = run_cfg.trainer
    # the device Lightning will pick: trainer.accelerator=cpu on a GPU machine is a CPU run
    gpu = t.accelerator != "cpu" and torch.cuda.is_available()
    precision = t.precision or ("bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true")
    sanity = t.num_sanity_val_steps
    if sanity is None:  # on a CPU, seconds per job (IMDB) for an out-of-memory check that matters on a GPU
        sanity = 1 if gpu or (t.accelerator != "cpu" and torch.backends.mps.is_available()) else 0
    callbacks: list = []  # a method adds its own through LightningModule.configure_callbacks
    checkpoints = None
    if run_cfg.checkpoint:
        checkpoints = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best-epoch{epoch}-step{step}",
                                      monitor=monitor[0], mode=monitor[1], save_top_k=1, save_last=True,
                                      auto_insert_metric_name=False)
        callbacks.append(checkpoints)
    if logger is not None:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    interactive = sys.stderr.isatty()
    if interactive:
        callbacks.append(RichProgressBar())
    # One owner of requeueing: submitit (SIGUSR2 -> checkpoint -> requeue; the job then resumes from
    # last.ckpt in its run folder). Lightning's own SLURM auto-requeue stays off.
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None
    trainer = L.Trainer(
        plugins=plugins, accelerator=t.accelerator, devices=t.devices, precision=precision, max_epochs=t.max_epochs,
        max_steps=t.max_steps, limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches,
        limit_test_batches=t.limit_test_batches, val_check_interval=t.val_check_interval,
        accumulate_grad_batches=t.accumulate_grad_batches, gradient_clip_val=t.gradient_clip_val,
        log_every_n_steps=t.log_every_n_steps, deterministic=t.deterministic, default_root_dir=run_dir,
        num_sanity_val_steps=sanity,
        logger=logger if logger is not None else False, callbacks=callbacks,
        enable_checkpointing=run_cfg.checkpoint, enable_progress_bar=interactive, enable_model_summary=False,
        # no_grad, not inference_mode, for evaluation: metric states reset inside inference mode become
        # inference tensors that a later validation (fit after eval_before_training) cannot update
        inference_mode=False,
    )
    return trainer, checkpoints


def finish_logging(status: str) -> None:
    """End this job's W&B run (if any), so the next job of a sweep starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        try:
            wandb.finish(exit_code=0 if status == "completed" else 1)
        except Exception as e:  # e.g. its service process already killed by SLURM's SIGTERM on requeue:
            # never let it replace the run's own outcome (a requeue's SystemExit must reach submitit)
            log.warning("W&B run not finished cleanly (%s: %s); its log is on disk, `wandb sync` uploads it",
                        type(e).__name__, e)
