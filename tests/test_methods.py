"""Every method on the tiny model: what it trains, what it reports, and the method's own maths
(HiRA's Hadamard update, merged = unmerged outputs, 4-bit storage)."""

from __future__ import annotations

import json

import pytest
import torch

from peft_bench.checks import check_config
from peft_bench.train import run
from tests.helpers import TINY, assert_documented, compose, run_cli

# a sanity validation before training (off by default on a CPU): eval -> train switches are exercised
FAST = [*TINY, "trainer=fast", "trainer.limit_train_batches=20", "trainer.num_sanity_val_steps=1"]
DIM, FFN, LAYERS = 64, 128, 2  # conf/model/tiny.yaml


def module_for(method: str, *extra: str):
    from hydra.utils import get_class

    run_cfg = check_config(compose(["model=tiny", "dataset=demo", f"method={method}", *extra]))
    return get_class(run_cfg.method._target_)(
        method=run_cfg.method, model=run_cfg.model, dataset=run_cfg.dataset, total_steps=100
    )


@pytest.fixture(scope="module")  # six short runs, ~20 s together
def method_runs(tmp_path_factory):
    out = {}
    for method in ("lora", "sparse_lora", "qlora", "hira", "full", "lora_layers"):
        run_dir = tmp_path_factory.mktemp(method)
        out[method] = run(compose([*FAST, f"method={method}", "rank=4"], run_dir=run_dir))
        out[method]["_dir"] = run_dir
    return out


@pytest.mark.parametrize("method", ["lora", "sparse_lora", "qlora", "hira", "full", "lora_layers"])
def test_every_method_completes_with_the_shared_fields(method_runs, method):
    r = method_runs[method]
    assert r["status"] == "completed" and r["method"] == method
    assert_documented({k: v for k, v in r.items() if k != "_dir"})  # every key typed and in docs/results.md
    for key in (
        "val_acc",
        "val_f1",
        "test_acc",
        "test_f1",
        "trainable_params",
        "total_params",
        "train_time_s",
        "peak_memory_bytes",
        "inference_latency_ms_per_example",
    ):
        assert isinstance(r[key], int | float), key


def test_trainable_parameter_counts(method_runs):
    r, head = 4, (DIM * DIM + DIM) + (DIM * 2 + 2)  # pre_classifier + classifier
    qv = LAYERS * 2 * (r * DIM + DIM * r)
    assert method_runs["lora"]["trainable_params"] == qv + head
    assert method_runs["sparse_lora"]["trainable_params"] == qv + head
    assert method_runs["qlora"]["trainable_params"] == qv + head
    assert method_runs["lora_layers"]["trainable_params"] == qv // 2 + head  # top layer only
    assert method_runs["lora_layers"]["adapter"]["layers_to_transform"] == [1]
    qkv_ffn = LAYERS * (3 * (r * DIM + DIM * r) + (r * DIM + FFN * r) + (r * FFN + DIM * r))
    assert method_runs["hira"]["trainable_params"] == qkv_ffn + head
    assert method_runs["full"]["trainable_params"] == method_runs["full"]["total_params"]


def test_merged_inference_scores_the_same_and_the_adapter_is_saved(method_runs):
    for method in ("lora", "hira", "sparse_lora"):
        r = method_runs[method]
        assert r["merged_test_acc"] == pytest.approx(r["test_acc"])
        assert r["inference_latency_merged_ms_per_example"] > 0
        assert (r["_dir"] / "adapter" / "adapter_config.json").is_file()
        assert (r["_dir"] / "adapter" / "adapter_model.safetensors").is_file()
    assert "merged_test_acc" not in method_runs["qlora"] and "merged_test_acc" not in method_runs["full"]


