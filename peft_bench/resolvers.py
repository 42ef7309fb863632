"""The OmegaConf resolvers the configs use: run folders named by the command (`command_key`), W&B ids
(`sweep_id`, `job_key`), packaged model folders (`pkg_path`), the default cache (`default_cache`)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from peft_bench.errors import PeftBenchError

# conf/ at the top of the checkout, shipped in the wheel as the package peft_bench.conf (pyproject.toml):
# found the same way installed and editable
CONF_DIR = Path(list(importlib.util.find_spec("peft_bench.conf").submodule_search_locations)[0])


def groups_help() -> str:
    """`--help`'s list of config groups: each group's options (its YAML files, not the schemas), with the
    first sentence of each option's leading comment."""

    def summary(option: Path) -> str:
        comment = " ".join(
            line.lstrip("# ").strip()
            for line in option.read_text().splitlines()[:4]
            if line.startswith("#") and "@package" not in line
        )
        sentence = re.split(r"(?<=[.:])\s", comment, maxsplit=1)[0].rstrip(".:")
        return sentence if len(sentence) <= 80 else sentence[:80].rsplit(" ", 1)[0] + " ..."

    groups = [
        p for p in sorted(CONF_DIR.iterdir()) if p.is_dir() and p.name not in ("hydra", "tune", "__pycache__")
    ]
    lines = []
    for group in [*groups, CONF_DIR / "hydra" / "launcher"]:
        lines.append(f"{group.relative_to(CONF_DIR)}:")
        if group.name == "launcher":
            lines.append(f"  {'basic':<14} Hydra's default: the jobs one after another in this process")
            lines.append(f"  {'submitit_local':<14} the jobs as local processes (hydra-submitit-launcher)")
        lines += [f"  {option.stem:<14} {summary(option)}" for option in sorted(group.glob("*.yaml"))]
    return "\n".join(lines)


def default_cache() -> str:
    """Where tokenized data, prepared models and the matmul peak are kept: $PEFT_BENCH_CACHE, else
    ~/.cache/peft_bench. The one default for runs, `prepare` and `prepare_smollm2`."""
    return os.environ.get("PEFT_BENCH_CACHE") or str(Path.home() / ".cache" / "peft_bench")


def package_path(package: str, subpath: str = "") -> str:
    """Folder of an installed package (without importing it), e.g. a model shipped in a wheel."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PeftBenchError(f"package {package!r} is not installed: pip install {package.replace('_', '-')}")
    return str(Path(list(spec.submodule_search_locations)[0]) / subpath)


# ------------------------------------------------------------------------------ what defines a run

# The one table of config keys that do not define a run. Every other key of the resolved config (the
# method and its adapter, model, dataset recipe, seed, trainer: precision, devices, limits, batch sizes)
# shapes a reported figure, so a run is the same run only if all of them match. Derived from it, and
# from nothing else: the checkpoint fingerprint a resume must match and the skip of a completed run
# (`run_identity`), the report's settings (`setting_identity`), the sweep's duplicate-job check
# (`run_identity`) and the run folder's name (`overrides_key`). A key ending in "." is a prefix.
KEY_ROLES: dict[str, str] = {
    # how the command treats a folder it finds: not even part of the folder's name
    "skip_completed": "control",
    "resume": "control",
    # where a run is written and read, how it is named and logged
    "run_dir": "place",
    "run_name": "place",
    "cache_dir": "place",
    "logger.": "place",
    # file locations: their content is compared on its own (the data's cache key, the files' bytes)
    "dataset.data_files": "place",
    # where the weights and tokenizer are read from: another path may hold other weights, so a run is
    # not skipped or resumed across it; but the same model installed elsewhere (another venv, cluster or
    # cache folder) is the same setting in the report (the tokenizer's content is in the data's key)
    "model.pretrained": "weights",
    "model.tokenizer": "weights",
    # what is kept along the way, and chatter: no figure changes
    "checkpoint_every_n_steps": "saving",
    "dataset.num_workers": "saving",
    "trainer.log_every_n_steps": "saving",
    "trainer.num_sanity_val_steps": "saving",
    "dataset.report_metrics": "saving",  # the columns a benchmark table shows (dataset.metric defines)
    # what a run adds when asked (figures, exports): a completed run not asked for it is run again
    "test": "asks",
    "eval_before_training": "asks",
    "method.export": "asks",
    "method.export_merged": "asks",
    # plain values that act only through the method's own keys (method.r, method.pruning.target), which
    # define the run; a method without a rank ignores `rank`
    "rank": "alias",
    "sparsity": "alias",
    # a run of its own, but the same setting: the report's statistics are over seeds
    "seed": "seed",
}


def key_role(key: str) -> str:
    """A flattened config key's role in KEY_ROLES ("defines" when it is not listed: it shapes a figure)."""
    if key in KEY_ROLES:
        return KEY_ROLES[key]
    return next((role for k, role in KEY_ROLES.items() if k.endswith(".") and key.startswith(k)), "defines")


