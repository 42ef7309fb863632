"""The package's shape: the wheel carries the configs and runs a job outside the checkout; the
benchmark suite is not in it; no module imports another that imports it back (no cycles dodged by
imports inside functions)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import CONF_DIR, ROOT


@pytest.mark.slow  # builds the wheel (~10 s) and runs one tiny job from it (~15 s)
def test_the_wheel_carries_every_config_and_runs_a_job_outside_the_checkout(tmp_path):
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("peft_bench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"peft_bench/conf/{p.relative_to(CONF_DIR)}" for p in CONF_DIR.rglob("*.yaml")}
    assert configs and configs <= names, sorted(configs - names)
    assert not [n for n in names if "bench.py" in n or n.startswith(("tests/", "benchmarks/"))]

    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    away = tmp_path / "elsewhere"  # no checkout here: the configs must come from the installed package
    away.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import peft_bench.config as c; print(c.__file__, c.CONF_DIR)"],
        cwd=away,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.split() == [str(site / "peft_bench" / "config.py"), str(site / "peft_bench" / "conf")]
    job = subprocess.run(
        [
            sys.executable,
            "-m",
            "peft_bench",
            "model=tiny",
            "dataset=demo",
            "logger=none",
            "trainer=fast",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
        ],
        cwd=away,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert job.returncode == 0, job.stderr[-2000:]
    (results,) = (away / "outputs").glob("*/results.json")
    record = json.loads(results.read_text())
    assert record["status"] == "completed" and record["git_commit"] is None  # not a git checkout


def imports_of(path: Path) -> set[str]:
    """peft_bench modules a module imports, at its top or inside its functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("peft_bench"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("peft_bench"))
    return found


def test_no_import_cycles():
    package = ROOT / "peft_bench"
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in package.rglob("*.py")
    }
    graph = {m: {i for i in imports_of(p) if i in modules and i != m} for m, p in modules.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*path, start]
                if nxt not in path and len(path) < len(graph):
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [c for m in sorted(graph) if (c := cycle_from(m))]
    assert not cycles, " | ".join(" -> ".join(c) for c in cycles[:5])
