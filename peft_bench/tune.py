"""A fair comparison in one command: each method tuned on the validation split with an equal budget,
then its best setting (and its untuned default) re-run over seeds and evaluated on test.

    python -m peft_bench.tune method=lora,dora,hira dataset=sst2 model=minilm tune.trials=16 tune.seeds=3
    python -m peft_bench.tune ... hydra/launcher=slurm_gpu tune.workers=8      # trials as SLURM jobs
    python -m peft_bench.tune method=lora,dora,vera dataset=cola,mrpc,rte,stsb tune.trials=16 tune.seeds=3

Every other override means what it does for a run (one value each; `method` and `dataset` may list
several).
The folder (tune.dir, default tune/<the command's overrides>) holds study.db (Optuna's storage, one
study per method; tune.storage=postgresql://... or journal:<file> for a cluster), trials/<method>/<n>/
and final/<method>/<best|default>-s<seed>/ (ordinary run folders), and report/. Re-running the same
command continues the same study: finished trials are never repeated, a trial whose process died is
marked failed and replaced, and each method ends with exactly tune.trials finished trials.

Several datasets: one study per dataset, each exactly the one-dataset command with
tune.dir=<folder>/<dataset> (its own storage, finals, report and resume), run one after another with the
same budget, every dataset and method checked before the first trial; then <folder>/report/report.md, the
tuned benchmark table (each method's best setting on each dataset, over the seeds) with a link to each
dataset's own report.

Search: Optuna's TPE sampler (seeded) over each method's `method.search` space (default: the learning
rate, log-uniform over a decade either side of the method's default); every trial trains the same
steps. Early stopping: the validation metric is reported every tune.eval_every training batches and
Optuna's median pruner stops trials that trail the others; pruned and failed trials are recorded and
never count as best (a diverged trial is a failed one, never the end of the study).
Watch a study in a browser: `optuna-dashboard sqlite:///<tune dir>/study.db` (pip install optuna-dashboard).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import lightning as L
import submitit
from omegaconf import OmegaConf

from peft_bench.errors import ConfigError, DivergedError, PeftBenchError, TrialStopped

log = logging.getLogger("peft_bench")

FINISHED = ("COMPLETE", "PRUNED", "FAIL")
KILLED = "killed"  # user attribute of a trial whose process died: marked failed, not counted, replaced
# a password given in tune.storage's URL: main() moves it here, out of the command line that workers and
# final runs (local processes, submitit's pickled jobs) are given; Study.storage_url puts it back
STORAGE_PASSWORD = "PEFT_BENCH_STORAGE_PASSWORD"
MASK = "***"
CONNECT_TIMEOUT_S = 5  # a PostgreSQL server that does not answer fails the command in seconds, not minutes
URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):([^@\s]*)@")


def hide_password(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***: scheme://user:***@host/db. The one
    helper for everything the command writes or prints that may hold a storage URL (study.json, the
    report, its messages)."""
    return URL_PASSWORD.sub(rf"\1:{MASK}@", text)


def password_out_of(argv: list[str]) -> list[str]:
    """The command line with tune.storage's password masked, the password moved to the environment
    (STORAGE_PASSWORD), which this process's workers and final runs inherit: no command line (`ps`), pickled
    submitit job or log holds it. PGPASSWORD or ~/.pgpass keep it off the command line from the start."""
    out = []
    for arg in argv:
        found = URL_PASSWORD.search(arg) if arg.startswith("tune.storage=") else None
        if found and found.group(2) != MASK:
            os.environ[STORAGE_PASSWORD] = found.group(2)
            arg = hide_password(arg)
        out.append(arg)
    return out


