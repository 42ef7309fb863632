"""Causal language modelling data (WikiText-2): load, split, tokenize, concatenate and pack into
fixed blocks, cached on disk like the classification data."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict
from torch.utils.data import DataLoader

from peft_bench.config import LMDatasetConfig
from peft_bench.data.base import (
    BaseDataModule,
    EpochSeededSampler,
    RawData,
    cache_key,
    check_text,
)
from peft_bench.errors import DataError

log = logging.getLogger(__name__)


class CausalLMDataModule(BaseDataModule):
    def __init__(self, dataset: LMDatasetConfig, tokenizer, cache_dir: str, seed: int):
        super().__init__()
        self.cfg = dataset
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:  # padding only ever fills the last, shorter block
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.cache_root = Path(cache_dir) / "tokenized"
        self.seed = seed
        self.data: DatasetDict | None = None
        self.info: dict = {}

    def validate(self, ds: Dataset, where: str) -> tuple[Dataset, bool]:
        return Dataset.from_dict({self.cfg.text_field: check_text(ds, self.cfg.text_field, where)}), False

    def prepare_data(self) -> None:
        if self.data is not None:
            return
        raw = RawData(self.cfg, self.validate)
        recipe = {
            "task": "causal_lm",
            "block_size": self.cfg.block_size,
            "text": self.cfg.text_field,
            "split": [self.cfg.val_fraction, self.cfg.test_fraction],
        }

        def build() -> tuple[DatasetDict, dict]:
            splits, how = split_lm(raw.splits, self.cfg)
            packed = DatasetDict(
                {
                    name: pack(tokenize_concat(ds, self.tokenizer, self.cfg.text_field), self.cfg.block_size)
                    for name, ds in splits.items()
                }
            )
            for name, ds in packed.items():
                if len(ds) == 0:
                    raise DataError(
                        f"dataset {self.cfg.name}: split '{name}' ({how[name]}) has no tokens: give it text"
                    )
            return packed, {
                "splits": how,
                "sizes": {k: len(v) for k, v in packed.items()},
                "tokens": {k: sum(v["length"]) for k, v in packed.items()},
                "block_size": self.cfg.block_size,
            }

        self.load_or_build(raw, cache_key(self.cfg.name, self.tokenizer, raw.fingerprint, recipe), build)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Stack blocks; the one shorter last block is padded, its padding masked out of the loss."""
        longest = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), longest), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[i, : len(r["input_ids"])] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
        if "example" in rows[0]:  # a test block's row, for predictions.parquet
            batch["example"] = torch.tensor([r["example"] for r in rows])
        return batch

    def train_dataloader(self) -> DataLoader:
        sampler = EpochSeededSampler(len(self.data["train"]), self.seed)
        sampler = self.train_sampler(sampler, self.cfg.batch_size)
        return self._loader("train", self.per_process(self.cfg.batch_size), sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        sampler = self.eval_sampler(self.data["validation"])
        return self._loader("validation", self.cfg.eval_batch_size, sampler=sampler)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.cfg.eval_batch_size, sampler=self.eval_sampler(self.data["test"]))

    def _loader(self, split: str, batch_size: int, **kwargs) -> DataLoader:
        ds = self.data[split].remove_columns("length")
        if split == "test":  # each block's row travels with it, for predictions.parquet
            ds = ds.add_column("example", list(range(len(ds))))
        return self.loader(ds, batch_size, **kwargs)


def split_lm(raw: DatasetDict, cfg: LMDatasetConfig) -> tuple[DatasetDict, dict[str, str]]:
    """Given splits are kept; missing ones are the *last* rows of train, in order (contiguous text,
    so held-out articles are not interleaved with training ones)."""
    if "train" not in raw:
        raise DataError(f"dataset {cfg.name}: no 'train' split (got {sorted(raw)})")
    out = {s: raw[s] for s in ("validation", "test") if s in raw}
    how = {s: f"given split '{s}'" for s in out}
    train, how["train"] = raw["train"], "given split 'train'"
    missing = [s for s in ("validation", "test") if s not in out]
    if missing:
        n = len(train)
        fractions = {"validation": cfg.val_fraction, "test": cfg.test_fraction}
        end = n
        for s in reversed(missing):  # test is the very end, validation just before it
            start = end - int(round(fractions[s] * n))
            out[s] = train.select(range(start, end))
            how[s] = f"rows {start}..{end - 1} of 'train' ({fractions[s]:.0%}, contiguous)"
            end = start
        train = train.select(range(end))
        how["train"] = f"rows 0..{end - 1} of 'train'"
    return DatasetDict(train=train, **out), how


def tokenize_concat(ds: Dataset, tokenizer, text_field: str) -> list[int]:
    """All texts tokenized and concatenated in order (no special tokens: WikiText lines carry '\\n')."""
    enc = tokenizer(list(ds[text_field]), add_special_tokens=False)["input_ids"]
    return [t for ids in enc for t in ids]


def pack(tokens: list[int], block_size: int) -> Dataset:
    """Consecutive blocks of block_size tokens; the remainder is a last, shorter block, so every token
    appears exactly once."""
    blocks = [tokens[i : i + block_size] for i in range(0, len(tokens), block_size)]
    return Dataset.from_dict({"input_ids": blocks, "length": [len(b) for b in blocks]})
