"""The pruning callback: the cubic schedule, exact mask sizes per criterion, masks that hold after
every optimizer step, and masks that travel in the checkpoint and hold after a resume."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from peft_bench.callbacks.pruning import GradualPruning, cubic_sparsity, masks_for
from peft_bench.checks import check_config
from peft_bench.data.classification import TextClassificationDataModule
from peft_bench.models import load_tokenizer
from tests.helpers import compose


def test_cubic_schedule_by_hand():
    # s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 with t0 = 10, n dt = 100, s_i = 0, s_f = 0.8
    assert cubic_sparsity(5, 0.8, 10, 110) == 0.0
    assert cubic_sparsity(10, 0.8, 10, 110) == pytest.approx(0.0)
    assert cubic_sparsity(60, 0.8, 10, 110) == pytest.approx(0.8 - 0.8 * 0.5**3)
    assert cubic_sparsity(35, 0.8, 10, 110, initial=0.2) == pytest.approx(0.8 - 0.6 * 0.75**3)
    assert cubic_sparsity(110, 0.8, 10, 110) == 0.8 and cubic_sparsity(500, 0.8, 10, 110) == 0.8


def weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.lora_A": torch.randn(8, 32, generator=g), "a.lora_B": torch.randn(32, 8, generator=g) * 0.01}


def test_global_magnitude_drops_exactly_k_smallest_over_all_matrices():
    w = weights()
    masks = masks_for(w, 0.5, "magnitude_global")
    dropped = torch.cat([w[n][~m].abs() for n, m in masks.items()])
    kept = torch.cat([w[n][m].abs() for n, m in masks.items()])
    assert dropped.numel() == 256 and dropped.max() <= kept.min()
    assert (~masks["a.lora_B"]).sum() > 200  # B is 100x smaller: the global threshold takes it first


def test_per_matrix_and_per_row_criteria_hit_the_target_in_each():
    w = weights()
    for n, m in masks_for(w, 0.75, "magnitude_per_matrix").items():
        assert (~m).sum() == 0.75 * m.numel(), n
    for n, m in masks_for(w, 0.75, "topk_per_row").items():
        assert ((~m).sum(1) == 0.75 * m.shape[1]).all(), n
        rows = w[n].abs()
        assert (
            torch.where(m, rows, torch.inf).min(1).values >= torch.where(~m, rows, -torch.inf).max(1).values
        ).all()


def test_ties_do_not_overshoot_the_target():
    w = {"x.lora_B": torch.full((10, 10), 0.001)}  # early Adam steps give many equal |w|
    assert (~masks_for(w, 0.3, "magnitude_global")["x.lora_B"]).sum() == 30


class ZeroWatch(L.Callback):
    """Before every training step: every masked weight is exactly zero."""

    def __init__(self, pruning: GradualPruning):
        self.pruning, self.checked = pruning, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        for name, p in pl_module.prunable_parameters().items():
            if name in self.pruning.masks:
                assert (p[~self.pruning.masks[name]] == 0).all(), name
                self.checked += 1


def sparse_setup(*extra: str):
    from peft_bench.methods.sparse_lora import SparseLoRAModule

    run = check_config(
        compose(
            [
                "model=tiny",
                "dataset=demo",
                "method=sparse_lora",
                "sparsity=0.6",
                "method.pruning.every_n_steps=3",
                "method.pruning.start_step=0",
                "method.pruning.end_step=9",
                "method.pruning.criterion=magnitude_global",
                *extra,
            ]
        )
    )
    dm = TextClassificationDataModule(run.dataset, load_tokenizer(run.model), run.cache_dir, seed=0)
    return SparseLoRAModule(method=run.method, model=run.model, dataset=run.dataset), dm


def trainer(tmp_path, epochs: int, *callbacks) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        limit_train_batches=6,
        limit_val_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True), *callbacks],
    )


def test_masks_hold_after_every_step_travel_in_the_checkpoint_and_survive_a_resume(tmp_path):
    module, dm = sparse_setup()
    watch = ZeroWatch(module.pruning)
    trainer(tmp_path, 2, watch).fit(module, dm)  # 12 steps: prunes at 3, 6, 9 (at 0 the schedule is 0)
    assert [s for s, _ in module.pruning.history] == [3, 6, 9] and watch.checked > 0
    zeros = sum(int((p == 0).sum()) for p in module.prunable_parameters().values())
    total = sum(p.numel() for p in module.prunable_parameters().values())
    assert zeros == round(0.6 * total)

    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("GradualPruning"))
    assert state["current"] == 0.6 and len(state["history"]) == 3
    for name, mask in state["masks"].items():
        assert (ckpt["state_dict"][name][~mask] == 0).all()  # the saved weights obey the saved masks

    resumed, dm2 = sparse_setup()
    watch2 = ZeroWatch(resumed.pruning)
    trainer(tmp_path, 3, watch2).fit(resumed, dm2, ckpt_path=tmp_path / "last.ckpt")
    assert resumed.pruning.history[:3] == module.pruning.history  # restored, not pruned from step 0 again
    assert watch2.checked > 0  # the restored masks held from the first resumed step
    for name, p in resumed.prunable_parameters().items():
        assert torch.equal(
            resumed.pruning.masks[name].cpu(), state["masks"][name] & resumed.pruning.masks[name].cpu()
        )
        assert (p[~state["masks"][name].to(p.device)] == 0).all()