@dataclass
class TuneConfig:
    trials: int = 16  # finished trials per method (the equal budget)
    seeds: int = 3  # seeds of the final runs of each method's best and default settings (1..seeds)
    workers: int = 1  # processes (or SLURM jobs, with a submitit launcher) pulling trials from the studies
    dir: str | None = None  # the tune folder; default tune/<the command's overrides>
    storage: str | None = None  # Optuna storage URL; default sqlite:///<dir>/study.db; journal:<file> too
    eval_every: int | None = None  # validate and report every N training batches; None: 4 times an epoch
    prune: bool = True  # stop trials that trail (Optuna's median pruner)
    # trials that run to the end before the pruner may stop one; None: min(5, max(2, trials // 2))
    pruner_startup: int | None = None
    startup_trials: int | None = None  # random trials before TPE models the space; None: max(2, trials // 4)
    sampler_seed: int = 0
    defaults: bool = True  # also run each method's untuned default over the seeds (the change from tuning)

    def problems(self) -> list[str]:
        out = []
        for key in ("trials", "seeds", "workers"):
            if getattr(self, key) < 1:
                out.append(f"tune.{key}={getattr(self, key)}: must be >= 1")
        if self.eval_every is not None and self.eval_every < 1:
            out.append(f"tune.eval_every={self.eval_every}: must be >= 1, or null")
        if self.pruner_startup is not None and self.pruner_startup < 0:
            out.append(f"tune.pruner_startup={self.pruner_startup}: must be >= 0")
        if self.startup_trials is not None and self.startup_trials < 0:
            out.append(f"tune.startup_trials={self.startup_trials}: must be >= 0, or null")
        if not 0 <= self.sampler_seed < 2**32:
            out.append(f"tune.sampler_seed={self.sampler_seed}: must be in [0, 2**32)")
        return out

    def startup(self) -> int:
        """Random trials before TPE models the space."""
        return max(2, self.trials // 4) if self.startup_trials is None else self.startup_trials

    def prune_startup(self) -> int:
        """Trials that run to the end before the median pruner may stop one. Optuna's default is 5;
        never more than half the budget. With 2, on real SST-2 (docs/tune.md), the median of two good
        trials stopped a trial whose first validation equalled the eventual best one's."""
        if self.pruner_startup is not None:
            return self.pruner_startup
        return min(5, max(2, self.trials // 2))


# ---------------------------------------------------------------------------------- the command


@dataclass
class Study:
    """One tuning command: its run overrides, methods, options, folder and storage."""

    overrides: list[str]  # run overrides, methods aside (hydra/launcher and hydra.* included)
    methods: list[str]
    cfg: TuneConfig
    dir: Path
    key: str  # the command as a name: the studies' names in a shared storage

    @property
    def storage_url(self) -> str:
        """The URL to connect with (the password put back from the environment): never to be shown."""
        if self.cfg.storage:
            password = os.environ.get(STORAGE_PASSWORD)
            if password is not None and f":{MASK}@" in self.cfg.storage:
                return self.cfg.storage.replace(f":{MASK}@", f":{password}@", 1)
            return self.cfg.storage
        return f"sqlite:///{(self.dir / 'study.db').absolute()}"

    @property
    def storage_shown(self) -> str:
        """The storage URL as it is written down and printed: its password hidden."""
        return hide_password(self.storage_url)

    @functools.cached_property
    def task(self):
        """The task of the study's dataset (what it scores, which way is better)."""
        from peft_bench.checks import compose_job
        from peft_bench.tasks import task_for

        return task_for(compose_job([*self.run_overrides(), f"method={self.methods[0]}"]).dataset)

    def run_overrides(self) -> list[str]:
        return [o for o in self.overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]

    def launcher_overrides(self) -> list[str]:
        return [o for o in self.overrides if o.lstrip("+~").startswith(("hydra.", "hydra/"))]


def parse(argv: list[str]) -> Study:
    """The command line as a Study: tune.* options typed, methods split out, every job checked."""
    from peft_bench.checks import check_config, compose_job
    from peft_bench.sweep import sweep_jobs

    tune_args = [a for a in argv if a.startswith("tune.")]
    rest = [a for a in argv if not a.startswith("tune.") and a not in ("-m", "--multirun")]
    names = [f.name for f in fields(TuneConfig)]
    problems = [
        f"{a.split('=')[0]}: no such tune option (they are {', '.join(f'tune.{n}' for n in names)})"
        for a in tune_args
        if a.removeprefix("tune.").split("=")[0] not in names
    ]
    cfg = TuneConfig()
    for arg in tune_args:
        if arg.removeprefix("tune.").split("=")[0] not in names:
            continue
        try:  # typed one by one, so every bad value is named
            merged = OmegaConf.merge(
                OmegaConf.structured(cfg), OmegaConf.from_dotlist([arg.removeprefix("tune.")])
            )
            cfg = OmegaConf.to_object(merged)
        except Exception as e:  # noqa: BLE001  (OmegaConf's validation error names the type)
            problems.append(f"{arg}: {str(e).splitlines()[0]}")
    problems += cfg.problems()
    methods_arg = [a for a in rest if a.split("=", 1)[0] == "method"]
    methods = methods_arg[-1].split("=", 1)[1].split(",") if methods_arg else ["lora"]
    overrides = [a for a in rest if a.split("=", 1)[0] != "method"]
    several = [o for o in overrides if len(sweep_jobs([o])) > 1]
    if several:
        problems.append(
            f"{several}: give one value each; only method= and dataset= may list several (the study "
            "compares the methods, on each dataset)"
        )
    if len(set(methods)) != len(methods):
        problems.append(f"method={','.join(methods)}: a method is listed twice")
    if problems:
        raise ConfigError(problems)
    # every method's config composes and passes the checks, and so does every value its search may give a
    # trial, before anything is fetched or trained; the problems of every method at once
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    run_overrides = [o for o in overrides if not o.startswith(("hydra.", "hydra/"))]
    for method in methods:
        said = f"method={method}: " if len(methods) > 1 else ""
        try:
            spec, found = space_and_problems(
                check_config(compose_job([*run_overrides, f"method={method}"])).method
            )
            found += search_problems(run_overrides, method, spec)
        except (HydraException, OmegaConfBaseException) as e:  # an unknown method, a mistyped key
            found = [f"method={method}: {str(e).splitlines()[0]}"]
            said = ""
        except ConfigError as e:  # the method's run config, or its search space's shape
            found = e.problems
        problems += [said + p for p in found]
    if problems:
        raise ConfigError(problems)
    key = command_key(overrides, methods, tune_args)
    folder = Path(cfg.dir) if cfg.dir else Path("tune") / key
    return Study(overrides, methods, cfg, folder.absolute(), key)


def command_key(overrides: list[str], methods: list[str], tune_args: list[str]) -> str:
    """The command as a name (its default folder, its studies' names): run overrides, methods and the tune
    options that shape the study (not where it is kept, nor how many workers run it)."""
    from peft_bench.resolvers import overrides_key

    what = [
        *overrides,
        f"method={','.join(methods)}",
        *[a for a in tune_args if a.split("=")[0] not in ("tune.workers", "tune.dir", "tune.storage")],
    ]
    return overrides_key([o for o in what if not o.startswith(("hydra.", "hydra/"))])


# ---------------------------------------------------------------------------------- several datasets


def listed_datasets(argv: list[str]) -> list[str] | None:
    """The datasets a command lists (`dataset=cola,mrpc`, Hydra's sweep syntax), or None for one."""
    from peft_bench.sweep import sweep_jobs

    given = [a for a in argv if a.split("=", 1)[0] == "dataset"]
    if not given:
        return None
    names = [job[0].split("=", 1)[1] for job in sweep_jobs([given[-1]])]
    return names if len(names) > 1 else None


@dataclass
class DatasetStudy:
    """One dataset's study of a several-dataset command: exactly the one-dataset command
    `... dataset=<name> tune.dir=<folder>/<name>`, its own folder, storage and resume."""

    dataset: str
    argv: list[str]  # that command's arguments: what its workers and final runs are given
    study: Study


def parse_datasets(argv: list[str], datasets: list[str]) -> tuple[Path, list[DatasetStudy]]:
    """(the command's folder, one study per dataset, in the order given), every method on every dataset
    checked first: one ConfigError with every problem, a problem all datasets share said once."""
    rest = [a for a in argv if a not in ("-m", "--multirun")]
    methods_arg = [a for a in rest if a.split("=", 1)[0] == "method"]
    methods = methods_arg[-1].split("=", 1)[1].split(",") if methods_arg else ["lora"]
    tune_args = [a for a in rest if a.startswith("tune.")]
    overrides = [a for a in rest if not a.startswith("tune.") and a.split("=", 1)[0] != "method"]
    given = [a.split("=", 1)[1] for a in tune_args if a.split("=", 1)[0] == "tune.dir"]
    root = Path(given[-1]) if given and given[-1] not in ("", "null") else None
    root = (root or Path("tune") / command_key(overrides, methods, tune_args)).absolute()
    studies, found = [], {}
    for name in datasets:
        sub = [a for a in rest if a.split("=", 1)[0] not in ("dataset", "tune.dir")]
        sub += [f"dataset={name}", f"tune.dir={root / name}"]
        try:
            studies.append(DatasetStudy(name, sub, parse(sub)))
        except ConfigError as e:
            found[name] = e.problems
    problems = []
    if len(set(datasets)) < len(datasets):
        problems.append(f"dataset={','.join(datasets)}: a dataset is listed twice")
    # a problem of the options or of a method on every dataset (tune.trials=0, an unknown method): once
    every = [p for p in found.get(datasets[0], []) if all(p in found.get(d, []) for d in datasets)]
    problems += every + [f"dataset={d}: {p}" for d, ps in found.items() for p in ps if p not in every]
    if problems:
        raise ConfigError(problems)
    return root, studies


# ---------------------------------------------------------------------------------- search space


def space(method) -> dict[str, dict]:
    """The method's search space as {config key under method: spec}: spec {low, high, log} (float, or
    int when both bounds are ints) or {choices}. Default: lr, log-uniform over [lr/10, lr*10]. Raises one
    ConfigError naming every malformed key."""
    out, problems = space_and_problems(method)
    if problems:
        raise ConfigError(problems)
    return out


def space_and_problems(method) -> tuple[dict[str, dict], list[str]]:
    """The well-formed keys' specs, and a sentence for each malformed one."""
    given = method.search if getattr(method, "search", None) else {"lr": [method.lr / 10, method.lr * 10]}
    if not isinstance(given, dict):
        raise ConfigError([f"method.search={given!r}: give a mapping, e.g. {{lr: [1e-4, 1e-2]}}"])
    out, problems = {}, []
    for key, spec in dict(given).items():
        try:
            out[key] = key_space(method, key, spec)
        except ConfigError as e:
            problems += e.problems
    return out, problems


def key_space(method, key: str, spec) -> dict:
    """One key's spec, normalised: {low, high, log} or {choices}; ConfigError if it is malformed."""
    if not hasattr(method, key):
        raise ConfigError([f"method.search: method {method.name} has no key {key!r}"])
    if isinstance(spec, list | tuple) and len(spec) == 2:
        spec = {"low": spec[0], "high": spec[1], "log": True}
    if isinstance(spec, dict) and "choices" in spec:
        choices = spec["choices"]
        if (
            not isinstance(choices, list | tuple)
            or not choices
            or not all(c is None or isinstance(c, str | int | float | bool) for c in choices)
        ):
            raise ConfigError(
                [f"method.search.{key}.choices={choices!r}: give a non-empty list of plain values"]
            )
        return {"choices": list(choices)}
    if (
        isinstance(spec, dict)
        and {"low", "high"} <= set(spec)
        and all(isinstance(spec[b], int | float) and not isinstance(spec[b], bool) for b in ("low", "high"))
        and spec["low"] < spec["high"]
    ):
        if spec.get("log", True) and spec["low"] <= 0:
            raise ConfigError(
                [
                    f"method.search.{key}: low={spec['low']} on a log scale; a log-uniform range needs "
                    "low > 0 (or log: false)"
                ]
            )
        return {"low": spec["low"], "high": spec["high"], "log": bool(spec.get("log", True))}
    raise ConfigError(
        [
            f"method.search.{key}={spec!r}: give [low, high] (log-uniform), "
            "{low, high, log} or {choices: [...]}"
        ]
    )


def search_problems(run_overrides: list[str], method: str, spec: dict[str, dict]) -> list[str]:
    """Every value the search may give a trial (each choice, both bounds of a range) checked as that trial's
    run will be, by composing its config and running check_config (the run's rules, in one place): an
    invalid one is named with the rule it breaks, before a trial of the budget is spent on it."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from peft_bench.checks import check_config, compose_job

    out = []
    for key, s in spec.items():
        values = (
            [("choice", c) for c in s["choices"]]
            if "choices" in s
            else [("low", s["low"]), ("high", s["high"])]
        )
        for what, value in values:
            try:
                check_config(compose_job([*run_overrides, *with_params(method, {key: value})]))
            except ConfigError as e:
                out += [f"method.search.{key}: the {what} {value!r} is invalid: {p}" for p in e.problems]
            except (HydraException, OmegaConfBaseException) as e:  # a value of the wrong type for the key
                out.append(f"method.search.{key}: the {what} {value!r} is invalid: {str(e).splitlines()[0]}")
    return out


def method_configs(study: Study) -> dict:
    """Each method's config as the command composes it (its untuned default)."""
    from peft_bench.checks import compose_job

    return {
        m: OmegaConf.to_object(compose_job([*study.run_overrides(), f"method={m}"])).method
        for m in study.methods
    }


def method_spaces(study: Study) -> dict[str, dict[str, dict]]:
    return {m: space(c) for m, c in method_configs(study).items()}


def suggest(trial, spec: dict[str, dict]) -> dict[str, Any]:
    params = {}
    for key, s in spec.items():
        if "choices" in s:
            params[key] = trial.suggest_categorical(key, s["choices"])
        elif isinstance(s["low"], int) and isinstance(s["high"], int):
            params[key] = trial.suggest_int(key, s["low"], s["high"], log=s["log"])
        else:
            params[key] = trial.suggest_float(key, float(s["low"]), float(s["high"]), log=s["log"])
    return params


# ---------------------------------------------------------------------------------- storage, studies


def storage(study: Study):
    import optuna

    url = study.storage_url
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    if url.startswith("sqlite:"):
        study.dir.mkdir(parents=True, exist_ok=True)
    import sqlalchemy.exc

    # a busy SQLite file makes a writer wait, not fail, while another worker commits
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else None
    if url.startswith("postgresql") and "connect_timeout" not in url:
        engine = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except sqlalchemy.exc.OperationalError as e:
        raise PeftBenchError(unreachable(study, e)) from None


def unreachable(study: Study, e: Exception) -> str:
    """One sentence for a storage that cannot be reached: where, why (the driver's words), what to check."""
    from sqlalchemy.engine import make_url

    url = make_url(study.storage_url)
    lines = str(getattr(e, "orig", None) or e).splitlines() or [""]
    why = hide_password(lines[0].removeprefix("connection failed: ").strip())
    if url.get_backend_name() != "postgresql":
        return f"tune.storage={study.storage_shown}: cannot open the storage ({why})"
    return (
        f"tune.storage={study.storage_shown}: cannot connect to PostgreSQL at host "
        f"{url.host or 'localhost'}, port {url.port or 5432} ({why}): check that the server is running "
        "there and accepts TCP connections from this host (listen_addresses, pg_hba.conf), and the "
        f"credentials (user {url.username}, the password from PGPASSWORD or ~/.pgpass)"
    )


def sampler(cfg: TuneConfig, n: int):
    """TPE for a study's n-th trial, seeded from (tune.sampler_seed, n): every trial draws from a stream of
    its own, so a replacement after a kill or a second worker does not redraw a trial's values, and one
    worker's study is the same on every machine. (One TPESampler per process would restart its stream in
    every worker and on every resume.) Running trials count as bad ones (constant liar), so parallel
    workers spread out."""
    import optuna

    return optuna.samplers.TPESampler(
        seed=(cfg.sampler_seed * 1_000_003 + n) % 2**32,
        n_startup_trials=cfg.startup(),
        constant_liar=True,
    )


def open_study(study: Study, method: str, task_higher_is_better: bool, store=None):
    import optuna

    cfg = study.cfg
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=cfg.prune_startup())
        if cfg.prune
        else optuna.pruners.NopPruner()
    )
    return optuna.create_study(
        storage=store or storage(study),
        study_name=f"{study.key}/{method}",
        sampler=sampler(cfg, 0),
        pruner=pruner,
        direction="maximize" if task_higher_is_better else "minimize",
        load_if_exists=True,
    )


STUDY_FILE = "study.json"  # in the tune folder: the storage (password hidden) and each method's study name


def create_studies(study: Study) -> None:
    """Create the storage and every method's study once, before any worker starts (SQLite's schema
    set-up is not safe from two processes at once), and say in `study.json` where they are; under the
    folder's lock, so that of two commands started at once on one folder the second finds the first's
    study.json (and is refused if it is another study), as if started after it."""
    from filelock import FileLock, Timeout

    (study.dir / "locks").mkdir(parents=True, exist_ok=True)
    lock = FileLock(study.dir / "locks" / f"{STUDY_FILE}.lock", timeout=600)
    try:
        with lock:
            create_studies_locked(study)
    except Timeout:
        raise PeftBenchError(
            f"{lock.lock_file}: another tune command has held it for 10 minutes while creating its "
            "studies; is it stuck on its storage? Stop it, or give this one another tune.dir"
        ) from None


def create_studies_locked(study: Study) -> None:
    from peft_bench.io import atomic_write

    shown = study.storage_shown
    names = {m: f"{study.key}/{m}" for m in study.methods}
    path = study.dir / STUDY_FILE
    if path.is_file():  # its trial folders are numbered per study: another study's would collide with them
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError):
            before = None
        if before != {"storage": shown, "studies": names}:
            raise ConfigError(
                [
                    f"tune.dir={study.dir} holds another study ({path} names "
                    f"{before.get('studies') if isinstance(before, dict) else 'an unreadable one'}, in "
                    f"{before.get('storage') if isinstance(before, dict) else '?'}): a study's options, "
                    "methods, run overrides and storage are fixed once it starts; give the same command, "
                    "or another tune.dir"
                ]
            )
    task = study.task
    store = storage(study)
    for method in study.methods:
        open_study(study, method, task.higher_is_better, store)
    atomic_write(study.dir / STUDY_FILE, json.dumps({"storage": shown, "studies": names}, indent=2) + "\n")


