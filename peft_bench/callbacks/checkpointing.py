"""Checkpoints a run can resume from without mixing two runs: `last.ckpt` is always the latest state
(every validation, every epoch end and every N optimizer steps), and every checkpoint carries a
fingerprint of what it was trained on (the keys that define the run and the data's cache key), which
a resume must match."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn

from peft_bench.config import schema_defaults
from peft_bench.errors import PeftBenchError
from peft_bench.io import load_checkpoint
from peft_bench.resolvers import run_identity
from peft_bench.results import flatten

FINGERPRINT_KEY = "peft_bench_fingerprint"
LAST = "last.ckpt"


def fingerprint(config: dict, data_key: str | None, resolved: dict | None = None) -> dict:
    """What a checkpoint was trained on: the keys that define the run (resolvers.KEY_ROLES; flattened,
    JSON values), what the run resolved on its machine (`resolved.precision`, `resolved.device`: the
    precision and device that `trainer.precision=null` and `accelerator=auto` became) and the tokenized
    data's cache key (the data's content, layout and recipe; file paths may move)."""
    flat = run_identity(flatten(config))
    flat.update({f"resolved.{k}": v for k, v in (resolved or {}).items()})
    return {"config": json.loads(json.dumps(flat, default=str)), "data": data_key}


ABSENT = "<absent>"


def differences(saved: dict, current: dict, data: bool = True, recorded: dict | None = None) -> list[str]:
    """`key: checkpoint value -> this run's value` for every key that differs (the data too if `data`).
    Both sides go through today's table (resolvers.KEY_ROLES). A key the saved side lacks (it was
    written by an older peft_bench, which counted fewer keys) takes the value in `recorded` (the config
    that attempt wrote into its results.json), else the schema default; a `resolved.*` key it lacks is
    not compared (not recorded then)."""
    out = []
    a, b = run_identity(saved.get("config", {})), run_identity(current.get("config", {}))
    older = run_identity(flatten(recorded)) if recorded else {}
    for key in sorted(set(a) | set(b)):
        if key not in a:
            if key.startswith("resolved."):
                continue
            a[key] = older.get(key, schema_defaults().get(key, ABSENT))
        if a[key] != b.get(key, ABSENT):
            out.append(f"{key}: {a[key]!r} -> {b.get(key, ABSENT)!r}")
    if data and saved.get("data") != current.get("data"):
        out.append(f"data (tokenized cache key): {saved.get('data')} -> {current.get('data')}")
    return out


def check_resume(
    ckpt: dict, current: dict, path: Path, data: bool = True, recorded: dict | None = None
) -> None:
    """Refuse to resume from a checkpoint of another configuration (or one without a fingerprint),
    naming the keys that differ and the ways out. `recorded`: the config the interrupted attempt wrote
    into results.json (the values of keys an older fingerprint did not hold)."""
    saved = ckpt.get(FINGERPRINT_KEY)
    diff = (
        ["the checkpoint has no fingerprint (written by an older peft_bench)"]
        if saved is None
        else differences(saved, current, data, recorded)
    )
    if diff:
        lines = "\n".join(f"  - {d}" for d in diff)
        raise PeftBenchError(
            f"{path} was trained with another configuration than this run:\n{lines}\n"
            "Resuming would mix two runs. Start this configuration over in the same folder with resume=false "
            "(the old checkpoints are removed), run it in another folder (hydra.run.dir=, hydra.sweep.dir=), "
            "or run the original command again to finish that run."
        )


# What torch.load raises on a truncated or foreign file (not MemoryError, not a permission error).
CORRUPT = (
    RuntimeError,
    EOFError,
    ValueError,
    KeyError,
    IndexError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
)


def read_checkpoint(path: Path) -> dict:
    """The checkpoint as a dict (memory-mapped: no second copy of its tensors); raises one of CORRUPT if
    it is truncated or not a checkpoint, UnsafeCheckpoint if reading it could run code."""
    ckpt = load_checkpoint(path, mmap=True)
    if not isinstance(ckpt, dict) or "global_step" not in ckpt or "state_dict" not in ckpt:
        raise ValueError("not a Lightning checkpoint (no global_step / state_dict)")
    return ckpt


class Fingerprint(L.Callback):
    """Writes the run's fingerprint into every checkpoint it saves."""

    def __init__(self, value: dict):
        self.value = value

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[FINGERPRINT_KEY] = self.value


class LatestCheckpoint(Checkpoint):
    """`<dirpath>/last.ckpt`, always the latest state: saved after every validation during training, at
    every epoch end and every `every_n_steps` optimizer steps (None: only those), written atomically by
    the trainer's CheckpointIO. Lightning's ModelCheckpoint(save_last=True) advances last.ckpt only when
    its monitored metric improves, so a killed run went back to its best epoch and redid the rest."""

    def __init__(self, dirpath: Path, every_n_steps: int | None = None):
        self.path = Path(dirpath) / LAST
        self.every_n_steps = every_n_steps
        self._saved_step: int | None = None

    def _save(self, trainer: L.Trainer) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        trainer.save_checkpoint(self.path)
        self._saved_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps and step and step % self.every_n_steps == 0 and step != self._saved_step:
            self._save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._saved_step != trainer.global_step:  # max_steps reached mid-epoch: keep the final state
            self._save(trainer)
