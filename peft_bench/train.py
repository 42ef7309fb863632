"""One run, in named steps: check the config -> lock the run folder -> the folder's earlier record (skip
or redo) -> the checkpoint to resume from -> the record it starts -> fit and evaluate -> finish
(results.json). Hydra's multirun calls `main` once per job of a sweep. Importing it sets nothing up:
the entry points do (peft_bench.env)."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import os
import shutil
import signal
import sys
import time
from enum import Enum
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.fabric.connector import _PRECISION_INPUT_STR_ALIAS_CONVERSION as PRECISION_ALIASES
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from peft_bench.callbacks.checkpointing import (
    CORRUPT,
    LAST,
    Fingerprint,
    LatestCheckpoint,
    check_resume,
    differences,
    fingerprint,
    read_checkpoint,
)
from peft_bench.callbacks.run_stats import RunStats
from peft_bench.checks import check_config
from peft_bench.config import CONF_DIR, PEFT_BENCH_TRAINER_KEYS, RunConfig
from peft_bench.data.base import local_fingerprint
from peft_bench.env import setup_process
from peft_bench.errors import DivergedError, PeftBenchError, RunInProgress, TrialStopped
from peft_bench.io import AtomicCheckpointIO, RunLock, filesystem_refusal, process_identity, set_aside
from peft_bench.ledger import record_job_failure
from peft_bench.measure import peak_memory, reset_peak_memory
from peft_bench.models import load_tokenizer
from peft_bench.predictions import PREDICTIONS_FILE, READABLE_FILE, write_predictions
from peft_bench.ranks import begin_attempt, job_rank, slurm_tasks, tell_ranks, wait_for_rank_zero
from peft_bench.resolvers import KEY_ROLES
from peft_bench.results import RESULTS_FILE, environment, flatten, read_results, write_results
from peft_bench.tasks import task_for

log = logging.getLogger("peft_bench")

# What a run writes besides results.json: removed when a run starts over (skip_completed=false on a
# completed run, resume=false), so a redo is a clean slate and never writes last-v1.ckpt beside last.ckpt.
RUN_OUTPUTS = ("checkpoints", "csv", "adapter", "merged", PREDICTIONS_FILE, READABLE_FILE)


class RunStatus(str, Enum):
    """A run's `status` in results.json (results.RunResult); the record holds the value."""

    RUNNING = "running"  # from the attempt's start: a job killed now still shows up (pid, host)
    COMPLETED = "completed"
    FAILED = "failed"
    DIVERGED = "diverged"  # a non-finite training loss (DivergedError)
    INTERRUPTED = "interrupted"  # Ctrl-C, a signal (SLURM's preemption and requeue)
    PRUNED = "pruned"  # a tuning trial stopped early (TrialStopped)

    @classmethod
    def of(cls, error: BaseException) -> RunStatus:
        """The status of a run that `error` stopped."""
        if isinstance(error, KeyboardInterrupt | SystemExit):
            return cls.INTERRUPTED
        if isinstance(error, DivergedError):
            return cls.DIVERGED
        if isinstance(error, TrialStopped):
            return cls.PRUNED
        return cls.FAILED


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """The job's entry point: `python -m peft_bench` (which has set the process up) calls it, and so does
    a submitit launcher's job process on a node (which has not: hence the set-up here, once)."""
    setup_process(check_hub=False)  # the libraries are loaded by now: too late to go offline
    try:
        results = run(cfg)
    except Exception as e:
        if (refusal := filesystem_refusal(e, Path(cfg.run_dir).absolute())) is not None:
            refusal.recorded = getattr(e, "recorded", False)  # a full disk, a read-only folder: one sentence
            e = refusal
        expected = isinstance(e, PeftBenchError | DivergedError)  # the user's to act on: no traceback
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # one job's failure must not stop the sweep: results.json says why, the summary lists it
            log.error("job failed, the sweep goes on: %s", e, exc_info=not expected)
            if not getattr(e, "recorded", False) and job_rank() == 0:  # no results.json says it: the ledger
                with contextlib.suppress(OSError):  # the sweep folder may be on the same full disk
                    record_job_failure(e)
            return None
        if isinstance(e, DivergedError):
            print(f"peft_bench: diverged: {e} (results.json says status: diverged)", file=sys.stderr)
            sys.exit(1)
        if isinstance(e, PeftBenchError):
            print(f"peft_bench: error: {e}", file=sys.stderr)
            sys.exit(2)
        raise
    return results.get(task_for(cfg.dataset).select_by)  # for sweepers that optimise