def counted(trials) -> list:
    """The trials that use the budget: all but those whose process died (replaced by new ones)."""
    return [t for t in trials if t.user_attrs.get(KILLED) is None]


# ---------------------------------------------------------------------------------- one worker


class ReportToPruner(L.Callback):
    """Reports the monitored validation metric to the trial after every validation during training and
    stops the run (TrialStopped) when the pruner says the trial trails. A NaN is not reported: a diverged
    trial fails on its own, the study goes on."""

    def __init__(self, trial, monitor: str):
        self.trial, self.monitor = trial, monitor

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        self.trial.report(float(value), trainer.global_step)
        if self.trial.should_prune():
            raise TrialStopped(
                f"pruned at optimizer step {trainer.global_step}: {self.monitor} {float(value):.4f} "
                "trails the median of the trials before it"
            )


def with_params(method: str, params: dict) -> list[str]:
    return [
        f"method={method}",
        *[f"method.{k}={json.dumps(v)}" for k, v in params.items()],  # None -> null, a str quoted
    ]


def validation(study: Study) -> str:
    """How often trials and finals validate: 4 times an epoch, or every tune.eval_every training batches.
    The same for both, so a final scores on test the checkpoint its trial's value was picked from (the
    best validation one)."""
    every = study.cfg.eval_every
    return f"trainer.val_check_interval={every if every else 0.25}"


