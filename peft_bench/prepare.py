"""Fetch and cache everything a run or sweep needs, before the jobs start: on a cluster's login node
(which has network) for compute nodes that have none.

    python -m peft_bench.prepare method=lora dataset=sst2,imdb model=distilbert rank=4,8

Takes the same overrides as the run or sweep (a trailing -m is ignored) and, for every job of the
Cartesian product: checks its config, downloads the model's weights, config and tokenizer into the
Hugging Face cache (or builds a local model folder that has a recipe, e.g. model=smollm2), downloads
the dataset and tokenizes it into peft_bench's shared cache (cache_dir). Each distinct model and
dataset is fetched once. The jobs then run with HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 (the SLURM
presets set them); one that still finds something missing names this command.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from peft_bench.checks import compose_job
from peft_bench.config import ModelConfig, RunConfig
from peft_bench.env import setup_process
from peft_bench.errors import PeftBenchError
from peft_bench.models import is_local
from peft_bench.sweep import check_jobs

# Weights of other frameworks and formats: never what transformers' PyTorch loader reads.
OTHER_FORMATS = [
    "*.h5",
    "*.msgpack",
    "*.ot",
    "*.onnx",
    "*.onnx_data",
    "*.tflite",
    "*.gguf",
    "*.mlmodel",
    "onnx/*",
    "openvino/*",
    "coreml/*",
    "tf_model*",
    "flax_model*",
    "rust_model*",
]


def job_configs(overrides: list[str]) -> list[tuple[list[str], RunConfig]]:
    """(job overrides, checked config) for every job the overrides sweep; all problems in one error."""
    # a missing local model folder with a recipe is built before the check, which reads its config.json
    return check_jobs(overrides, compose_job, lambda cfg: build_local_model(OmegaConf.to_object(cfg).model))


def build_local_model(model: ModelConfig) -> None:
    """A local model folder that is missing but has a recipe (model.prepare_with) is built now."""
    folder = Path(model.pretrained or "").expanduser()
    if is_local(model) and model.prepare_with and not (folder / "config.json").is_file():
        print(f"model {model.name}: building {folder} with {model.prepare_with}", flush=True)
        importlib.import_module(model.prepare_with).prepare(folder)


def fetch_model(run: RunConfig) -> str:
    """Make the model's weights, config and tokenizer loadable offline; say what was done."""
    from peft_bench.models import load_tokenizer

    model = run.model
    if model.architecture is not None:
        load_tokenizer(model)
        return f"random init from model.architecture; tokenizer {model.tokenizer} cached"
    if is_local(model):
        return f"local folder {Path(model.pretrained).expanduser()}"
    return f"Hub {model.pretrained} -> {download(model.pretrained)}"


def download(repo_id: str) -> str:
    """snapshot_download of what transformers reads: configs, tokenizer files, safetensors weights
    (PyTorch .bin only where a repo has no safetensors)."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        files = HfApi().list_repo_files(repo_id)
        skip = OTHER_FORMATS + (
            ["*.bin", "*.pt", "*.pth"] if any(f.endswith(".safetensors") for f in files) else []
        )
        folder = snapshot_download(repo_id, ignore_patterns=skip)
    except Exception as e:  # offline, unknown repo, gated repo: the Hub's own message says which
        raise PeftBenchError(
            f"cannot download {repo_id!r} from the Hugging Face Hub: {type(e).__name__}: {e}"
        ) from None
    size = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
    return f"{folder} ({size / 2**20:.0f} MiB)"


def tokenize(run: RunConfig) -> str:
    """Download the dataset (Hub) and tokenize it into the shared cache, exactly as a job does."""
    from hydra.utils import get_class

    from peft_bench.models import load_tokenizer

    datamodule = get_class(run.dataset._target_)(
        dataset=run.dataset, tokenizer=load_tokenizer(run.model), cache_dir=run.cache_dir, seed=run.seed
    )
    datamodule.prepare_data()
    info = datamodule.info
    sizes = ", ".join(f"{k} {v:,}" for k, v in info["sizes"].items())
    return f"{info['cache']} ({sizes}) {Path(run.cache_dir) / 'tokenized' / info['cache_key']}"


def prepare(overrides: list[str]) -> list[str]:
    """Everything the jobs of these overrides need, fetched once each; returns the report lines."""
    jobs = job_configs(overrides)
    lines = [f"{len(jobs)} job(s) checked"]
    done: set[str] = set()
    for _, run in jobs:
        model_key = json.dumps(OmegaConf.to_container(OmegaConf.structured(run.model)), sort_keys=True)
        data_key = json.dumps(
            [OmegaConf.to_container(OmegaConf.structured(run.dataset)), model_key, run.cache_dir],
            sort_keys=True,
            default=str,
        )
        for key, label, step in (
            (model_key, f"model {run.model.name}", fetch_model),
            (data_key, f"data {run.dataset.name} x {run.model.name} tokenizer", tokenize),
        ):
            if key in done:
                continue
            start = time.perf_counter()
            lines.append(f"{label}: {step(run)} [{time.perf_counter() - start:.1f} s]")
            print(lines[-1], flush=True)
            done.add(key)
    return lines


def main(argv: list[str] | None = None) -> None:
    setup_process(check_hub=False)  # it is here to download: an unreachable Hub is its error to report
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("-m", "--multirun")]
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return
    if any(a.startswith("-") for a in args):
        print(
            f"peft_bench.prepare: error: unknown option {[a for a in args if a.startswith('-')][0]}; "
            "give the run's overrides, e.g. method=lora dataset=sst2,imdb model=distilbert",
            file=sys.stderr,
        )
        sys.exit(2)
    overrides = [a for a in args if not a.lstrip("+~").startswith(("hydra.", "hydra/"))]  # where, not what
    try:
        lines = prepare(overrides)
    except PeftBenchError as e:
        print(f"peft_bench.prepare: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(
        f"{lines[0]}; everything they need is cached. On nodes without network run them with "
        "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 (the SLURM presets set both)."
    )


if __name__ == "__main__":
    main()
