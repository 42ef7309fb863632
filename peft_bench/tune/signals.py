"""Ctrl-C during tuning: remembered, so that the command stops whatever the interrupt became on its way up."""

from __future__ import annotations

import signal

_interrupted = False


def interrupted() -> bool:
    """Whether a Ctrl-C (SIGINT) reached this process: remembered, because on its way up the
    KeyboardInterrupt may become something else (Lightning's sys.exit(1), a DataLoader's RuntimeError)."""
    return _interrupted


def on_sigint(signum, frame) -> None:
    global _interrupted
    _interrupted = True
    signal.default_int_handler(signum, frame)