_first_job_in_process = True  # a local sweep runs its jobs in one process: only the first pays the imports


def run(cfg: DictConfig, callbacks: tuple[L.Callback, ...] | list[L.Callback] = ()) -> dict:
    """One run of a composed config; `callbacks` are added to the Trainer (instrumentation, tuning).
    Returns what it wrote to results.json."""
    global _first_job_in_process
    stats = RunStats(time.perf_counter(), _first_job_in_process)
    _first_job_in_process = False
    run_cfg = check_config(cfg)  # every config problem at once, before any data or weights
    at = Attempt(cfg, run_cfg, Path(run_cfg.run_dir).absolute(), stats, list(callbacks))
    rank = job_rank()
    if rank > 0:  # another process of a DDP job: rank 0 holds the folder and writes every record
        at.word = wait_for_rank_zero(at.run_dir, rank)
        return run_locked(at) if at.word["go"] else {}
    begin_attempt()
    lock = RunLock(at.run_dir)
    why = "completed before: skipped"
    try:
        # a second identical command stops here, touching nothing
        lock.acquire(holder=peek_results(at.run_dir))
        return run_locked(at)
    except BaseException as e:
        why = f"{type(e).__name__}: {e}"
        raise
    finally:
        if slurm_tasks() > 1:  # the other tasks of a SLURM job wait for a word; unless told to go: stop
            with contextlib.suppress(OSError):  # a full disk must not hide the run's own error
                tell_ranks(at.run_dir, go=False, why=why, unless_told=True)
        lock.release()


@dataclasses.dataclass
class Attempt:
    """This start of a run, as its steps share it: the config and folder, what an earlier attempt left
    there, the checkpoint it goes on from and, once built, what trains."""

    cfg: DictConfig
    run_cfg: RunConfig
    run_dir: Path
    stats: RunStats  # the run's clock and figures (a Trainer callback)
    callbacks: list[L.Callback]  # the caller's, added to the Trainer
    word: dict | None = None  # rank 0's, in a rank > 0 of a DDP job (which then writes nothing in the folder)
    config: dict = dataclasses.field(default_factory=dict)  # the resolved config, as results.json has it
    resolved: dict = dataclasses.field(default_factory=dict)  # what precision and accelerator resolve to
    prior: dict | None = None  # the folder's results.json, from an earlier attempt
    # what peft_bench did on its own about the folder (set aside a corrupt file, ...)
    notes: list[str] = dataclasses.field(default_factory=list)
    ckpt: dict | None = None  # checkpoints/last.ckpt, if readable and of this configuration
    resume_from: Path | None = None
    restore: bool = False  # the checkpoint is of other data: the folder keeps describing its run
    trainer: L.Trainer | None = None
    module: L.LightningModule | None = None

    @property
    def lead(self) -> bool:
        """Rank 0 (or the only process): it holds the folder and writes in it."""
        return self.word is None

    @property
    def last(self) -> Path:
        return self.run_dir / "checkpoints" / LAST

    @property
    def recorded(self) -> dict | None:
        """The config the last attempt ran, as its record says."""
        return self.prior.get("config") if isinstance(self.prior, dict) else None


def run_locked(at: Attempt) -> dict:
    """The run's steps, in the folder this process holds (or, in a rank > 0, rank 0 holds)."""
    at.config = OmegaConf.to_container(at.cfg, resolve=True)
    at.resolved = {
        "precision": resolved_precision(at.run_cfg.trainer),
        "device": device_type(at.run_cfg.trainer),
    }
    current = fingerprint(at.config, None, at.resolved)
    at.prior = earlier_record(at.run_dir, at.notes)
    if completed_before(at, current):
        return at.prior
    resumable_checkpoint(at, current)
    results = start_record(at)
    try:
        fit_and_evaluate(at, results)
        results["status"] = RunStatus.COMPLETED.value
    except BaseException as e:
        record_stop(at, results, e)
        if isinstance(e, SIGTERMException):  # Lightning's stop on SIGTERM exits 0: say it was killed
            raise SystemExit(128 + signal.SIGTERM) from e
        raise
    finally:
        finish(at, results)
    if at.lead:
        log_outcome(at, results)
    return results


