"""Files a crash can leave half-written are written to a temporary name and renamed; a run folder two
processes could share is locked; a corrupt file is set aside (renamed, never deleted) with a reason."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import pickle
import platform
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import torch
from filelock import FileLock, Timeout
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from peft_bench.errors import PeftBenchError, RunInProgress, UnsafeCheckpoint

log = logging.getLogger("peft_bench")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give: 0644 under the usual umask 022
LOCK_FILE = ".lock"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """The one atomic write: yields a temporary path in `path`'s folder for the caller to write (by any
    means: bytes, text, torch.save); when the block ends, the file is flushed to disk, given the mode
    open() would give and renamed over `path`, so a reader (or a crash) sees the old file or the new one,
    never half of one. If the block or any step raises, the temporary file is removed and `path` is
    untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDWR)  # fsync flushes the file's data whichever descriptor wrote it
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600; the other files of a run are 0666 & ~umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes | str) -> Path:
    """Write `data` (str: UTF-8) to `path` atomically (`atomic_path`); returns `path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


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


def load_checkpoint(path: Path, mmap: bool = False) -> Any:
    """torch.load with weights_only=True, always: tensors, containers and plain values load, anything
    else (a pickled object whose loading would call a function) is refused unread with UnsafeCheckpoint
    naming the file and the object. Every checkpoint peft_bench writes loads this way."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        raise ValueError(f"{path} is truncated or damaged ({e.strerror})") from None  # a cut zip archive
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise  # a truncated or foreign file: the caller's to handle as corrupt
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"the Python object {found.group(1)}" if found else "a Python object that is not plain data"
        raise UnsafeCheckpoint(
            f"{path} was refused unread: it holds {what}, and loading it could run code (peft_bench's own "
            "checkpoints hold only tensors and plain values). Remove the file if it is not yours, or run "
            "with resume=false to start this run over in its folder"
        ) from None


# OSErrors that say the filesystem refused (not a bug, not a damaged file): what a user fixes
FILESYSTEM_REFUSALS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the filesystem is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def check_writable(folder: Path, elsewhere: str = "hydra.run.dir=") -> None:
    """Before a run or sweep starts: its folder can be made and written (a few bytes, flushed), else
    one sentence (a read-only mount, a full disk, no permission) instead of a traceback from Hydra's
    log setup."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / ".peft_bench_write_check", b"peft_bench" * 100).unlink()
    except OSError as e:
        refusal = filesystem_refusal(e, folder, started=False, elsewhere=elsewhere)
        if refusal is None:
            raise
        raise refusal from None


def filesystem_refusal(
    e: BaseException, folder: Path, started: bool = True, elsewhere: str = "hydra.run.dir="
) -> PeftBenchError | None:
    """One sentence for an error whose cause (anywhere in its chain: a full disk raises again while
    Lightning cleans up) is the filesystem refusing a write or a read: which file, why, what the folder
    kept and what to do. None for any other error."""
    seen, cause = set(), None
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in FILESYSTEM_REFUSALS:
            cause = e  # the earliest in the chain is the cause
        e = e.__cause__ or e.__context__
    if cause is None:
        return None
    folder = Path(folder)
    shown = cause.filename and not Path(str(cause.filename)).name.endswith(".tmp")  # not our temporary names
    where = f" ({cause.filename})" if shown else ""
    fix = "free some space" if cause.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
    if not started:
        return PeftBenchError(
            f"{folder}: {FILESYSTEM_REFUSALS[cause.errno]}{where}: nothing was started. {fix.capitalize()}, "
            f"or give another folder ({elsewhere})"
        )
    kept = [name for name in ("results.json", "checkpoints/last.ckpt") if (folder / name).is_file()]
    if kept and kept[0] == "results.json":
        try:
            kept[0] += f" (status {json.loads((folder / 'results.json').read_text()).get('status')})"
        except (OSError, ValueError, AttributeError):
            pass
    return PeftBenchError(
        f"{folder}: {FILESYSTEM_REFUSALS[cause.errno]}{where}; the run stopped. Kept: "
        f"{', '.join(kept) or 'nothing'}. {fix.capitalize()} (or give another folder with "
        f"{elsewhere}) and run the same command again: it resumes from checkpoints/last.ckpt if there is one"
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, but a checkpoint is written atomically (`atomic_path`): a kill or
    a full disk during a save leaves the previous checkpoint intact; and read with weights_only=True
    whatever Lightning asks (`load_checkpoint`), so a resume or the evaluation of the best checkpoint
    never unpickles code."""

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return load_checkpoint(Path(path))

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_path(Path(path)) as tmp, tmp.open("wb") as f:
            torch.save(checkpoint, f)


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
    return {"host": platform.node(), "pid": os.getpid(), "process_started_at": psutil.Process().create_time()}


def process_alive(record: dict) -> bool | None:
    """Whether the process a `running` record names is still alive: None when it ran on another host
    (this host cannot tell)."""
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


def file_digest(path) -> str:
    """The SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
