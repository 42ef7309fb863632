"""`python -m peft_bench ...` and the `peft-bench` console script: one run, or a sweep with -m;
`peft-bench report DIR...`, `peft-bench prepare OVERRIDES...` and `peft-bench tune OVERRIDES...` run
those tools."""

import importlib
import os
import socket
import sys
from urllib.parse import urlparse

SUBCOMMANDS = ("report", "prepare", "tune")
PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def go_offline_if_the_hub_is_unreachable() -> None:
    """Look once whether the Hugging Face Hub can be reached; if not, run offline (HF_HUB_OFFLINE=1,
    HF_DATASETS_OFFLINE=1) before the libraries read those settings, so what is cached or local loads at
    once and what is not fails with peft_bench's own message, instead of every load of every job
    retrying the Hub for ~25 s. An explicit HF_HUB_OFFLINE (0 or 1), or a proxy, is left alone."""
    if "HF_HUB_OFFLINE" in os.environ or any(p in os.environ for p in PROXIES):
        return
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3
        ).close()
    except OSError:
        os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        print(
            f"peft_bench: the Hugging Face Hub ({url.hostname}) cannot be reached: running offline "
            "(what is cached "
            "or local loads; HF_HUB_OFFLINE=0 forces network access)",
            file=sys.stderr,
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        command = sys.argv.pop(1)
        if command == "tune":
            go_offline_if_the_hub_is_unreachable()
        sys.argv[0] = f"peft-bench {command}"
        importlib.import_module(f"peft_bench.{command}").main()
        return
    if not any(a in ("-h", "--help", "--hydra-help", "--cfg", "-c", "--info") for a in sys.argv[1:]):
        go_offline_if_the_hub_is_unreachable()
    from peft_bench.train import main as train

    train()


if __name__ == "__main__":
    main()
