"""Workers: each pulls trials from every method's study until each has exactly its budget; a trial is an
ordinary run folder (trials/<method>/<n>), validated only. Local processes, or SLURM jobs through the
submitit launcher the command chooses."""

from __future__ import annotations

import hashlib
import logging
import math
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import submitit
from filelock import FileLock
from hydra import compose, initialize_config_dir
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from peft_bench.callbacks.trial_pruning import ReportToPruner
from peft_bench.checks import compose_job
from peft_bench.config import CONF_DIR
from peft_bench.env import setup_process
from peft_bench.errors import DivergedError, PeftBenchError, RunInProgress, TrialStopped
from peft_bench.io import RunLock, process_alive, process_identity
from peft_bench.tasks import task_for
from peft_bench.train import run
from peft_bench.tune.password import hide_password
from peft_bench.tune.search import sampler, suggest, with_params
from peft_bench.tune.signals import interrupted
from peft_bench.tune.store import KILLED, counted, first_heartbeat, heartbeat, trial_id
from peft_bench.tune.study import Study, parse

log = logging.getLogger("peft_bench")


def validation(study: Study) -> str:
    """How often trials and finals validate: VALIDATIONS_PER_EPOCH times an epoch, or every
    tune.eval_every training batches.
    The same for both, so a final scores on test the checkpoint its trial's value was picked from (the
    best validation one)."""
    every = study.cfg.eval_every
    return f"trainer.val_check_interval={every if every else 1 / study.cfg.VALIDATIONS_PER_EPOCH}"


def trial_overrides(study: Study, method: str, params: dict) -> list[str]:
    """A trial: the run's overrides and the sampled values, validated as the finals are, never tested."""
    return [*study.run_overrides(), *with_params(method, params), "test=false", validation(study)]


def study_job(study: Study, overrides: list[str], run_dir: Path):
    """A trial's or a final run's config, composed as a run's is; with W&B, in one group for the study
    and with an id that a resumed trial or final continues (whichever process or job runs it)."""
    cfg = compose_job(overrides, run_dir)
    if "group" in cfg.logger:
        where = f"{study.key}/{run_dir.relative_to(study.dir)}"
        cfg.logger.name = str(run_dir.relative_to(study.dir))  # trials/lora/3, final/lora/best-s1
        cfg.logger.group = f"tune-{study.key}"[:128]
        cfg.logger.id = hashlib.sha256(where.encode()).hexdigest()[:16]
    return cfg


def run_trial(study: Study, method: str, trial, params: dict) -> float:
    """One trial: an ordinary run in trials/<method>/<n>, validation only, its metric reported as it goes."""
    run_dir = study.dir / "trials" / method / str(trial.number)
    cfg = study_job(study, trial_overrides(study, method, params), run_dir)
    task = task_for(cfg.dataset)
    try:
        results = run(cfg, callbacks=[ReportToPruner(trial, task.monitor)] if study.cfg.prune else [])
    except TrialStopped as e:
        log.info("trial %s #%d: %s", method, trial.number, e)
        raise optuna.TrialPruned(str(e)) from None
    value = results.get(task.select_by)
    if value is None or not math.isfinite(value):
        raise PeftBenchError(f"trial {method} #{trial.number} gave no finite {task.select_by}")
    return value


def trial_alive(t) -> bool:
    """Whether the process that runs a RUNNING trial is alive: its worker's pid on this host (known at
    once; a heartbeat only after its grace period); on another host, its run folder's lock, held while
    its run runs (a trial that died before its folder had a results.json: its heartbeat in an RDB
    storage, through Optuna's fail_stale_trials in mark_dead)."""
    alive = process_alive(t.user_attrs.get("worker", {}))
    if alive is not None:
        return alive
    run_dir = Path(t.user_attrs.get("run_dir", "/nonexistent"))
    if not (run_dir / "results.json").exists():
        return True  # not started yet, or started elsewhere: cannot tell, so it is not replaced
    try:
        RunLock(run_dir).acquire().release()
    except RunInProgress:
        return True
    return False


