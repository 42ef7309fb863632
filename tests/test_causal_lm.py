"""The text-generation track: packing, contiguous splits, token-weighted perplexity, and tiny
causal-LM runs of every method on real WikiText-2 text (../shared/data, read in place)."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset, DatasetDict

from peft_bench.checks import check_config
from peft_bench.config import LMDatasetConfig
from peft_bench.data.causal_lm import pack, split_lm
from peft_bench.errors import ConfigError
from peft_bench.predictions import read_predictions
from peft_bench.train import run
from tests.helpers import ROOT, assert_documented, compose

WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext2" / "validation.jsonl"
needs_wikitext = pytest.mark.skipif(
    not WIKITEXT.is_file(), reason=f"real WikiText-2 text not found at {WIKITEXT}"
)
LM = ["model=tiny_llama", "dataset=wikitext2", "logger=none", f"dataset.data_files={WIKITEXT}"]


def test_packing_keeps_every_token_exactly_once_in_order():
    tokens = list(range(1000))
    blocks = pack(tokens, 64)["input_ids"]
    assert [t for b in blocks for t in b] == tokens
    assert all(len(b) == 64 for b in blocks[:-1]) and len(blocks[-1]) == 1000 - 15 * 64


def test_missing_lm_splits_are_the_contiguous_end_of_train():
    raw = DatasetDict(train=Dataset.from_dict({"text": [f"line {i}" for i in range(100)]}))
    splits, how = split_lm(raw, LMDatasetConfig(name="t"))
    assert splits["train"]["text"] == [f"line {i}" for i in range(80)]
    assert splits["validation"]["text"] == [f"line {i}" for i in range(80, 90)]
    assert splits["test"]["text"] == [f"line {i}" for i in range(90, 100)]
    assert "rows 90..99" in how["test"] and "contiguous" in how["test"]


def lm_module(method: str = "lora"):
    from hydra.utils import get_class

    r = check_config(compose([*LM[:3], f"method={method}"]))
    return get_class(r.method._target_)(method=r.method, model=r.model, dataset=r.dataset).eval()


def test_perplexity_is_token_weighted_over_the_split_and_matches_the_logits():
    module = lm_module()
    g = torch.Generator().manual_seed(0)
    batches = []
    for n, length in ((3, 20), (1, 7)):  # unequal token counts: a mean of batch perplexities would differ
        ids = torch.randint(0, 30522, (n, length), generator=g)
        labels = ids.clone()
        labels[0, -3:] = -100  # padding
        batches.append({"input_ids": ids, "attention_mask": (labels != -100).long(), "labels": labels})
    nll, count, per_batch = 0.0, 0, []
    with torch.no_grad():
        for b in batches:
            logits = module(b)
            module.task.update(module.val_metrics, logits, b["labels"])
            target = b["labels"][:, 1:]
            batch_nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).double(),
                target.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            nll, count = nll + float(batch_nll), count + int((target != -100).sum())
            per_batch.append(math.exp(float(batch_nll) / int((target != -100).sum())))
    ppl = float(module.val_metrics.compute()["val/ppl"])
    assert ppl == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert abs(ppl - sum(per_batch) / len(per_batch)) > 1.0


def test_a_classification_model_is_refused_for_a_language_modelling_dataset():
    with pytest.raises(ConfigError, match="model=tiny has no causal language modelling head.*tiny_llama"):
        check_config(compose(["model=tiny", "dataset=wikitext2", f"dataset.data_files={WIKITEXT}"]))
    # MiniLM (BERT): transformers has a BertLMHeadModel, but an encoder's attention sees the next token
    with pytest.raises(ConfigError, match="model=minilm has no causal language modelling head"):
        check_config(compose(["model=minilm", "dataset=wikitext2", f"dataset.data_files={WIKITEXT}"]))


def test_smollm2_missing_names_the_prepare_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path))
    with pytest.raises(
        ConfigError,
        match="no folder .*smollm2-135m-instruct; "
        "`python -m peft_bench.prepare model=smollm2 dataset=wikitext2 ",
    ):
        check_config(compose(["model=smollm2", "dataset=wikitext2", f"dataset.data_files={WIKITEXT}"]))


@pytest.mark.slow  # six short training runs, ~1 min together on 2 cores
@needs_wikitext
@pytest.mark.parametrize("method", ["lora", "sparse_lora", "qlora", "hira", "full", "lora_layers"])
def test_tiny_causal_lm_run_lowers_validation_perplexity(method, tmp_path):
    r = run(
        compose(
            [
                *LM,
                f"method={method}",
                "trainer=fast",
                "trainer.limit_train_batches=40",
                "trainer.limit_val_batches=8",
                "trainer.limit_test_batches=8",
                "dataset.block_size=64",
                "eval_before_training=true",
                # HiRA's update is W0 * (B A): on a random W0 (std 0.02) it needs a ~10x larger step
                f"method.lr={1e-1 if method == 'hira' else 1e-2}",
                "method.pruning.every_n_steps=5" if method == "sparse_lora" else "seed=42",
            ],
            run_dir=tmp_path,
        )
    )
    before, after = r["before_training"]["val_ppl"], r["val_ppl"]
    print(method, "val ppl before", before, "after", after)
    assert r["status"] == "completed" and after < 0.9 * before, (before, after)
    assert_documented(r)
    assert (
        40 * 8 * 64 - 64 < r["train_tokens"] <= 40 * 8 * 64 and r["train_tokens_per_s"] > 0
    )  # one block may be short
    assert r["data"]["splits"]["test"].endswith("contiguous)")
    answers = read_predictions(tmp_path, r["predictions"])  # per block: its NLL and tokens
    assert math.exp(answers["nll"].sum() / answers["tokens"].sum()) == pytest.approx(r["test_ppl"], rel=1e-4)