def trial_overrides(study: Study, method: str, params: dict) -> list[str]:
    """A trial: the run's overrides and the sampled values, validated as the finals are, never tested."""
    return [*study.run_overrides(), *with_params(method, params), "test=false", validation(study)]


def study_job(study: Study, overrides: list[str], run_dir: Path):
    """A trial's or a final run's config, composed as a run's is; with W&B, in one group for the study
    and with an id that a resumed trial or final continues (whichever process or job runs it)."""
    import hashlib

    from peft_bench.checks import compose_job

    cfg = compose_job(overrides, run_dir)
    if "group" in cfg.logger:
        where = f"{study.key}/{run_dir.relative_to(study.dir)}"
        cfg.logger.name = str(run_dir.relative_to(study.dir))  # trials/lora/3, final/lora/best-s1
        cfg.logger.group = f"tune-{study.key}"[:128]
        cfg.logger.id = hashlib.sha256(where.encode()).hexdigest()[:16]
    return cfg


def run_trial(study: Study, method: str, trial, params: dict) -> float:
    """One trial: an ordinary run in trials/<method>/<n>, validation only, its metric reported as it goes."""
    import optuna

    from peft_bench.tasks import task_for
    from peft_bench.train import run

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
    """Whether the process that runs a RUNNING trial is alive: its worker's pid on this host; on another
    host, its run folder's lock (held while its run runs)."""
    from peft_bench.errors import RunInProgress
    from peft_bench.io import RunLock, process_alive

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
    method's budget is spent."""
    import optuna
    from filelock import FileLock

    from peft_bench.io import process_identity

    lock_dir = study.dir / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_dir / f"{method}.lock"):
        for t in opt_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if trial_alive(t):
                continue
            opt_study._storage.set_trial_user_attr(t._trial_id, KILLED, "its process died; replaced")
            opt_study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            log.warning(
                "trial %s #%d: its process died; marked failed, a new trial takes its place", method, t.number
            )
        if len(counted(opt_study.get_trials(deepcopy=False))) >= study.cfg.trials:
            return None
        opt_study.sampler = sampler(study.cfg, len(opt_study.get_trials(deepcopy=False)))
        trial = opt_study.ask()
        trial.set_user_attr("run_dir", str(study.dir / "trials" / method / str(trial.number)))
        trial.set_user_attr("worker", process_identity())
        return trial


