"""Files a crash can leave half-written are written to a temporary name and renamed; a run folder two
processes could share is locked; a corrupt file is set aside (renamed, never deleted) with a reason."""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from peft_bench.errors import RunInProgress

log = logging.getLogger("peft_bench")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give: 0644 under the usual umask 022
LOCK_FILE = ".lock"


def atomic_write(path: Path, data: bytes | str) -> Path:
    """Write `data` to `path` so that a reader (or a crash) sees the old file or the new one, never
    half of one: a temporary file in the same folder, flushed to disk, then renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600; the other files of a run are 0666 & ~umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def set_aside(path: Path, why: str) -> Path:
    """Rename a corrupt file or folder to `<name>.corrupt-<UTC time>` beside it (nothing is deleted)
    and log why; returns the new path."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.corrupt-{stamp}-{n}"), n + 1
    try:
        os.replace(path, target)
    except FileNotFoundError:  # another process set it aside first
        return target
    log.warning("%s: %s; set aside as %s", path, why, target.name)
    return target


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, but a checkpoint is written to a temporary file, flushed to
    disk and renamed: a kill or a full disk during a save leaves the previous checkpoint intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class RunLock:
    """An exclusive lock on a run folder (flock on `<run_dir>/.lock`, through `filelock`), held for
    the whole run. The kernel drops it when its process dies, however it dies, so a requeued or
    re-run job is never blocked by its own dead predecessor; a live holder makes `acquire` raise
    RunInProgress at once, naming it."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.lock = FileLock(self.run_dir / LOCK_FILE, timeout=0)

    def acquire(self, holder: dict | None = None) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except Timeout:
            who = ""
            if holder and holder.get("status") == "running":
                who = (
                    f" (pid {holder.get('pid')} on host {holder.get('host')}, "
                    f"started {holder.get('started_at')})"
                )
            raise RunInProgress(
                f"{self.run_dir} is in use by another peft_bench process{who}: the same command is already "
                "running there. Wait for it to finish (then this command skips or resumes it), or give this "
                "one another folder with hydra.run.dir= (a sweep: hydra.sweep.dir=)"
            ) from None
        return self

    def release(self) -> None:
        if self.lock.is_locked:
            self.lock.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def process_identity() -> dict:
    """Who is running: host, pid and the process's start time (a pid can be reused, the pair cannot)."""
    import psutil

    return {"host": platform.node(), "pid": os.getpid(), "process_started_at": psutil.Process().create_time()}


def process_alive(record: dict) -> bool | None:
    """Whether the process a `running` record names is still alive: None when it ran on another host
    (this host cannot tell)."""
    import psutil

    if record.get("host") != platform.node() or not isinstance(record.get("pid"), int):
        return None
    try:
        proc = psutil.Process(record["pid"])
        started = record.get("process_started_at")
        return started is None or abs(proc.create_time() - float(started)) < 1.0
    except psutil.AccessDenied:  # it exists, under another user
        return True
    except (psutil.NoSuchProcess, ValueError, TypeError):
        return False