def peek_results(run_dir: Path) -> dict | None:
    try:
        return read_results(run_dir)
    except (OSError, ValueError):
        return None


def earlier_record(run_dir: Path, notes: list[str]) -> dict | None:
    """The folder's results.json from an earlier attempt; an unreadable one is set aside (and noted)."""
    if not (run_dir / RESULTS_FILE).is_file():
        return None
    try:
        return read_results(run_dir)
    except (OSError, ValueError) as e:
        aside = set_aside(run_dir / RESULTS_FILE, f"unreadable ({type(e).__name__}: {e})")
        notes.append(f"{RESULTS_FILE} was unreadable and set aside as {aside.name}")
        return None


def completed_before(at: Attempt, current: dict) -> bool:
    """Whether the folder holds this very run, completed, with every figure this command asks for: then
    it is skipped (a completed run of another configuration is an error). Otherwise a completed run is
    redone, and resume=false starts over, each from a clean slate; any other run goes on."""
    run_cfg, prior = at.run_cfg, at.prior
    completed = prior is not None and prior.get("status") == RunStatus.COMPLETED
    lacking = asked_but_missing(prior, at.config) if completed else []
    if lacking:  # e.g. a validation-only run (test=false, a tuning trial) has no test figures: train it again
        log.info("%s: completed before without %s; running it again", run_cfg.run_name, " or ".join(lacking))
    if completed and run_cfg.skip_completed and not lacking:
        differ = completed_differences(prior, current, run_cfg)
        if differ:
            raise PeftBenchError(
                f"{at.run_dir} holds a completed run of another configuration ({'; '.join(differ)}); "
                "run with skip_completed=false to redo it there, or choose another hydra.run.dir="
            )
        log.info("%s: completed before, skipped (skip_completed=false runs it again)", run_cfg.run_name)
        return True
    if at.lead and (completed or not run_cfg.resume):
        start_over(at.run_dir, "redoing a completed run" if completed else "resume=false")
    return False


