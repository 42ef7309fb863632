"""One tuning command as a Study: its run overrides, methods, options (the `tune` config group), folder
and storage, parsed by Hydra's override parser, every method and every search value checked at once."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from peft_bench.checks import check_config, compose_job
from peft_bench.config import CONF_DIR, TuneConfig
from peft_bench.errors import ConfigError
from peft_bench.resolvers import overrides_key
from peft_bench.sweep import JobComposer
from peft_bench.tasks import task_for
from peft_bench.tune.password import MASK, STORAGE_PASSWORD, hide_password
from peft_bench.tune.search import search_problems, space, space_and_problems
from peft_bench.tune.store import open_study, storage


@dataclass
class Study:
    """One tuning command: its run overrides, methods, options, folder and storage."""

    overrides: list[str]  # run overrides, methods aside (hydra/launcher and hydra.* included)
    methods: list[str]
    cfg: TuneConfig
    dir: Path
    key: str  # the command as a name: the studies' names in a shared storage
    composed: dict = field(default_factory=dict, repr=False)  # method -> its checked config (parse)

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
        return task_for(compose_job([*self.run_overrides(), f"method={self.methods[0]}"]).dataset)

    @functools.cached_property
    def method_configs(self) -> dict:
        """Each method's config as the command composes it (its untuned default): once per process."""
        for m in self.methods:
            if m not in self.composed:
                self.composed[m] = OmegaConf.to_object(
                    compose_job([*self.run_overrides(), f"method={m}"])
                ).method
        return {m: self.composed[m] for m in self.methods}

    @functools.cached_property
    def spaces(self) -> dict[str, dict[str, dict]]:
        return {m: space(c) for m, c in self.method_configs.items()}

    @functools.cached_property
    def store(self):
        """The Optuna storage, connected once per process."""
        return storage(self)

    @functools.cached_property
    def studies(self) -> dict:
        """Each method's Optuna study, opened once per process."""
        return {m: open_study(self, m, self.task.higher_is_better, self.store) for m in self.methods}

    def run_overrides(self) -> list[str]:
        return [o for o in self.overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]

    def launcher_overrides(self) -> list[str]:
        return [o for o in self.overrides if o.lstrip("+~").startswith(("hydra.", "hydra/"))]


@dataclass
class Command:
    """A tune command line as Hydra's override parser reads it (each override as typed, for the names)."""

    tune_args: list[str]  # tune.* options
    methods: list[str]
    datasets: list[str]  # dataset= values when it lists several (one study each)
    listed: str  # that dataset= as typed
    overrides: list[str]  # the run's overrides, dataset= among them when it names one
    problems: list[str]


def is_tune_option(line: str) -> bool:
    key = line.split("=", 1)[0].lstrip("+~")
    return key == "tune" or key.startswith("tune.")


def read_command(argv: list[str]) -> Command:
    """Split a command line: the tune options (tune=<file>, tune.<key>=; read by tune_options, never
    composed by Hydra), and the run's overrides as Hydra's override parser reads them, where method= and
    dataset= may list several values (Hydra's sweep syntax) and any other override one."""
    lines = [a for a in argv if a not in ("-m", "--multirun")]
    out = Command([a for a in lines if is_tune_option(a)], ["lora"], [], "", [], [])
    try:
        parsed = OverridesParser.create().parse_overrides([a for a in lines if not is_tune_option(a)])
    except HydraException as e:
        raise ConfigError(
            [f"{str(e).splitlines()[0]} (quote a value holding '=' or ',': key='...')"]
        ) from None
    several = []
    for o in parsed:
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else None
        if o.key_or_group == "method":
            out.methods = values or [o.get_value_element_as_str()]
        elif o.key_or_group == "dataset" and values:
            out.datasets, out.listed = values, o.input_line
        else:
            out.overrides.append(o.input_line)
            if values:
                several.append(o.input_line)
    if several:
        out.problems.append(
            f"{several}: give one value each; only method= and dataset= may list several (the study "
            "compares the methods, on each dataset)"
        )
    if len(set(out.methods)) != len(out.methods):
        out.problems.append(f"method={','.join(out.methods)}: a method is listed twice")
    return out


def option_value(line: str):
    """A tune.<key>= value as Hydra's parser types it (4 -> int, null -> None, '...' unquoted); a value
    Hydra cannot parse as one value (a URL holding '=', a path holding ',') is the text as typed."""
    raw = line.split("=", 1)[1] if "=" in line else ""
    try:
        o = OverridesParser.create().parse_override(line)
    except HydraException:
        return raw
    return raw if o.is_sweep_override() else o.value()


@dataclass
class TuneOptions:
    """The tune options of a command: typed, the tune group file's own values, and every problem."""

    cfg: TuneConfig
    from_file: dict  # the values the chosen conf/tune/ file sets (part of the study's name)
    problems: list[str]


