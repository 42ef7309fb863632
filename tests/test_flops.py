"""The FLOP counter behind `mfu`: exact on a small model counted by hand, and within 2% of PyTorch's
own FlopCounterMode (which records the matmuls autograd really runs) on a LoRA-adapted tiny BERT."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hydra.utils import get_class
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from peft_bench.checks import check_config
from peft_bench.flops import TrainFlops, gemm_peak
from tests.helpers import TINY, compose


class Small(nn.Module):
    """Frozen embedding -> frozen Linear 16->32 -> trainable Linear 32->32 -> first token -> trainable
    head 32->2."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(num_hidden_layers=0, hidden_size=32)
        self.emb = nn.Embedding(100, 16).requires_grad_(False)
        self.frozen = nn.Linear(16, 32).requires_grad_(False)
        self.trained = nn.Linear(32, 32)
        self.head = nn.Linear(32, 2)

    def forward(self, input_ids, attention_mask):
        return self.head(self.trained(self.frozen(self.emb(input_ids)))[:, 0])


def test_flops_of_a_small_model_counted_by_hand():
    flops = TrainFlops(Small())
    # per token: frozen 2*16*32 forward only (its input, the frozen embedding, needs no gradient and
    # its weight does not train) = 1,024; trained 2*32*32 forward + weight gradient (its input needs
    # no gradient) = 4,096. Per sequence: head 2*32*2 forward + input gradient + weight gradient = 384.
    assert (flops.per_token, flops.per_sequence) == (1024 + 4096, 384)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])  # 8 real tokens, padding not counted
    assert flops.batch(mask) == 8 * 5120 + 2 * 384


def test_attention_term_counted_by_hand():
    flops = TrainFlops(Small())
    flops.layers, flops.hidden = 2, 4
    # per layer and sequence: QK^T and AV 2*l*l*d each forward (2*9*4 = 72 each), backward twice: 3 * 144
    assert flops.attention([3]) == 2 * 3 * 144


@pytest.mark.parametrize("method", ["lora", "full"])
def test_lora_tiny_bert_matches_torch_flop_counter(method):
    run = check_config(compose([*TINY, f"method={method}"]))
    model = get_class(run.method._target_)(method=run.method, model=run.model, dataset=run.dataset).model
    ids = torch.randint(1, 100, (4, 32))
    # attention on its math path (matmuls the counter sees): torch's FlopCounterMode has no formula for
    # CPU flash attention, which the model takes without attention dropout (model.attention_dropout=0.0)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        model(
            input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1, 0, 1])
        ).loss.backward()
    ours = TrainFlops(model).batch(torch.ones_like(ids))
    # LoRA: ours counts both attention operands' gradients in the first layer, where the key's is not
    # needed (its input and weight are frozen): 1.3% more on this 2-layer model. Full: exact.
    assert ours == pytest.approx(counter.get_total_flops(), rel=0.02 if method == "lora" else 1e-9)


def test_gemm_peak_is_a_positive_rate():
    assert gemm_peak("cpu", n=256, seconds=0.1) > 1e8


def test_gemm_peak_is_measured_once_per_machine_with_a_cache_file(tmp_path, monkeypatch):
    import json

    from peft_bench import flops

    cache = tmp_path / "gemm_peak.json"
    first = gemm_peak("cpu", n=128, seconds=0.05, cache_file=cache)
    ((key, value),) = json.loads(cache.read_text()).items()
    assert value == first and key.endswith("|torch.float32|128") and torch.__version__ in key
    monkeypatch.setattr(flops, "_PEAK_CACHE", {})  # a new process: reads the file, measures nothing
    monkeypatch.setattr(
        flops.torch, "randn", lambda *a, **k: (_ for _ in ()).throw(AssertionError("measured"))
    )
    assert gemm_peak("cpu", n=128, cache_file=cache) == first


def test_rows_per_token_per_sequence_and_per_step_are_told_apart():
    """A Linear called on every token and again on a fixed prompt (LLaMA-Adapter), one on a fixed number
    of rows per sequence (prefix tuning's projection of 4 virtual tokens), one on the prompt alone
    (P-tuning's encoder): each counted by how its rows grow with the batch and the sequence."""
    from torch import nn

    from peft_bench.flops import probe_linear_costs

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(100, 8)
            self.proj, self.prefix, self.encoder = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
            self.prompt = nn.Parameter(torch.zeros(3, 8))

        def forward(self, input_ids, attention_mask=None):
            x = self.embed(input_ids)
            b = x.shape[0]
            virtual = self.prefix(self.prompt[None, :1].expand(b, 4, 8))  # 4 rows per sequence
            return self.proj(x).sum() + self.proj(self.encoder(self.prompt)).sum() + virtual.sum()

    costs = {(c.name, c.per): c.flops_per_row for c in probe_linear_costs(Toy())}
    per_row = 2 * 8 * 8 * 3  # forward, input gradient, weight gradient
    assert costs == {
        ("proj", "token"): per_row,
        ("proj", "step"): 3 * per_row,  # its second call, on the 3 prompt rows
        ("prefix", "sequence"): 4 * per_row,
        ("encoder", "step"): 3 * per_row,  # the 3 prompt rows (a parameter: its input needs a gradient)
    }
