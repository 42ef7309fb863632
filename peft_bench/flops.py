"""Model FLOPs of a training step, and the device's measured matmul peak: their ratio is the MFU.

Counted from the model's shapes and each batch's real (unpadded) token counts, matmuls only:
- a Linear (or GPT-2 Conv1D) with in x out weights applied to n rows costs 2·n·in·out forward; its
  backward costs 2·n·in·out for the gradient of its input (only where that input needs one) and
  2·n·in·out for the gradient of its weight (only where the weight trains). So a frozen base weight
  under LoRA costs 2 matmuls, not 3, and the layers below the lowest adapter need no backward at all;
- how many rows each Linear sees (every token, one per sequence as a pooler or classification head,
  or a fixed number per step), whether its input needs a gradient and whether its weight trains are
  read from three probe forwards of different shapes in training mode (forward hooks), so the count
  follows whatever the method built; a fixed per-step cost (a prompt encoder's MLP) is not counted;
- attention scores and the weighted sum: 2·l²·d each per layer and sequence of real length l
  forward (d = hidden size), twice that backward; a prompt method's virtual tokens are not in l, so
  its FLOPs (and MFU) are a little under the true figure.
Padding is not counted: it is work the hardware does but not the model's, and dynamic padding and
length grouping exist to avoid it.
"""

from __future__ import annotations

import json
import platform
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peft_bench.io import atomic_write

_PEAK_CACHE: dict[tuple[str, torch.dtype, int], float] = {}


@dataclass
class LinearCost:
    """FLOPs per row (token or sequence) of one matmul layer in a training step, forward + backward."""

    name: str
    per: str  # "token", "sequence", or "step" (a fixed count per step: not in TrainFlops)
    flops_per_row: int


def _shape(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, Conv1D):  # GPT-2: weight is (in, out)
        return module.weight.shape[0], module.weight.shape[1]
    return module.in_features, module.out_features


def _rows_seen(model: nn.Module, batch_size: int, seq_len: int, vocab: int) -> dict[str, tuple[int, bool]]:
    """{Linear's name: (rows of its input, whether its input needed a gradient)} of one forward in
    training mode on a random batch."""
    seen: dict[str, tuple[int, bool]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | Conv1D):

            def hook(mod, args, _out, name=name):
                x = args[0]
                rows, grad = seen.get(name, (0, False))  # a module called twice (LLaMA-Adapter): both calls
                seen[name] = (rows + x.numel() // _shape(mod)[0], grad or bool(x.requires_grad))

            hooks.append(module.register_forward_hook(hook))
    device = next(model.parameters()).device
    was_training = model.training
    model.train()
    try:  # on a forked RNG: the probe's dropout must not change the run's random stream
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.enable_grad():
            ids = torch.randint(1, vocab, (batch_size, seq_len), device=device)
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return seen


def probe_linear_costs(
    model: nn.Module, batch_size: int = 2, seq_len: int = 8, vocab: int = 100
) -> list[LinearCost]:
    """Run a forward in training mode on probe batches of three shapes, (B, S), (B+1, S) and (B, S+1),
    and fit each Linear's rows as t·B·S + s·B + c: t rows per token, s per sequence (a pooled head's 1;
    the virtual tokens of prompt tuning, or of prefix tuning's projection), c per step (P-tuning's prompt
    encoder, LLaMA-Adapter's prompt projections: not counted, they do not grow with the batch); with
    whether its input needed a gradient and whether its weight trains."""
    seen = _rows_seen(model, batch_size, seq_len, vocab)
    wider = _rows_seen(model, batch_size + 1, seq_len, vocab)
    longer = _rows_seen(model, batch_size, seq_len + 1, vocab)
    costs = []
    modules = dict(model.named_modules())
    for name, (rows, input_grad) in seen.items():
        module = modules[name]
        i, o = _shape(module)
        trains = module.weight.requires_grad
        cost = 2 * i * o * (1 + int(input_grad) + int(trains))
        per_sequence = wider.get(name, (rows,))[0] - rows  # t·S + s
        extra_token = longer.get(name, (rows,))[0] - rows  # t·B
        t, rest = divmod(extra_token, batch_size)
        s = per_sequence - t * seq_len
        c = rows - batch_size * per_sequence
        if rest or t < 0 or s < 0 or c < 0:
            raise ValueError(
                f"{name}: its rows ({rows} for a probe of {batch_size}x{seq_len}, {per_sequence} more for a "
                f"sequence more, {extra_token} for a token more) are neither per token, per sequence nor "
                "per step"
            )
        if t:
            costs.append(LinearCost(name, "token", t * cost))
        if s:
            costs.append(LinearCost(name, "sequence", s * cost))
        if c:
            costs.append(LinearCost(name, "step", c * cost))
    return costs


class TrainFlops:
    """FLOPs of a training step on a batch, from its attention mask (on the host: no device sync)."""

    def __init__(self, model: nn.Module, vocab: int = 100):
        config = model.config
        self.layers = config.num_hidden_layers
        self.hidden = config.hidden_size
        costs = probe_linear_costs(model, vocab=vocab)
        self.per_token = sum(c.flops_per_row for c in costs if c.per == "token")
        self.per_sequence = sum(c.flops_per_row for c in costs if c.per == "sequence")

    def from_sums(self, tokens: int, squared_lengths: int, sequences: int) -> int:
        """FLOPs of sequences with these real token counts: the Linears per token and per sequence, and
        attention's QK^T and AV, 2·l²·d each forward and twice that backward, summed over the sequences."""
        attention = 3 * self.layers * 2 * 2 * squared_lengths * self.hidden
        return self.per_token * tokens + self.per_sequence * sequences + attention

    def attention(self, lengths: list[int]) -> int:
        return self.from_sums(0, sum(n * n for n in lengths), 0)

    def batch(self, attention_mask: torch.Tensor) -> int:
        lengths = attention_mask.sum(dim=1).tolist()
        return self.from_sums(sum(lengths), sum(n * n for n in lengths), len(lengths))


def gemm_peak(
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    n: int | None = None,
    seconds: float = 1.0,
    cache_file: Path | None = None,
) -> float:
    """The device's measured matmul throughput (FLOP/s): the best of repeated n x n matmuls, fp32 on a
    CPU, bf16 on a GPU. Measured once per process and device; with `cache_file` (a JSON shared by a
    sweep's jobs), once per machine: keyed by host, device name, threads, torch version, dtype and n
    (delete the file to measure again)."""
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    n = n or (8192 if device.type == "cuda" else 1024)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    key = f"{socket.gethostname()}|{name}|{torch.get_num_threads()}|{torch.__version__}|{dtype}|{n}"
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    saved = read_json(cache_file)
    if key in saved:
        _PEAK_CACHE[key] = saved[key]
        return saved[key]
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):  # warm up (threads, caches, cuBLAS heuristics)
        a @ b
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        sync()
        best = max(best, 5 * 2 * n**3 / (time.perf_counter() - start))
    _PEAK_CACHE[key] = best
    if cache_file is not None:  # read-modify-replace: concurrent jobs may each write; any result is fine
        atomic_write(cache_file, json.dumps({**read_json(cache_file), key: best}, indent=1))
    return best


def read_json(path: Path | None) -> dict:
    try:
        return json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return {}