def start_over(run_dir: Path, why: str) -> None:
    """Remove what an earlier attempt wrote (checkpoints, logs, exports): a clean slate."""
    removed = [name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    for name in removed:
        (shutil.rmtree if (run_dir / name).is_dir() else os.remove)(run_dir / name)
    if removed:
        log.info("%s: %s; removed the earlier attempt's %s", run_dir, why, ", ".join(removed))


def resumable_checkpoint(at: Attempt, current: dict) -> None:
    """Resume from last.ckpt only if it is readable and was trained on this very configuration (the
    config part now, before anything is written; the data part once the data is read). A rank > 0 goes
    on from where rank 0 does (which has checked that checkpoint against the data too)."""
    if at.last.is_file():
        try:
            at.ckpt = read_checkpoint(at.last)
        except CORRUPT as e:  # truncated (a kill or a full disk mid-save), or not a checkpoint
            aside = set_aside(
                at.run_dir / "checkpoints", f"{LAST} is unreadable ({type(e).__name__}); starting over"
            )
            at.notes.append(
                f"checkpoints/{LAST} was unreadable ({type(e).__name__}: {e}); the checkpoints folder was "
                f"set aside as {aside.name} and the run started over"
            )
    if at.ckpt is not None:
        check_resume(at.ckpt, current, at.last, data=False, recorded=at.recorded)
        at.resume_from = at.last
    if not at.lead:
        at.ckpt = None
        at.resume_from = Path(at.word["resume_from"]) if at.word["resume_from"] else None


def start_record(at: Attempt) -> dict:
    """The run's record as it starts (status running); rank 0 writes it at once."""
    reset_peak_memory()
    run_cfg = at.run_cfg
    results: dict = {
        "status": RunStatus.RUNNING.value,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **process_identity(),
        "run_name": run_cfg.run_name,
        "method": run_cfg.method.name,
        "dataset": run_cfg.dataset.name,
        "model": run_cfg.model.name,
        "rank": getattr(run_cfg.method, "r", None),  # what it trains with (method.r), not the plain value
        "seed": run_cfg.seed,
        "run_dir": str(at.run_dir),
        "config": at.config,
        **environment(),
        "warnings": [],
        "notes": at.notes,
    }
    if at.lead:
        write_results(at.run_dir, results)  # a job killed now still shows up: status running, pid, host
    return results


def fit_and_evaluate(at: Attempt, results: dict) -> None:
    """Build the data, the model and the Trainer; fit; evaluate; export. Fills `results` as it goes."""
    run_cfg = at.run_cfg
    L.seed_everything(run_cfg.seed, workers=True, verbose=False)
    datamodule = build_data(run_cfg, results)
    print_ = fingerprint(at.config, datamodule.info["cache_key"], at.resolved)
    if at.ckpt is not None:
        check_resume_data(at, print_, results)
    check_validation_interval(run_cfg, datamodule)
    at.module = module = build_module(run_cfg, datamodule, results, at.stats)
    logger = instantiate(at.cfg.logger) if at.cfg.logger.get("_target_") else None
    if logger is not None:
        logger.log_hyperparams(results["config"])
    callbacks = [at.stats, Fingerprint(print_), *at.callbacks]
    at.trainer, best = build_trainer(run_cfg, at.run_dir, logger, monitor=module.monitor, callbacks=callbacks)
    trainer = at.trainer
    if at.lead and trainer.world_size > 1:  # the other ranks start now (Lightning or SLURM): tell them
        tell_ranks(at.run_dir, go=True, resume_from=at.resume_from)

    if run_cfg.eval_before_training:
        results["before_training"] = evaluate(trainer, module, datamodule, None, at.stats, test=run_cfg.test)
    trainer.fit(module, datamodule=datamodule, ckpt_path=at.resume_from)
    if trainer.global_step == 0:
        raise PeftBenchError(
            "training ran no optimizer step (check trainer.max_steps, max_epochs, "
            "limit_train_batches and the size of the training split): no scores to report"
        )
    evaluate_trained(at, datamodule, best, results)
    if at.lead:
        results.update(module.export(at.run_dir))  # last: a merged export folds the adapter in for good


def build_data(run_cfg: RunConfig, results: dict):
    """The task's datamodule, its data read (or built and cached) and described in `results`."""
    datamodule = get_class(run_cfg.dataset._target_)(
        dataset=run_cfg.dataset,
        tokenizer=load_tokenizer(run_cfg.model),
        cache_dir=run_cfg.cache_dir,
        seed=run_cfg.seed,
    )
    datamodule.prepare_data()  # data problems (offline Hub, bad rows) surface before the weights load
    results["data"] = datamodule.info
    results["warnings"] += datamodule.info.get("warnings", [])
    results["notes"] += datamodule.info.get("notes", [])
    baseline = task_for(run_cfg.dataset).baselines(
        datamodule.data, getattr(run_cfg.dataset, "num_labels", None)
    )
    if baseline:  # the trivial predictor's scores (majority class, mean label): the floor to beat
        results["baseline"] = baseline
    return datamodule


def check_resume_data(at: Attempt, print_: dict, results: dict) -> None:
    """The data part of the resume check, now the data is read; the CSV log is trimmed to the checkpoint."""
    try:
        check_resume(at.ckpt, print_, at.last, recorded=at.recorded)
    except PeftBenchError:
        at.restore = True  # the folder keeps describing the run its checkpoint belongs to
        raise
    step = at.ckpt["global_step"]
    results["resumed_from"] = {"checkpoint": str(at.last.relative_to(at.run_dir)), "step": step}
    log.info("%s: resuming from %s (step %d)", at.run_cfg.run_name, at.last, step)
    trim_csv_log(at.run_dir / "csv" / "metrics.csv", step)


def build_module(run_cfg: RunConfig, datamodule, results: dict, stats: RunStats) -> L.LightningModule:
    """The method's LightningModule on the run's model; its parameter counts in `results`. A
    data-driven init reads the run's first training batches; its time counts as training time (a
    resumed run computes it again, from the same batches, and counts the first time only)."""
    cls = get_class(run_cfg.method._target_)
    wanted = cls.calibration_batches(run_cfg.method)
    module = cls(
        method=run_cfg.method,
        model=run_cfg.model,
        dataset=run_cfg.dataset,
        accelerator=device_type(run_cfg.trainer),
        total_steps=optimizer_steps(run_cfg, len(datamodule.data["train"])),
        calibration=datamodule.first_train_batches(wanted) if wanted else None,
    )
    if module.data_init is not None:
        results["data_init"] = module.data_init
        stats.prior["train_time_s"] += module.data_init["seconds"]  # a resume takes the checkpoint's
    trainable, total = module.parameter_counts()
    if run_cfg.trainer.compile:  # compiles the model's forward in place (state_dict keys unchanged)
        module.model.compile()
    results.update(trainable_params=trainable, total_params=total, trainable_ratio=trainable / total)
    return module


def evaluate_trained(at: Attempt, datamodule, best: ModelCheckpoint | None, results: dict) -> None:
    """The figures the run reports: of the best checkpoint by the task's metric (val F1, perplexity for
    language models), unless the method's final weights are what it claims (pruned to the target);
    again after a change the method makes once trained (one-shot pruning); merged, if it can merge."""
    run_cfg, trainer, module, stats = at.run_cfg, at.trainer, at.module, at.stats
    ckpt_path = (
        best.best_model_path if best is not None and best.best_model_path and module.evaluate_best else None
    )
    results.update(evaluate(trainer, module, datamodule, ckpt_path, stats, test=run_cfg.test))
    before = {k: v for k, v in results.items() if k.startswith(("val_", "test_"))}
    changed_from = module.after_training()  # e.g. one-shot pruning: the model changed, evaluate it again
    if changed_from is not None:
        results["before_pruning"] = {**before, **changed_from}
        results.update(evaluate(trainer, module, datamodule, None, stats, test=run_cfg.test))
    results["warnings"] += list(module.prediction_warnings.values())  # of the evaluation the figures are of
    results.update(module.probe_results())  # of the weights the figures are of (forgetting)
    results.update(module.evaluation_figures())  # of the test pass the figures are of (not the merged one)
    if module.test_examples and trainer.is_global_zero:  # the examples of the test pass the figures are of
        results["predictions"] = write_predictions(at.run_dir, module.test_examples)
    if module.can_merge() and run_cfg.test:
        with module.merged():
            merged = evaluate(trainer, module, datamodule, None, stats, validate=False)
        results["inference_latency_merged_ms_per_example"] = merged["inference_latency_ms_per_example"]
        results.update({f"merged_{k}": v for k, v in merged.items() if k.startswith("test_")})
    results.update(
        evaluated_checkpoint=str(Path(ckpt_path).relative_to(at.run_dir)) if ckpt_path else "final weights",
        optimizer_steps=trainer.global_step,
        epochs=trainer.current_epoch,
        inference_batch_size=run_cfg.dataset.eval_batch_size,
        precision=trainer.precision,
        device=str(module.device),
        **stats.figures(str(trainer.precision), module.device, run_cfg.cache_dir),
        **module.method_results(),
    )


def record_stop(at: Attempt, results: dict, error: BaseException) -> None:
    """What stopped the run, in its record: the status, the error, and what it had trained by then (a
    pruned trial's compute counts in the study). `error.recorded`: whether results.json says it."""
    results["status"] = RunStatus.of(error).value
    results["error"] = f"{type(error).__name__}: {error}"
    if at.trainer is not None and at.stats.first_step_at is not None:
        with contextlib.suppress(Exception):
            results.update(
                at.stats.figures(str(at.trainer.precision), at.module.device, at.run_cfg.cache_dir)
            )
    error.recorded = not (at.restore and at.prior is not None)  # else the sweep's ledger says it


def finish(at: Attempt, results: dict) -> None:
    """However the run ended: its end time and peak memory, the record written (rank 0; the earlier one
    kept when the checkpoint belongs to another run), W&B finished."""
    results["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results.update(peak_memory())
    if at.lead:
        write_results(at.run_dir, at.prior if at.restore and at.prior is not None else results)
    finish_logging(results["status"])


def log_outcome(at: Attempt, results: dict) -> None:
    """The run's warnings and its scores, one line each."""
    for warning in results["warnings"]:
        log.warning("%s: %s", at.run_cfg.run_name, warning)
    task = task_for(at.run_cfg.dataset)
    scores = " ".join(
        f"{k} {results[k]:{task.spec}}" for k in (*task.val_scores, *task.test_scores) if k in results
    )
    log.info(
        "%s: %s | %.1f s -> %s",
        at.run_cfg.run_name,
        scores,
        results["train_time_s"],
        at.run_dir / RESULTS_FILE,
    )


def asked_but_missing(prior: dict, config: dict) -> list[str]:
    """The "asks" keys of resolvers.KEY_ROLES (test, eval_before_training, method.export,
    method.export_merged) this command turns on and the completed run had off: it lacks what they add
    (test figures, the scores before training, the exports), so it is run again rather than skipped."""
    now, then = flatten(config), flatten(prior.get("config") or {})
    return [
        f"{key}=true"
        for key, role in KEY_ROLES.items()
        if role == "asks" and now.get(key) is True and then.get(key, False) is not True
    ]


def completed_differences(prior: dict, current: dict, run_cfg: RunConfig) -> list[str]:
    """What separates a completed run's record from this run: training-relevant config keys (paths,
    logging and skip/resume flags aside) and, for local files or the generator, the data's content."""
    ran = {"precision": prior.get("precision"), "device": str(prior.get("device", "")).split(":")[0]}
    ran = {k: v for k, v in ran.items() if v}  # what trainer.precision / accelerator resolved to then
    differ = differences(fingerprint(prior.get("config", {}), None, ran), current, data=False)
    before = prior.get("data", {}).get("raw_fingerprint")
    now = local_fingerprint(run_cfg.dataset) if before is not None else None
    if now is not None and now != before:
        differ.append("the data files' content or their split assignment changed")
    return differ


def train_batches(run_cfg: RunConfig, examples: int) -> int:
    """Training batches per epoch, after trainer.limit_train_batches (as Lightning counts them)."""
    batches, limit = math.ceil(examples / run_cfg.dataset.batch_size), run_cfg.trainer.limit_train_batches
    if isinstance(limit, int) and not isinstance(limit, bool):
        return min(batches, limit)
    if isinstance(limit, float):
        return int(batches * limit)
    return batches


def optimizer_steps(run_cfg: RunConfig, examples: int) -> int:
    """The optimizer steps the run will take, as Lightning's estimated_stepping_batches counts them."""
    t = run_cfg.trainer
    total = math.ceil(train_batches(run_cfg, examples) / t.accumulate_grad_batches) * max(
        t.max_epochs or 1, 1
    )
    return min(total, t.max_steps) if t.max_steps != -1 else total


def check_validation_interval(run_cfg: RunConfig, datamodule) -> None:
    """Lightning's own error for a validation interval longer than an epoch is a traceback after the data
    is built; say it in one sentence instead."""
    interval = run_cfg.trainer.val_check_interval
    if not isinstance(interval, int) or isinstance(interval, bool):
        return
    batches = train_batches(run_cfg, len(datamodule.data["train"]))
    if interval > batches:
        raise PeftBenchError(
            f"trainer.val_check_interval={interval} is more than the {batches} training batches of an "
            f"epoch: give at most {batches}, a fraction of an epoch (e.g. 0.25), or null (once per epoch)"
        )


def trim_csv_log(path: Path, step: int) -> None:
    """A resumed run logs again the steps after its checkpoint: drop those rows of the CSV log first,
    so the training curves have each step once."""
    if not path.is_file():
        return
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
        fields = rows[0].keys() if rows else []
    kept = [r for r in rows if not r.get("step") or not r["step"].isdigit() or int(r["step"]) < step]
    if len(kept) == len(rows):
        return
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(kept)
    os.replace(tmp, path)


def evaluate(
    trainer: L.Trainer,
    module,
    datamodule,
    ckpt: str | None,
    stats: RunStats,
    validate: bool = True,
    test: bool = True,
) -> dict:
    """val_* and test_* metrics of `ckpt` (None: the module's current weights), and test-set latency;
    `test=False`: validation only (the test split is not touched)."""
    out = {}
    if validate:
        val = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)[0]
        out.update({k.replace("/", "_"): float(v) for k, v in val.items()})
    if not test:
        return out
    for split in trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False):
        out.update({k.replace("/", "_"): float(v) for k, v in split.items()})  # test/acc -> test_acc
    out["inference_latency_ms_per_example"] = stats.latency_ms()
    return out