def work(argv: list[str], worker: int = 0) -> None:
    """A worker: pulls trials from every method's study until each has its budget."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = parse(argv)
    store = storage(study)

    task = study.task
    specs = method_spaces(study)
    studies = {m: open_study(study, m, task.higher_is_better, store) for m in study.methods}
    done: set[str] = set()
    while len(done) < len(study.methods):
        if interrupted():  # a Ctrl-C that something below turned into another outcome: no new trial
            raise KeyboardInterrupt
        # the method with the fewest counted trials first: the budgets fill evenly across workers
        order = sorted(
            (m for m in study.methods if m not in done),
            key=lambda m: len(counted(studies[m].get_trials(deepcopy=False))),
        )
        method = order[0]
        trial = claim(study, method, studies[method])
        if trial is None:
            done.add(method)
            continue
        params = suggest(trial, specs[method])
        log.info("worker %d: trial %s #%d %s", worker, method, trial.number, params)
        try:
            value = run_trial(study, method, trial, params)
        except optuna.TrialPruned:
            tell(studies[method], method, trial, state=optuna.trial.TrialState.PRUNED)
        except submitit.core.utils.UncompletedJobError:  # a SLURM time limit, not the method's fault:
            raise  # the trial stays running; the next claim finds its process gone and replaces it
        except (DivergedError, PeftBenchError, RuntimeError, ValueError) as e:  # never the end of the study
            if interrupted():  # a Ctrl-C that became an error on its way up (a DataLoader's, say)
                stop_interrupted(studies[method], method, trial)
            trial.set_user_attr("error", hide_password(f"{type(e).__name__}: {e}")[:500])
            tell(studies[method], method, trial, state=optuna.trial.TrialState.FAIL)
            log.warning("trial %s #%d failed: %s", method, trial.number, hide_password(str(e)))
        except (KeyboardInterrupt, SystemExit):  # Lightning turns a Ctrl-C into sys.exit(1)
            if not interrupted():
                raise  # SIGTERM's exit (143), not a Ctrl-C
            stop_interrupted(studies[method], method, trial)
        else:
            tell(studies[method], method, trial, values=value)


def stop_interrupted(opt_study, method: str, trial) -> None:
    """Ctrl-C during a trial: it is not counted (its run folder says interrupted; the resumed study
    replaces it), no other trial starts, and the command exits 130."""
    import optuna

    trial.set_user_attr(KILLED, "interrupted (Ctrl-C); replaced when the study resumes")
    tell(opt_study, method, trial, state=optuna.trial.TrialState.FAIL)
    log.warning("trial %s #%d: interrupted; not counted, no other trial starts", method, trial.number)
    raise KeyboardInterrupt


def tell(opt_study, method: str, trial, **outcome) -> None:
    """Record a trial's outcome, unless another worker already marked it killed meanwhile (a worker on
    another host that found its run folder unlocked between the run's end and this tell)."""
    try:
        opt_study.tell(trial, **outcome)
    except (RuntimeError, ValueError):
        state = opt_study._storage.get_trial(trial._trial_id).state
        if not state.is_finished():
            raise
        log.warning(
            "trial %s #%d: already marked %s by another worker; its outcome is not recorded",
            method,
            trial.number,
            state.name,
        )


