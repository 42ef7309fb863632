"""`python -m peft_bench ...` and the `peft-bench` console script: one run, or a sweep with -m;
`peft-bench report DIR...`, `peft-bench prepare OVERRIDES...` and `peft-bench tune OVERRIDES...` run
those tools."""

import importlib
import sys

from peft_bench.env import setup_process

SUBCOMMANDS = ("report", "prepare", "tune")
NO_JOB = ("-h", "--help", "--hydra-help", "--cfg", "-c", "--info")  # Hydra answers these, nothing loads


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        command = sys.argv.pop(1)
        # each sets itself up (tune after answering --help, before its imports read HF_HUB_OFFLINE)
        sys.argv[0] = f"peft-bench {command}"
        importlib.import_module(f"peft_bench.{command}").main()
        return
    setup_process(check_hub=not any(a in NO_JOB for a in sys.argv[1:]))
    # here: after the set-up (its imports read HF_HUB_OFFLINE), and never for the other commands
    from peft_bench.train import main as train

    train()


if __name__ == "__main__":
    main()
