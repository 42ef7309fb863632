"""The errors peft_bench raises for the user to act on, and the hint that names the prepare command.
Nothing here imports the rest of the package, so every module can import it."""

from __future__ import annotations

import shlex


class PeftBenchError(Exception):
    """An error the user can fix from the command line; printed as one message, no traceback."""


class ConfigError(PeftBenchError):
    """Every problem of a composed config, collected and raised at once."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"invalid configuration ({len(problems)} problem{'s' * (len(problems) > 1)}):\n{lines}"
        )


class DataError(PeftBenchError):
    """A data file or split that cannot be used as given (names the file and row)."""


class RunInProgress(PeftBenchError):
    """Another process holds the run folder's lock."""


class UnsafeCheckpoint(PeftBenchError):
    """A checkpoint that holds pickled Python objects besides tensors and plain values: reading it could
    run code, so it is refused unread."""


class DivergedError(Exception):
    """The training loss became NaN or infinite."""


class TrialStopped(Exception):
    """A callback stopped the run on purpose (a tuning trial the pruner stopped): status `pruned`."""


def prepare_command() -> str:
    """The command that fetches and caches what this run (or sweep) needs: its own overrides."""
    from hydra.core.hydra_config import HydraConfig

    try:
        overrides = [
            o
            for o in HydraConfig.get().overrides.task
            if not o.startswith(("hydra.", "hydra/", "run_dir=", "cache_dir="))
        ]
    except ValueError:  # outside a Hydra run
        overrides = ["<the same overrides as the run>"]
    return " ".join(["python -m peft_bench.prepare", *map(shlex.quote, overrides)])