@pytest.mark.parametrize("method", ["lora", "hira"])
def test_merge_gives_the_same_outputs(method):
    module = module_for(method).eval()
    for name, p in module.model.named_parameters():
        if "lora_B" in name or "hira_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # B starts at zero: make the adapter do something
    batch = {
        "input_ids": torch.randint(1000, 2000, (3, 12)),
        "attention_mask": torch.ones(3, 12, dtype=torch.long),
    }
    with torch.no_grad():
        before = module(batch)
        with module.merged():
            merged = module(batch)
        after = module(batch)
    assert not torch.allclose(before, module_for("lora").eval()(batch))  # the adapter changed the outputs
    torch.testing.assert_close(merged, before, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(after, before)


def test_hira_update_is_the_hadamard_product_with_the_frozen_weight():
    module = module_for("hira", "rank=3").eval()
    layer = module.model.base_model.model.distilbert.transformer.layer[0].attention.q_lin
    a, b = layer.hira_A["default"], layer.hira_B["default"]
    torch.nn.init.normal_(b)
    w0 = layer.base_layer.weight.detach().clone()
    expected = w0 + w0 * (b @ a)  # dW = W0 * (B A), no alpha scaling
    with module.merged():
        torch.testing.assert_close(layer.base_layer.weight.detach(), expected)
    assert torch.linalg.matrix_rank(expected - w0) > 3  # high rank from rank-3 factors


def test_qlora_stores_linear_weights_in_4_bits(method_runs):
    q = method_runs["qlora"]["quantization"]
    assert q["quant_type"] == "nf4" and q["double_quant"] is True
    # every Linear but the task heads: 6 per layer (q, k, v, out, lin1, lin2)
    assert q["quantized_linear_modules"] == 6 * LAYERS
    # 4 bits = 0.125 of fp32, plus per-block absmax and a 1 KiB code table per layer (large on 64x64 layers;
    # 0.13 on MiniLM)
    assert 0.125 < q["quantized_linear_weight_ratio"] < 0.2
    assert q["base_weight_bytes"] < q["base_weight_bytes_fp32"]


def test_qlora_keeps_the_head_trainable_and_unquantized():
    import bitsandbytes as bnb

    module = module_for("qlora")
    heads = {n: m for n, m in module.model.named_modules() if n.endswith(("pre_classifier", "classifier"))}
    assert heads and not any(isinstance(m, bnb.nn.Linear4bit) for m in heads.values())
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert any("classifier" in n for n in trainable) and all(
        "lora_" in n or "modules_to_save" in n for n in trainable
    )


def test_sparse_lora_logs_the_l1_term_apart(tmp_path):
    run(compose([*FAST, "method=sparse_lora", "logger=csv"], run_dir=tmp_path))
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/l1_step" in header and "train/loss_step" in header


def test_sparsity_sweep_as_typed_reaches_each_target(tmp_path):
    out = run_cli(
        [
            "-m",
            *FAST,
            "method=sparse_lora",
            "sparsity=0.3,0.8",
            "method.pruning.every_n_steps=5",
            f"hydra.sweep.dir={tmp_path}",
        ]
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for job, target in ((0, 0.3), (1, 0.8)):
        r = json.loads((tmp_path / str(job) / "results.json").read_text())
        assert r["pruning"]["target"] == target and r["pruning"]["schedule"] == "gradual"
        steps = r["pruning"]["steps"]
        assert [s for s, _ in steps] == [2, 7, 12, 14]  # every 5 steps from 10% to 70% of 20 steps
        assert steps[-1][1] == target
        # magnitude_per_matrix: each matrix to the target, rounded to whole weights
        assert r["sparsity_exact_zero"] == pytest.approx(
            target, abs=len(r["sparsity_per_matrix"]) / r["adapter_params"]
        )
        assert r["sparsity_below_1e-3"] >= r["sparsity_exact_zero"]
        assert r["adapter_nonzero"] == pytest.approx((1 - r["sparsity_exact_zero"]) * r["adapter_params"])
        assert r["evaluated_checkpoint"] == "final weights"


def test_one_shot_reports_before_and_after_pruning(tmp_path):
    r = run(
        compose(
            [*FAST, "method=sparse_lora", "method.pruning.schedule=one_shot", "sparsity=0.9"],
            run_dir=tmp_path,
        )
    )
    before = r["before_pruning"]
    assert before["sparsity_exact_zero"] < 0.05
    assert r["sparsity_exact_zero"] == pytest.approx(
        0.9, abs=len(r["sparsity_per_matrix"]) / r["adapter_params"]
    )
    assert {"val_acc", "val_f1", "test_acc", "test_f1"} <= set(before)
    assert r["pruning"]["steps"] == [[20, 0.9]]


def test_merged_export_is_a_plain_model_with_the_adapter_folded_in(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    r = run(compose([*FAST, "method=lora", "method.export_merged=true"], run_dir=tmp_path))
    assert r["merged_dir"] == "merged"
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    names = [n for n, _ in merged.named_parameters()]
    assert not any("lora" in n or "modules_to_save" in n for n in names)
    adapter = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    head = next(v for k, v in adapter.items() if k.endswith("classifier.weight") and "pre_" not in k)
    torch.testing.assert_close(merged.classifier.weight, head)  # the trained head, not a fresh one
