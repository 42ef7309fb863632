"""The jobs of a sweep: their check before any starts (one home for the sweep summary's pre-check and
for `prepare`). The sweep's ledger of failed jobs is peft_bench.ledger."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from peft_bench.checks import check_config
from peft_bench.config import RunConfig
from peft_bench.errors import ConfigError
from peft_bench.resolvers import CONF_DIR, run_identity
from peft_bench.results import flatten


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The overrides of every job a sweep of these overrides launches (Hydra's basic sweeper's
    Cartesian product, which the submitit launchers use too)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def is_group(key: str) -> bool:
    """Whether `key=` chooses a config of a group (Hydra's test: a folder of the search path)."""
    if GlobalHydra.instance().is_initialized():  # inside Hydra (the sweep callback): its search path
        return GlobalHydra.instance().hydra.config_loader.repository.group_exists(key)
    return (CONF_DIR / key).is_dir() or isinstance(ConfigStore.instance().repo.get(key), dict)


class JobComposer:
    """compose(job) for many jobs of one sweep, each config the one Hydra's compose builds, at a fraction
    of the cost: Hydra composes once per distinct set of a job's group choices (method=, dataset=, ...),
    and a job's plain `key=value` overrides are then applied to a copy exactly as Hydra applies them after
    composing (OmegaConf.update with merge=True, in order, on the struct config: the schema's type checks
    and `${...}` interpolations alike). A job with any other override (`+key=`, `~key`, `key@pkg=`,
    `hydra.*`, `run_dir=`, which compose sets itself), or one whose plain override does not apply, is
    composed by Hydra whole (its error is Hydra's own). (compose_job's HydraConfig is the group set's.)"""

    def __init__(self, compose: Callable[[list[str]], DictConfig]):
        self.compose, self.parser = compose, OverridesParser.create()
        self.bases: dict[tuple[str, ...], DictConfig] = {}
        self.parsed: dict = {}
        self.full = 0  # jobs Hydra composed whole (groups aside): what the benchmark reports

    def __call__(self, job: list[str]) -> DictConfig:
        plain, groups = self.split(job)
        if plain is None:
            self.full += 1
            return self.compose(job)
        if groups not in self.bases:
            self.bases[groups] = self.compose(list(groups))
        cfg = copy.deepcopy(self.bases[groups])
        try:
            for o in plain:
                OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
        except Exception:  # noqa: BLE001  (a key the config lacks, a wrong type: Hydra says it)
            self.full += 1
            return self.compose(job)
        return cfg

    def split(self, job: list[str]) -> tuple[list | None, tuple[str, ...]]:
        """(the plain overrides, or None when Hydra must compose the job whole; the group choices)."""
        plain, groups = [], []
        for line in job:
            if line not in self.parsed:
                self.parsed[line] = self.kind(self.parser.parse_override(line))
            o, kind = self.parsed[line]
            if kind == "other":
                return None, ()
            if kind == "group":
                groups.append(line)
            else:
                plain.append(o)
        return plain, tuple(groups)

    @staticmethod
    def kind(o) -> tuple:
        key = o.key_or_group
        if (
            o.is_hydra_override()
            or o.package is not None
            or o.is_add()
            or o.is_force_add()
            or o.is_delete()
            or o.is_sweep_override()
            or key == "run_dir"
        ):
            return o, "other"
        # as Hydra's defaults list decides: a dict value is merged into the config, even on a group
        if not isinstance(o.value(), dict) and ("/" in key or ("." not in key and is_group(key))):
            return o, "group"
        return o, "plain"


def check_jobs(
    overrides: list[str],
    compose: Callable[[list[str]], DictConfig],
    before_check: Callable[[DictConfig], None] | None = None,
) -> list[tuple[list[str], RunConfig]]:
    """(job overrides, checked config) for every job of the sweep; one ConfigError with every problem
    of every job, and with every job that repeats another (`rank=4,4`: the same run twice would count as
    two seeds). `before_check` runs on each composed config first (prepare builds local models there).
    `compose(job)`: Hydra's config for the job's overrides (composed once per group choice: JobComposer)."""
    jobs, problems, seen, bad = [], [], {}, {}
    compose = compose if isinstance(compose, JobComposer) else JobComposer(compose)
    every = sweep_jobs(overrides)
    for num, job in enumerate(every):
        cfg = compose(job)
        try:
            if before_check is not None:
                before_check(cfg)
            run = check_config(cfg)
        except ConfigError as e:
            for p in e.problems:
                bad.setdefault(p, []).append(job)
            continue
        # the keys that define a run (resolvers.KEY_ROLES): the top-level rank and sparsity act only
        # through the method's own keys (method.r, method.pruning.target)
        key = json.dumps(
            run_identity(flatten(OmegaConf.to_container(cfg, resolve=True))), sort_keys=True, default=str
        )
        if key in seen:
            problems.append(
                f"jobs {seen[key][0]} ({' '.join(seen[key][1])}) and {num} ({' '.join(job)}) are the same "
                "run (a repeated value, or one the method does not use: rank for ia3, bitfit and full, "
                "sparsity for methods without pruning): it would be counted twice. Remove the repeat, or "
                "sweep that value in a command of its own with the methods that use it"
            )
        else:
            seen[key] = (num, job)
            jobs.append((job, run))
    problems = [f"{which_jobs(with_p, every)}: {p}" for p, with_p in bad.items()] + problems
    if problems:
        raise ConfigError(problems)
    return jobs


def which_jobs(some: list[list[str]], every: list[list[str]]) -> str:
    """The jobs a problem was found in, said once: `every job (200)`, `the 20 jobs with seed=-1`, or each
    job's overrides (`job rank=4 seed=-1`; `jobs rank=1 seed=-1, rank=3 seed=0`)."""
    if len(some) == 1:
        return f"job {' '.join(some[0])}"
    if len(some) == len(every):
        return f"every job ({len(every)})"
    shared = [o for o in some[0] if all(o in job for job in some) and not all(o in job for job in every)]
    if shared and sum(all(o in job for o in shared) for job in every) == len(some):
        return f"the {len(some)} jobs with {' '.join(shared)}"
    return "jobs " + ", ".join(" ".join(job) for job in some)