def claim(study: Study, method: str, opt_study):
    """Under the method's lock: mark trials whose process died as failed (not counted: a new trial takes
    their place), then start a new trial if the budget allows. Returns the trial, or None when the
    method's budget is spent. Asked by hand, not by study.optimize + MaxTrialsCallback: those count the
    budget after a trial ends, so several workers overshoot it; here a trial exists only within it."""
    lock_dir = study.dir / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_dir / f"{method}.lock"):
        mark_dead(study, method, opt_study)
        if len(counted(opt_study)) >= study.cfg.trials:
            return None
        opt_study.sampler = sampler(study.cfg, len(opt_study.get_trials(deepcopy=False)))
        trial = opt_study.ask()
        first_heartbeat(study.store, opt_study, trial)  # under the lock: no trial without a heartbeat
        trial.set_user_attr("run_dir", str(study.dir / "trials" / method / str(trial.number)))
        trial.set_user_attr("worker", process_identity())
        return trial


def mark_dead(study: Study, method: str, opt_study) -> None:
    """Trials whose process died: failed and marked killed (Optuna's fail_stale_trials for a stopped
    heartbeat, the storage's callback marks them; this host's dead pids at once)."""
    if isinstance(study.store, optuna.storages.RDBStorage):
        with warnings.catch_warnings():  # "experimental since v2.9": as study.optimize calls it
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(opt_study)
    for t in opt_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial_alive(t):
            continue
        try:
            study.store.set_trial_user_attr(
                trial_id(study.store, opt_study, t), KILLED, "its process died; replaced"
            )
        except optuna.exceptions.UpdateFinishedTrialError:  # its heartbeat's staleness got there first
            continue
        opt_study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        log.warning(
            "trial %s #%d: its process died; marked failed, a new trial takes its place", method, t.number
        )


def work_argv(argv: list[str], worker: int) -> None:
    """A worker process or SLURM job: the command line as a Study, then work."""
    work(parse(argv), worker)


def work(study: Study, worker: int = 0) -> None:
    """A worker: pulls trials from every method's study until each has its budget."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    specs = study.spaces
    studies = study.studies
    done: set[str] = set()
    while len(done) < len(study.methods):
        if interrupted():  # a Ctrl-C that something below turned into another outcome: no new trial
            raise KeyboardInterrupt
        # the method with the fewest counted trials first: the budgets fill evenly across workers
        order = sorted(
            (m for m in study.methods if m not in done),
            key=lambda m: len(counted(studies[m])),
        )
        method = order[0]
        trial = claim(study, method, studies[method])
        if trial is None:
            done.add(method)
            continue
        params = suggest(trial, specs[method])
        log.info("worker %d: trial %s #%d %s", worker, method, trial.number, params)
        try:
            with heartbeat(study.store, studies[method], trial):
                value = run_trial(study, method, trial, params)
        except optuna.TrialPruned:
            tell(studies[method], method, trial, state=optuna.trial.TrialState.PRUNED)
        except submitit.core.utils.UncompletedJobError:  # a SLURM time limit, not the method's fault:
            raise  # the trial stays running; the next claim finds its process gone and replaces it
        except (DivergedError, PeftBenchError, RuntimeError, ValueError) as e:  # never the end of the study
            if interrupted():  # a Ctrl-C that became an error on its way up (a DataLoader's, say)
                stop_interrupted(studies[method], method, trial)
            note(trial, "error", hide_password(f"{type(e).__name__}: {e}")[:500])
            tell(studies[method], method, trial, state=optuna.trial.TrialState.FAIL)
            log.warning("trial %s #%d failed: %s", method, trial.number, hide_password(str(e)))
        except (KeyboardInterrupt, SystemExit):  # Lightning turns a Ctrl-C into sys.exit(1)
            if not interrupted():
                raise  # SIGTERM's exit (143), not a Ctrl-C
            stop_interrupted(studies[method], method, trial)
        else:
            tell(studies[method], method, trial, values=value)


def note(trial, key: str, value: str) -> None:
    """A user attribute on a trial, unless another worker has finished it meanwhile (then tell says so)."""
    try:
        trial.set_user_attr(key, value)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass


def stop_interrupted(opt_study, method: str, trial) -> None:
    """Ctrl-C during a trial: it is not counted (its run folder says interrupted; the resumed study
    replaces it), no other trial starts, and the command exits 130."""
    note(trial, KILLED, "interrupted (Ctrl-C); replaced when the study resumes")
    tell(opt_study, method, trial, state=optuna.trial.TrialState.FAIL)
    log.warning("trial %s #%d: interrupted; not counted, no other trial starts", method, trial.number)
    raise KeyboardInterrupt


def tell(opt_study, method: str, trial, **outcome) -> None:
    """Record a trial's outcome, unless another worker already marked it killed meanwhile (a worker on
    another host that found its run folder unlocked between the run's end and this tell)."""
    told = opt_study.tell(trial, skip_if_finished=True, **outcome)
    state = told.state
    if state != outcome.get("state", optuna.trial.TrialState.COMPLETE):
        log.warning(
            "trial %s #%d: already marked %s by another worker; its outcome is not recorded",
            method,
            trial.number,
            state.name,
        )


