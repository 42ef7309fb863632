"""`python -m peft_bench ...` and the `peft-bench` console script: one run, or a sweep with -m;
`peft-bench report DIR...` and `peft-bench prepare OVERRIDES...` run those tools."""

import importlib
import sys

SUBCOMMANDS = ("report", "prepare")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        command = sys.argv.pop(1)
        sys.argv[0] = f"peft-bench {command}"
        importlib.import_module(f"peft_bench.{command}").main()
        return
    from peft_bench.train import main as train

    train()


if __name__ == "__main__":
    main()
