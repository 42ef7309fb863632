"""The process's set-up, once, by every entry point (the run, prepare, tune): tokenizers' threads, the
offline decision, the third-party chatter silenced. Importing it does nothing: it reads no setting and
loads no library before `setup_process` has decided HF_HUB_OFFLINE."""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
import warnings
from urllib.parse import urlparse

PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
# Hydra's format for a run's lines: a command Hydra does not configure (tune) logs in it too
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"

# Library warnings that say nothing about the run (a deprecation inside a library, advertising, a hint)
NOT_ABOUT_THE_RUN = (
    ".*is_gradient_checkpointing.*",
    ".*null_placement.*",
    ".*LeafSpec.*",
    ".*does not have many workers.*",
    ".*overridden `on_before_batch_transfer`.*",
    ".*Experiment logs directory.*exists and is not empty.*",
    ".*The `srun` command is available.*",
    ".*when logging on epoch level in distributed setting.*",  # torchmetrics syncs val/test metrics
    # Optuna, at each ask of a study with a heartbeat: tune's workers ask and tell themselves and beat
    # in their own thread while a trial runs (tune/store.heartbeat)
    ".*Heartbeat of storage is supposed to be used with Study.optimize.*",
    ".*Argument ``heartbeat_interval`` is an experimental feature.*",
)
LIGHTNING_CHATTER = ("litlogger", "returned in `LightningModule.configure_callbacks` will override")
# bitsandbytes' CPU backend, at import, on a CPU with AVX512-BF16 and without the optional `kernels`
# package: its 4-bit CPU kernel falls back to bitsandbytes' own. Only this line is dropped.
BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_NO_KERNELS = "Failed to load CPU gemm_4bit_forward from kernels-community"


def setup_process(*, check_hub: bool = True) -> None:
    """Set this process up for peft_bench, before the libraries load: tokenizers without threads of
    their own (DataLoader workers fork), `check_hub`: offline if the Hub cannot be reached, and the
    libraries' chatter silenced. Each part is done once per process however often this is called."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if check_hub:
        go_offline_if_the_hub_is_unreachable()
    quiet_third_party()


@functools.cache
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
            "(what is cached or local loads; HF_HUB_OFFLINE=0 forces network access)",
            file=sys.stderr,
        )


@functools.cache
def quiet_third_party() -> None:
    """A job's output is its own lines: silence library chatter that says nothing about this run
    (transformers' load reports and progress bars, Lightning's device and checkpoint-restore notices,
    its srun hint, deprecations inside the libraries, advertising, bitsandbytes' optional CPU kernel).
    Warnings and errors still show."""
    # here, not at the top: importing transformers reads HF_HUB_OFFLINE, which the Hub check sets first;
    # Lightning's import sets its loggers to INFO, so the levels below come after it
    import datasets
    import lightning
    import transformers

    for message in NOT_ABOUT_THE_RUN:
        warnings.filterwarnings("ignore", message=message)
    logging.getLogger(BNB_CPU_LOGGER).addFilter(lambda r: not str(r.msg).startswith(BNB_NO_KERNELS))
    for package in (lightning.pytorch, lightning.fabric):  # "GPU available: ...", "Restoring states ...", ...
        logging.getLogger(package.__name__).setLevel(logging.WARNING)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(lambda r: not any(c in r.getMessage() for c in LIGHTNING_CHATTER))
    transformers.utils.logging.set_verbosity_error()  # the LOAD REPORT of a head initialised for the task
    transformers.utils.logging.disable_progress_bar()
    if not sys.stderr.isatty():
        datasets.disable_progress_bars()