def start_workers(study: Study, argv: list[str]) -> None:
    """tune.workers workers: local processes, or jobs of the submitit launcher the overrides choose
    (hydra/launcher=slurm_gpu, slurm_cpu, submitit_local); each pulls trials until the budgets are spent."""
    n = study.cfg.workers
    launcher = launcher_config(study)
    if launcher is None:
        if n == 1:
            work(study)
            return
        procs = [
            subprocess.Popen([sys.executable, "-m", "peft_bench.tune", "--worker", str(i), *argv])
            for i in range(n)
        ]
        try:
            codes = [p.wait() for p in procs]
        except KeyboardInterrupt:  # the workers got the Ctrl-C too (one process group): they stop
            for p in procs:
                p.wait()
            raise
        if any(codes):
            raise PeftBenchError(f"tuning workers exited with {codes}; their output says why")
        return
    executor = submitit_executor(study, launcher)
    jobs = [executor.submit(Worker(), argv, i) for i in range(n)]
    log.info("tuning: %d workers submitted (%s)", n, ", ".join(j.job_id for j in jobs))
    wait_for(jobs, "tuning worker")


def wait_for(jobs, what: str) -> None:
    """Wait for every submitit job; one sentence per failed job (its id and log), not a traceback."""
    failed = []
    for job in jobs:
        try:
            job.result()
        except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as e:
            last = [line for line in str(e).splitlines() if line.strip()][-1:] or [""]
            failed.append(f"{what} job {job.job_id} failed ({last[0][:200]}); log: {job.paths.stderr}")
    if failed:
        raise PeftBenchError("; ".join(failed))


class Worker(submitit.helpers.Checkpointable):
    """A tuning worker as a SLURM job: on a time limit or a preemption submitit requeues it (up to the
    launcher's max_num_timeout) and it goes on pulling trials; the trial it was running is found dead by
    the next claim and replaced."""

    def __call__(self, argv: list[str], worker: int) -> None:
        setup_process(check_hub=False)  # a job process of its own: set up as every entry point
        work_argv(argv, worker)


def launcher_config(study: Study) -> dict | None:
    """The submitit launcher's settings when the overrides choose one; None for Hydra's basic launcher."""
    if not study.launcher_overrides():
        return None
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config", overrides=[*study.overrides, "method=" + study.methods[0]], return_hydra_config=True
        )
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    return launcher if "submitit" in str(launcher.get("_target_", "")) else None


def submitit_executor(study: Study, launcher: dict):
    """A submitit executor with the launcher's settings, mapped as hydra-submitit-launcher maps them.
    Not its launch(): that runs Hydra jobs of the run command, and a worker pulls many trials."""
    cluster = "slurm" if "Slurm" in launcher["_target_"] else "local"
    params = {k: v for k, v in launcher.items() if k not in ("_target_", "submitit_folder")}
    init = {"folder": str(study.dir / "workers" / "%j")}
    if "max_num_timeout" in params:
        init["max_num_timeout"] = params.pop("max_num_timeout")
    executor = submitit.AutoExecutor(cluster=cluster, **init)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{
            k if k in base else f"{cluster}_{k}": v
            for k, v in params.items()
            if v is not None and k != "name"
        }
    )
    executor.update_parameters(name=f"tune-{study.key[:40]}")
    return executor
