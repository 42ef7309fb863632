"""results.json: the whole outcome of a run, written atomically so a reader never sees half a file;
and reading them back (every job of a folder, unreadable ones included, with what state each is in)."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from peft_bench.io import atomic_write, process_alive

RESULTS_FILE = "results.json"
LIBRARIES = ["torch", "lightning", "transformers", "peft", "datasets", "torchmetrics", "hydra-core",
             "bitsandbytes", "wandb", "peft_bench"]


def write_results(run_dir: Path, results: dict) -> Path:
    return atomic_write(Path(run_dir) / RESULTS_FILE, json.dumps(results, indent=2, default=str))


def read_results(run_dir: Path) -> dict:
    """The parsed results.json of a run folder; ValueError if it is not a JSON object."""
    data = json.loads((Path(run_dir) / RESULTS_FILE).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON object but {type(data).__name__}")
    return data


def job_order(root: Path, path: Path) -> list[tuple]:
    """Sort key of a folder below root: job numbers numerically (2 before 10), other names after them."""
    return [(0, int(x), "") if x.isdigit() else (1, 0, x) for x in Path(path).relative_to(root).parts]


def collect(root: Path) -> list[tuple[Path, dict | None]]:
    """Every results.json under root, parsed (None where unreadable), in job order."""
    root = Path(root)
    out = []
    for path in sorted(root.rglob(RESULTS_FILE), key=lambda p: job_order(root, p)):
        try:
            out.append((path.parent, read_results(path.parent)))
        except (OSError, ValueError):
            out.append((path.parent, None))
    return out


def flatten(d: dict, prefix: str = "", lists_as_json: bool = False) -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists kept, or as JSON text (one CSV cell) with lists_as_json."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + ".", lists_as_json))
        else:
            out[key] = json.dumps(v) if lists_as_json and isinstance(v, list) else v
    return out


def unfinished_reason(r: dict | None) -> str | None:
    """Why a run is not a completed one (None if it is): unreadable, failed, diverged, interrupted,
    still running, or marked running by a process that is gone (killed: SIGKILL, OOM killer, node lost)."""
    if r is None:
        return f"unreadable {RESULTS_FILE} (not valid JSON)"
    status = r.get("status")
    if status == "completed":
        return None
    if status == "running" and "pid" not in r:  # no process recorded (written by an older peft_bench)
        return "running"
    if status == "running":
        where = f"pid {r.get('pid')} on host {r.get('host')}, started {r.get('started_at')}"
        alive = process_alive(r)
        if alive is False:
            return (f"stale: results.json says running but its process ({where}) is gone (killed?); "
                    "the same command resumes it")
        if alive is None:
            return f"running or killed on another host ({where}): this host cannot tell"
        return f"running ({where})"
    if status is None:
        return f"unreadable {RESULTS_FILE} (no status)"
    return f"{status}" + (f": {r['error']}" if r.get("error") else "")


def environment() -> dict:
    """Git commit of the code that ran (None outside a git checkout), library versions, host."""

    def pkg_version(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    commit, dirty = None, None
    repo = Path(__file__).resolve().parent.parent
    if (repo / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=10).stdout.strip() or None
            dirty = bool(subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                        capture_output=True, text=True, timeout=10).stdout.strip()) if commit else None
        except (OSError, subprocess.SubprocessError):
            commit, dirty = None, None
    return {"git_commit": commit, "git_dirty": dirty, "python": platform.python_version(),
            "host": platform.node(), "libraries": {n: pkg_version(n) for n in LIBRARIES}}