def build_trainer(
    run_cfg: RunConfig,
    run_dir: Path,
    logger,
    monitor: tuple[str, str] = ("val/acc", "max"),
    callbacks: list[L.Callback] | None = None,
) -> tuple[L.Trainer, ModelCheckpoint | None]:
    """The run's Trainer (and its best-checkpoint callback, None without checkpoints)."""
    t = run_cfg.trainer
    sanity = t.num_sanity_val_steps
    if sanity is None:  # on a CPU, seconds per job (IMDB) for an out-of-memory check that matters on a GPU
        sanity = 0 if device_type(t) == "cpu" else 1
    callbacks, best = trainer_callbacks(run_cfg, run_dir, logger, monitor, callbacks)
    # One owner of requeueing: submitit (SIGUSR2 -> checkpoint -> requeue; the job then resumes from
    # last.ckpt in its run folder). Lightning's own SLURM auto-requeue stays off.
    plugins: list = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    passed = {
        f.name: getattr(t, f.name) for f in dataclasses.fields(t) if f.name not in PEFT_BENCH_TRAINER_KEYS
    }
    trainer = L.Trainer(
        **passed,
        precision=resolved_precision(t),
        num_sanity_val_steps=sanity,
        plugins=plugins,
        default_root_dir=run_dir,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        enable_checkpointing=run_cfg.checkpoint,
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
        use_distributed_sampler=False,  # the datamodule shards its own splits (data/base.py: processes)
        # no_grad, not inference_mode, for evaluation: metric states reset inside inference mode become
        # inference tensors that a later validation (fit after eval_before_training) cannot update
        inference_mode=False,
    )
    return trainer, best