# ---------------------------------------------------------------------------------- workers and finals


def start_workers(study: Study, argv: list[str]) -> None:
    """tune.workers workers: local processes, or jobs of the submitit launcher the overrides choose
    (hydra/launcher=slurm_gpu, slurm_cpu, submitit_local); each pulls trials until the budgets are spent."""
    n = study.cfg.workers
    launcher = launcher_config(study)
    if launcher is None:
        if n == 1:
            work(argv)
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
        work(argv, worker)


def launcher_config(study: Study) -> dict | None:
    """The submitit launcher's settings when the overrides choose one; None for Hydra's basic launcher."""
    from hydra import compose, initialize_config_dir

    from peft_bench.config import CONF_DIR

    if not study.launcher_overrides():
        return None
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config", overrides=[*study.overrides, "method=" + study.methods[0]], return_hydra_config=True
        )
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    return launcher if "submitit" in str(launcher.get("_target_", "")) else None


def submitit_executor(study: Study, launcher: dict):
    """A submitit executor with the launcher's settings, mapped as hydra-submitit-launcher maps them."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

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


def unfinished(study: Study) -> list[str]:
    """Trials still running (an earlier command's orphaned workers, a SLURM job still going) or budgets not
    spent: the finals must wait, or they would test a best setting that a later trial may beat."""
    import optuna

    task = study.task
    out = []
    for method in study.methods:
        trials = counted(open_study(study, method, task.higher_is_better).get_trials(deepcopy=False))
        running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
        for t in running:
            who = t.user_attrs.get("worker", {})
            out.append(
                f"{method} trial #{t.number} is still running (pid {who.get('pid')} on {who.get('host')})"
            )
        if len(trials) < study.cfg.trials:
            out.append(f"{method} has {len(trials)} of {study.cfg.trials} trials")
    return out


def best_params(opt_study) -> dict | None:
    import optuna

    complete = [
        t for t in opt_study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE
    ]
    return opt_study.best_trial.params if complete else None


def final_runs(study: Study) -> list[tuple[str, str, int, dict]]:
    """(method, which: best | default, seed, params) of every final run."""

    task = study.task
    out = []
    for method in study.methods:
        best = best_params(open_study(study, method, task.higher_is_better))
        if best is None:
            continue  # main() says so, with the trials' errors
        for seed in range(1, study.cfg.seeds + 1):
            out.append((method, "best", seed, best))
            if study.cfg.defaults:
                out.append((method, "default", seed, {}))
    return out


def without_a_best(study: Study) -> list[str]:
    """A sentence for each method none of whose trials completed (so it has no final runs), with the
    first failed trial's error: an error that fails every trial must not pass for a result."""

    task = study.task
    out = []
    for method in study.methods:
        opt_study = open_study(study, method, task.higher_is_better)
        if best_params(opt_study) is not None:
            continue
        errors = [
            t.user_attrs["error"] for t in opt_study.get_trials(deepcopy=False) if "error" in t.user_attrs
        ]
        why = f"; the first trial's error: {errors[0]}" if errors else " (every trial was pruned or killed)"
        out.append(f"method {method}: no trial completed, so it has no final runs{why}")
    return out


def run_final(argv: list[str], method: str, which: str, seed: int, params: dict) -> str | None:
    """One final run: the method's best (or default) setting at this seed, evaluated on test. Returns
    why it did not complete (its results.json says so too), or None."""
    from peft_bench.train import run

    study = parse(argv)
    try:
        run(
            study_job(
                study,
                [*study.run_overrides(), *with_params(method, params), f"seed={seed}", validation(study)],
                study.dir / "final" / method / f"{which}-s{seed}",
            )
        )
    except (PeftBenchError, DivergedError) as e:  # its results.json says why; the report lists it
        log.error("final %s %s seed %d: %s", method, which, seed, e)
        return f"final {method} {which} seed {seed}: {e}"
    return None


def run_finals(study: Study, argv: list[str]) -> list[str]:
    """Each method's best setting (and its default) over the seeds, evaluated on test: ordinary runs in
    final/<method>/<best|default>-s<seed>, as jobs of the launcher when there is one (a re-run skips the
    completed ones). Returns why each final that did not complete did not."""
    waiting = unfinished(study)
    if waiting:
        raise PeftBenchError(
            f"the search is not finished: {'; '.join(waiting)}. The finals start only on a finished "
            "search; run the same command again once those trials are done (a dead one is replaced)"
        )
    finals = final_runs(study)
    launcher = launcher_config(study)
    if launcher is None:
        return [e for e in (run_final(argv, *final) for final in finals) if e]
    executor = submitit_executor(study, launcher)
    jobs = [executor.submit(run_final, argv, *final) for final in finals]
    wait_for(jobs, "final run")
    return [e for e in (job.result() for job in jobs) if e]


# ---------------------------------------------------------------------------------- report


def trial_rows(study, method: str) -> list[dict]:
    """Each trial of the method: number, state, params, value, and its run's compute time."""
    from peft_bench.results import read_results

    task = study.task
    rows = []
    for t in open_study(study, method, task.higher_is_better).get_trials(deepcopy=False):
        run_dir = study.dir / "trials" / method / str(t.number)
        try:
            r = read_results(run_dir)
        except (OSError, ValueError):
            r = {}
        rows.append(
            {
                "number": t.number,
                "state": "killed" if t.user_attrs.get(KILLED) else t.state.name.lower(),
                "params": t.params,
                "value": t.value,
                "compute_s": r.get("train_compute_s"),
                "steps": r.get("optimizer_steps"),
            }
        )
    return rows


def write_tuned_report(study: Study) -> Path:
    """The usual report of the final runs, with a "Tuned comparison" section and the best-so-far plot."""
    from peft_bench.report import write_report
    from peft_bench.tune_report import tuned_section

    out = study.dir / "report"
    summary = write_report([study.dir / "final"], out)
    task = study.task
    configs = method_configs(study)
    spaces = {m: space(c) for m, c in configs.items()}
    section = tuned_section(
        study,
        summary,
        {m: trial_rows(study, m) for m in study.methods},
        spaces,
        {m: best_params(open_study(study, m, task.higher_is_better)) for m in study.methods},
        {m: {k: getattr(configs[m], k) for k in spaces[m]} for m in study.methods},
    )
    report = out / "report.md"
    text = report.read_text()
    head, sep, rest = text.partition("\n## ")
    report.write_text(head + "\n" + section + "\n" + sep + rest)
    return report


def tune_one(study: Study, argv: list[str]) -> Path:
    """One dataset's study: search, finals, report. Returns the report; PeftBenchError naming every method
    without a best setting and every final that did not complete, after the report is written."""
    study.dir.mkdir(parents=True, exist_ok=True)
    log.info(
        "tuning %s: %d trials each, %d seeds; folder %s",
        ",".join(study.methods),
        study.cfg.trials,
        study.cfg.seeds,
        study.dir,
    )
    create_studies(study)
    start_workers(study, argv)
    failed = run_finals(study, argv)
    report = write_tuned_report(study)
    failed = [*without_a_best(study), *failed]
    if failed:
        raise PeftBenchError(
            f"{len(failed)} problem(s), the report ({report}) lists what did complete: " + " | ".join(failed)
        )
    return report


def tune_datasets(argv: list[str], datasets: list[str]) -> Path:
    """Every (method, dataset) pair with the same budget: each dataset's study in turn (every one checked
    first), then one report of them all. A dataset whose study fails does not stop the others; the
    command then fails naming each, after the combined report of what completed is written."""
    root, studies = parse_datasets(argv, datasets)
    root.mkdir(parents=True, exist_ok=True)
    failed = []
    for i, one in enumerate(studies, 1):
        log.info("dataset %d of %d: %s", i, len(studies), one.dataset)
        try:
            tune_one(one.study, one.argv)
        except PeftBenchError as e:
            log.error("dataset %s: %s", one.dataset, hide_password(str(e)))
            failed.append(f"dataset={one.dataset}: {e}")
    report = write_datasets_report(root, studies)
    if failed:
        raise PeftBenchError(
            f"{len(failed)} of {len(studies)} datasets with problems, the combined report ({report}) lists "
            "what did complete: " + " | ".join(failed)
        )
    return report


def write_datasets_report(root: Path, studies: list[DatasetStudy]) -> Path:
    """`<folder>/report/report.md`: the tuned benchmark table (each method's best finals on each dataset)
    and a link to each dataset's own tuned report."""
    from peft_bench.tune_report import datasets_report, finals

    finals_of, left_out = {}, []
    for one in studies:
        study = one.study
        finals_of[one.dataset] = {}
        if not (study.dir / STUDY_FILE).is_file():  # its study never started (the storage refused, ...)
            left_out.append(f"{one.dataset}: its study did not start")
            continue
        for m in study.methods:
            best = best_params(open_study(study, m, study.task.higher_is_better))
            if best is None:
                left_out.append(f"{one.dataset} {m}: no trial completed, so no final runs")
                continue
            runs, out = finals(study, m, "best", best)
            finals_of[one.dataset][m] = runs
            left_out += [f"{one.dataset} {line}" for line in out]
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    report = out / "report.md"
    report.write_text(datasets_report(root, studies, finals_of, left_out))
    return report


_interrupted = False


def interrupted() -> bool:
    """Whether a Ctrl-C (SIGINT) reached this process: remembered, because on its way up the
    KeyboardInterrupt may become something else (Lightning's sys.exit(1), a DataLoader's RuntimeError)."""
    return _interrupted


def on_sigint(signum, frame) -> None:
    global _interrupted
    _interrupted = True
    signal.default_int_handler(signum, frame)


def main(argv: list[str] | None = None) -> None:
    argv = password_out_of(list(sys.argv[1:] if argv is None else argv))
    signal.signal(signal.SIGINT, on_sigint)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    from peft_bench.__main__ import go_offline_if_the_hub_is_unreachable

    go_offline_if_the_hub_is_unreachable()
    worker = None
    if argv[:1] == ["--worker"]:
        worker, argv = int(argv[1]), argv[2:]
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    from peft_bench.train import quiet_third_party

    quiet_third_party()
    try:
        if worker is not None:
            work(argv, worker)
            return
        started = time.time()
        datasets = listed_datasets(argv)
        report = tune_datasets(argv, datasets) if datasets else tune_one(parse(argv), argv)
        print(f"peft_bench.tune: done in {time.time() - started:.0f} s; report: {report}")
    except PeftBenchError as e:
        print(f"peft_bench.tune: error: {hide_password(str(e))}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, SystemExit) as e:
        if not (interrupted() or isinstance(e, KeyboardInterrupt)):
            raise
        print(
            "peft_bench.tune: interrupted (Ctrl-C): the running trial or final run is marked interrupted and "
            "not counted, and no other starts; the same command resumes the study",
            file=sys.stderr,
        )
        sys.exit(130)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # run as the module under its own name, not __main__: submitit then pickles the workers and final
    # runs it sends to SLURM by reference (peft_bench.tune.Worker), not by value with this module's state
    from peft_bench.tune import main as tune_main

    tune_main()
