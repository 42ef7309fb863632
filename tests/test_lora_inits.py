"""The data-driven LoRA initialisations (EVA, CorDA, LoRA-GA) and LoftQ on the tiny encoder: each does
what its paper says at step 0, reads the run's first training batches (recorded, timed, counted in
training time) and builds the same adapter from the same batches (what a resume relies on). Training,
resume, export and reload are test_all_methods' (every option)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from peft_bench.checks import check_config
from peft_bench.errors import ConfigError
from peft_bench.models import load_base
from peft_bench.tasks import get_task
from peft_bench.train import run
from tests.helpers import TINY, build_module, compose

BATCH = {"input_ids": torch.randint(5, 1000, (3, 12)), "attention_mask": torch.ones(3, 12, dtype=torch.long)}


def built(method: str, *extra: str):
    cfg = OmegaConf.to_object(compose([*TINY, f"method={method}", "rank=4", *extra]))
    L.seed_everything(0, verbose=False)
    return cfg, build_module(cfg).eval()


def base_outputs(cfg) -> torch.Tensor:
    L.seed_everything(0, verbose=False)
    base = load_base(cfg.model, get_task(cfg.dataset.task), cfg.dataset.num_labels)[0].eval()
    with torch.no_grad():
        return base(**BATCH).logits


def lora_layers(module):
    from peft.tuners.lora import LoraLayer

    return [m for m in module.model.modules() if isinstance(m, LoraLayer)]


@pytest.mark.parametrize("method", ["corda", "lora_ga"])
def test_an_init_that_moves_w_into_the_adapter_leaves_the_model_unchanged(method):
    """CorDA and LoRA-GA start the adapter at components of W (or its gradient) and keep W - s B0 A0 as
    the base: the model computes what the pretrained one did, with a non-zero adapter."""
    cfg, module = built(method)
    assert all(float(layer.lora_B["default"].weight.abs().sum()) > 0 for layer in lora_layers(module))
    with torch.no_grad():
        got = module.model(**BATCH).logits
    torch.testing.assert_close(got, base_outputs(cfg), atol=1e-4, rtol=1e-4)


def test_eva_starts_a_at_unit_input_directions_and_b_at_zero():
    """EVA's A rows are right-singular vectors of the layers' inputs (unit norm, orthogonal); B = 0, so the
    model starts as the pretrained one."""
    cfg, module = built("eva")
    for layer in lora_layers(module):
        a = layer.lora_A["default"].weight
        gram = a @ a.T
        torch.testing.assert_close(gram, torch.eye(len(a)), atol=1e-4, rtol=0)
        assert float(layer.lora_B["default"].weight.abs().sum()) == 0
    with torch.no_grad():
        torch.testing.assert_close(module.model(**BATCH).logits, base_outputs(cfg), atol=1e-5, rtol=1e-5)


def test_loftq_starts_nearer_to_full_precision_than_qlora():
    """Q + s B A is closer to W than the 4-bit Q alone, in every adapted layer (QLoRA starts at Q)."""
    import bitsandbytes as bnb

    cfg, module = built("loftq")
    L.seed_everything(0, verbose=False)
    full = dict(
        load_base(cfg.model, get_task(cfg.dataset.task), cfg.dataset.num_labels, keep_full_precision=True)[2]
    )
    names = {id(m): n for n, m in module.model.named_modules()}
    layers = lora_layers(module)
    assert layers
    for layer in layers:
        base = layer.get_base_layer()
        w = full[names[id(layer)].removeprefix("base_model.model.")]
        q = bnb.functional.dequantize_4bit(base.weight.data, base.weight.quant_state)
        delta = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        assert torch.linalg.norm(w - q - delta) < 0.9 * torch.linalg.norm(w - q)


@pytest.mark.parametrize("method", ["eva", "corda", "lora_ga"])
def test_the_same_batches_build_the_same_adapter(method):
    """A resumed run builds its module again before the checkpoint loads: the base a CorDA or LoRA-GA
    adapter was trained on must come out the same."""
    _, first = built(method)
    _, second = built(method)
    a, b = first.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)


def test_a_data_driven_init_reads_the_runs_first_batches_and_counts_its_time(tmp_path):
    out = run(compose([*TINY, "method=corda", "rank=4", "trainer=fast", "method.init_batches=3"], tmp_path))
    init = out["data_init"]
    batch_size = out["config"]["dataset"]["batch_size"]
    assert init["init"] == "corda" and init["batches"] == 3 and init["examples"] == 3 * batch_size
    assert 0 < init["seconds"] <= out["train_time_s"]


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["method=corda", "model.quantization=nf4"], "full-precision weights"),
        (["method=lora_ga", "model.quantization=nf4"], "full-precision weights"),
        (["method=lora", "method.init=loftq"], "model.quantization=nf4"),
        (["method=eva", "method.init_batches=0"], "method.init_batches=0"),
    ],
)
def test_an_init_that_cannot_run_is_refused_up_front(overrides, says):
    with pytest.raises(ConfigError, match=says):
        check_config(compose([*TINY, *overrides]))


def test_more_init_batches_than_the_training_split_has_is_one_sentence(tmp_path):
    from peft_bench.errors import DataError

    with pytest.raises(DataError, match="lower method.init_batches"):
        run(compose([*TINY, "method=eva", "method.init_batches=100000", "trainer=fast"], tmp_path))
