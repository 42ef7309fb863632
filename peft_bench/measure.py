"""Peak memory of one job: CUDA max allocated on a GPU, process peak RSS on the CPU. A Hydra sweep
runs its jobs in one process, so the peak is reset at the start of each job."""

from __future__ import annotations

import resource
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:  # Linux: writing 5 resets the peak resident set size (VmHWM) to the current RSS
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass


def peak_memory() -> dict:
    """{"peak_memory_bytes", "peak_memory_kind"}: CUDA max allocated if a GPU is in use, else peak RSS."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return {
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated()),
            "peak_memory_kind": "cuda_max_allocated",
        }
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return {
                    "peak_memory_bytes": int(line.split()[1]) * 1024,
                    "peak_memory_kind": "process_peak_rss",
                }
    except OSError:
        pass
    # Elsewhere: the process-lifetime peak (not reset between the jobs of a sweep).
    return {
        "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_memory_kind": "process_lifetime_peak_rss",
    }