def run_identity(flat: dict) -> dict:
    """The keys of a flattened config that define a run (its seed included): two runs are the same run
    exactly when these match (and their data)."""
    return {k: v for k, v in flat.items() if key_role(k) in ("defines", "weights", "seed")}


def setting_identity(flat: dict) -> dict:
    """The keys that define a setting: a run's, without its seed."""
    return {k: v for k, v in flat.items() if key_role(k) == "defines"}


def overrides_key(overrides: list[str]) -> str:
    """A folder name that is a function of the command-line overrides alone: readable, then a hash.
    Control keys (`skip_completed`, `resume`) are left out: they say how to treat the folder."""
    ordered = sorted(o for o in overrides if key_role(o.lstrip("+~").split("=", 1)[0]) != "control")
    if not ordered:
        return "defaults"
    digest = hashlib.sha256("\n".join(ordered).encode()).hexdigest()[:8]
    readable = re.sub(r"[^A-Za-z0-9=.,+_-]+", "_", "_".join(ordered))[:80]
    return f"{readable}_{digest}"


def command_key() -> str:
    """This command's overrides (hydra.* aside) as a folder name: the same command finds the same
    folder again, so a re-run resumes or skips what is there. Read from the command line, as Hydra
    parses it, because a sweep resolves its folder before any config names the overrides; registered
    with use_cache, so a sweep's jobs reuse the value the launcher resolved (Hydra copies the cache)."""
    args, _ = get_args_parser().parse_known_args(sys.argv[1:])
    return overrides_key([o for o in args.overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))])


def sweep_id() -> str:
    """The sweep a job belongs to (its multirun folder), or the run folder for a single run."""
    hc = HydraConfig.get()
    return Path(hc.sweep.dir if hc.mode == RunMode.MULTIRUN else hc.run.dir).name


def job_key() -> str:
    """Stable id of one job: its sweep and its own overrides (the same across requeue and re-run)."""
    hc = HydraConfig.get()
    return hashlib.sha256(f"{sweep_id()}\n{overrides_key(list(hc.overrides.task))}".encode()).hexdigest()[:16]


def top_half(num_layers: int) -> list[int]:
    """Indices of the upper half of a model's layers, e.g. [3, 4, 5] of 6."""
    return list(range(num_layers // 2, num_layers))


def rank_part(r) -> str:
    """`-r<rank>` of a run's name: the rank the method trains with (method.r, whatever set it), nothing
    for a method without one (ia3, bitfit, full)."""
    return "" if r is None else f"-r{r}"


def rank_if(rank, field):
    """method=peft's rank: the top-level rank where the method has a rank field, else None."""
    return rank if field not in (None, "", "null", "None") else None


def peft_name(peft_type) -> str:
    """A PEFT type's name as a method name: OFT -> oft."""
    return str(peft_type).lower()


def register_resolvers() -> None:
    for name, fn in (
        ("rank_part", rank_part),
        ("pkg_path", package_path),
        ("sweep_id", sweep_id),
        ("top_half", top_half),
        ("job_key", job_key),
        ("default_cache", default_cache),
        ("groups_help", groups_help),
        ("rank_if", rank_if),
        ("peft_name", peft_name),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
    if not OmegaConf.has_resolver("command_key"):
        OmegaConf.register_new_resolver("command_key", command_key, use_cache=True)


register_resolvers()


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
