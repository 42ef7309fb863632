"""`python -m peft_bench.tune` / `peft-bench tune`: the command line, Ctrl-C, and one sentence for every
error. Everything heavy is imported after --help has been answered."""

from __future__ import annotations

import logging
import signal
import sys
import time
from dataclasses import fields

from omegaconf import OmegaConf

import peft_bench.tune
from peft_bench.config import TuneConfig
from peft_bench.env import LOG_FORMAT, setup_process
from peft_bench.errors import PeftBenchError
from peft_bench.tune.password import hide_password, password_out_of
from peft_bench.tune.signals import interrupted, on_sigint


def help_text() -> str:
    """--help: the package's docstring and the `tune` group's options with their schema defaults."""
    options = ", ".join(f"tune.{f.name}={f.default}" for f in fields(TuneConfig))
    group = "Options (the tune group, conf/tune/default.yaml; docs/tune.md)"
    return f"{peft_bench.tune.__doc__}\n{group}:\n  {options}\n"


def main(argv: list[str] | None = None) -> None:
    argv = password_out_of(list(sys.argv[1:] if argv is None else argv))
    signal.signal(signal.SIGINT, on_sigint)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        return
    show = "--cfg" in argv  # the study as the command would run it, nothing opened or trained
    argv = [a for a in argv if a != "--cfg"]
    setup_process()
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        show_study(argv) if show else run_command(argv)
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


def show_study(argv: list[str]) -> None:
    """--cfg: the tune options, folder, storage (password hidden) and each method's search space."""
    from peft_bench.tune.study import parse  # after --help, as in run_command

    study = parse(argv)
    shown = {
        "tune": OmegaConf.to_container(OmegaConf.structured(study.cfg)),
        "dir": str(study.dir),
        "storage": study.storage_shown,
        "run_overrides": study.run_overrides(),
        "search": study.spaces,
    }
    print(OmegaConf.to_yaml(shown), end="")


def run_command(argv: list[str]) -> None:
    """A worker (`--worker N ...`: a process the command started), or the whole command."""
    # imported here, after --help: these load torch, transformers and Lightning (seconds)
    from peft_bench.tune.finals import tune_datasets, tune_one
    from peft_bench.tune.study import listed_datasets, parse
    from peft_bench.tune.workers import work_argv

    if argv[:1] == ["--worker"]:
        work_argv(argv[2:], int(argv[1]))
        return
    started = time.time()
    datasets = listed_datasets(argv)
    report = tune_datasets(argv, datasets) if datasets else tune_one(parse(argv), argv)
    print(f"peft_bench.tune: done in {time.time() - started:.0f} s; report: {report}")