def trainer_callbacks(
    run_cfg: RunConfig,
    run_dir: Path,
    logger,
    monitor: tuple[str, str],
    callbacks: list[L.Callback] | None,
) -> tuple[list[L.Callback], ModelCheckpoint | None]:
    """`callbacks` and the run's own: the best and latest checkpoints, early stopping, the learning-rate
    monitor (with a logger), the progress bar (on a terminal). A method adds its own through
    LightningModule.configure_callbacks."""
    callbacks = list(callbacks or [])
    best = None
    if run_cfg.checkpoint:
        best = ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="best-epoch{epoch}-step{step}",
            monitor=monitor[0],
            mode=monitor[1],
            save_top_k=1,
            save_last=False,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )
        # after `best` (Lightning runs checkpoint callbacks last, in this order): last.ckpt holds its state
        callbacks += [best, LatestCheckpoint(run_dir / "checkpoints", run_cfg.checkpoint_every_n_steps)]
    patience = run_cfg.trainer.early_stopping_patience
    if patience is not None:  # on the task's primary metric, as the best checkpoint
        callbacks.append(EarlyStopping(monitor=monitor[0], mode=monitor[1], patience=patience))
    if logger is not None:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if sys.stderr.isatty():
        callbacks.append(RichProgressBar())
    return callbacks, best