def tune_options(tune_args: list[str]) -> TuneOptions:
    """The tune.* options: the schema's defaults, the tune group's file (conf/tune/<tune=name>.yaml,
    default.yaml unless tune= names another), then each tune.<key>= typed by the schema one by one, so
    every bad one is named."""
    names = [f.name for f in fields(TuneConfig)]
    problems = [
        f"{a}: a tune option takes no + or ~ (give {a.lstrip('+~')})"
        for a in tune_args
        if a.startswith(("+", "~"))
    ]
    chosen = [str(option_value(a)) for a in tune_args if a.split("=", 1)[0] == "tune"]
    path = CONF_DIR / "tune" / f"{chosen[-1] if chosen else 'default'}.yaml"
    if not path.is_file():
        there = sorted(p.stem for p in path.parent.glob("*.yaml"))
        problems.append(f"tune={chosen[-1]}: no such file {path} (there are: {', '.join(there)})")
        return TuneOptions(TuneConfig(), {}, problems)
    cfg, from_file = OmegaConf.structured(TuneConfig), {}
    try:
        from_file = OmegaConf.to_container(OmegaConf.load(path)) or {}
        cfg = OmegaConf.merge(cfg, from_file)
    except (OmegaConfBaseException, yaml.YAMLError, ValueError) as e:
        problems.append(f"{path}: {str(e).splitlines()[0]}")
    for arg in tune_args:
        key = arg.lstrip("+~").removeprefix("tune.").split("=")[0]
        if arg.startswith(("+", "~")) or arg.split("=", 1)[0] == "tune":
            continue
        if key not in names:
            problems.append(
                f"tune.{key}: no such tune option (they are {', '.join(f'tune.{n}' for n in names)})"
            )
            continue
        try:
            cfg = OmegaConf.merge(cfg, {key: option_value(arg)})
        except OmegaConfBaseException as e:  # OmegaConf's validation error names the type
            problems.append(f"{arg}: {str(e).splitlines()[0]}")
    options = OmegaConf.to_object(cfg)  # the well-typed ones: their values checked too
    return TuneOptions(options, from_file, [*problems, *options.problems()])


def key_options(command: Command, options: TuneOptions) -> list[str]:
    """The tune options as the study's name counts them: those typed (tune.<key>=), and the chosen
    file's values that the command line does not set (so an edited file is another study, and
    `tune=default` the same study as no tune= at all)."""
    typed = [a for a in command.tune_args if a.split("=", 1)[0] != "tune"]
    given = {a.removeprefix("tune.").split("=")[0] for a in typed}
    return [*typed, *(f"tune.{k}={json.dumps(v)}" for k, v in options.from_file.items() if k not in given)]


def method_problems(study: Study) -> list[str]:
    """Every method's config composed and checked as its runs' will be, and every value its search may
    give a trial, before anything is fetched or trained: the problems of every method at once."""
    compose_one = JobComposer(compose_job)  # the sweep pre-check's: composed once per group set
    problems = []
    for method in study.methods:
        said = f"method={method}: " if len(study.methods) > 1 else ""
        try:
            run = check_config(compose_one([*study.run_overrides(), f"method={method}"]))
            study.composed[method] = run.method
            spec, found = space_and_problems(run.method)
            found += search_problems(study.run_overrides(), method, spec, compose_one)
        except (HydraException, OmegaConfBaseException) as e:  # an unknown method, a mistyped key
            found = [f"method={method}: {str(e).splitlines()[0]}"]
            said = ""
        except ConfigError as e:  # the method's run config, or its search space's shape
            found = e.problems
        problems += [said + p for p in found]
    return problems


def parse(argv: list[str]) -> Study:
    """The command line as a Study: tune.* options typed, methods split out, every job checked."""
    command = read_command(argv)
    options = tune_options(command.tune_args)
    cfg, problems = options.cfg, [*options.problems, *command.problems]
    if command.datasets:  # main() gives each dataset of a several-dataset command its own study
        problems.append(f"{command.listed}: one study is of one dataset (tune_datasets runs several)")
    if problems:
        raise ConfigError(problems)
    key = command_key(command.overrides, command.methods, key_options(command, options))
    folder = Path(cfg.dir) if cfg.dir else Path("tune") / key
    study = Study(command.overrides, command.methods, cfg, folder.absolute(), key)
    problems = method_problems(study)
    if problems:
        raise ConfigError(problems)
    return study


def command_key(overrides: list[str], methods: list[str], tune_args: list[str]) -> str:
    """The command as a name (its default folder, its studies' names): run overrides, methods and the tune
    options that shape the study (not where it is kept, nor how many workers run it)."""
    what = [
        *overrides,
        f"method={','.join(methods)}",
        *[a for a in tune_args if a.split("=")[0] not in ("tune.workers", "tune.dir", "tune.storage")],
    ]
    return overrides_key([o for o in what if not o.startswith(("hydra.", "hydra/"))])


def listed_datasets(argv: list[str]) -> list[str] | None:
    """The datasets a command lists (`dataset=cola,mrpc`, Hydra's sweep syntax), or None for one."""
    datasets = read_command(argv).datasets
    return datasets if len(datasets) > 1 else None


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
    command = read_command(rest)
    options = tune_options(command.tune_args)
    overrides = [*command.overrides, command.listed]
    key = command_key(overrides, command.methods, key_options(command, options))
    root = (Path(options.cfg.dir) if options.cfg.dir else Path("tune") / key).absolute()
    studies, found = [], {}
    for name in datasets:
        sub = [a for a in rest if a.split("=", 1)[0] not in ("dataset", "tune.dir")]
        quoted = str(root / name).replace("'", "\\'")  # a folder named from overrides holds '=' and ','
        sub += [f"dataset={name}", f"tune.dir='{quoted}'"]
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