def resolved_precision(t) -> str:
    """trainer.precision, or for null what the device gets: bf16-mixed on a bf16-capable GPU, else 32-true."""
    if t.precision is not None:  # Lightning's aliases: "32": "32-true", "bf16": "bf16-mixed", ...
        return PRECISION_ALIASES.get(str(t.precision), str(t.precision))
    return "bf16-mixed" if device_type(t) == "cuda" and torch.cuda.is_bf16_supported() else "32-true"


def device_type(t) -> str:
    """The device Lightning will train on, decided once for the whole run (precision, sanity checks,
    where a method places its weights): trainer.accelerator=cpu on a GPU machine is a CPU run."""
    if t.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "cuda"
    if t.accelerator in ("mps", "auto") and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def finish_logging(status: str) -> None:
    """End this job's W&B run (if any), so the next job of a sweep starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        try:
            wandb.finish(exit_code=0 if status == "completed" else 1)
        except Exception as e:  # e.g. its service process already killed by SLURM's SIGTERM on requeue:
            # never let it replace the run's own outcome (a requeue's SystemExit must reach submitit)
            log.warning(
                "W&B run not finished cleanly (%s: %s); its log is on disk, `wandb sync` uploads it",
                type(e).__name__,
                e,
            )


__all__ = ["main", "run", "RunStatus", "RunInProgress"]
