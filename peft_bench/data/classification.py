"""Text classification data: the raw splits (checked row by row), missing splits carved from train,
tokenized once into the shared on-disk cache, served as dynamically padded (length-grouped) batches."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from peft_bench.config import ClassificationDatasetConfig
from peft_bench.data.base import (
    BaseDataModule,
    EpochSeededSampler,
    LengthGroupedSampler,
    RawData,
    cache_key,
    check_labels,
    check_text,
    overlap_warnings,
    split_overlap,
)
from peft_bench.errors import DataError

log = logging.getLogger("peft_bench")


class TextClassificationDataModule(BaseDataModule):
    def __init__(self, dataset: ClassificationDatasetConfig, tokenizer, cache_dir: str, seed: int):
        super().__init__()
        self.cfg = dataset
        self.tokenizer = tokenizer
        self.cache_root = Path(cache_dir) / "tokenized"
        self.seed = seed
        self.data: DatasetDict | None = None
        self.info: dict = {}  # how the splits were made, sizes, cache hit or miss: goes to results.json
        self.collate = DataCollatorWithPadding(tokenizer)

    # ------------------------------------------------------------------ loading and caching

    def validate(self, ds: Dataset, where: str) -> tuple[Dataset, bool]:
        """One file's rows: text strings and integer labels in range, reduced to those two columns."""
        cfg = self.cfg
        texts = check_text(ds, cfg.text_field, where)
        labels, unlabelled = check_labels(ds, cfg.label_field, cfg.num_labels, where)
        if unlabelled:
            return ds, True
        return Dataset.from_dict({cfg.text_field: texts, cfg.label_field: labels}), False

    def recipe(self) -> dict:
        cfg = self.cfg
        return {
            "task": "classification",
            "max_length": cfg.max_length,
            "text": cfg.text_field,
            "label": cfg.label_field,
            "num_labels": cfg.num_labels,
            "split": [cfg.val_fraction, cfg.test_fraction, cfg.split_seed, cfg.max_train_examples],
        }

    def prepare_data(self) -> None:
        if self.data is not None:
            return
        raw = RawData(self.cfg, self.validate)

        def build() -> tuple[DatasetDict, dict]:
            splits, how = make_splits(raw.splits, self.cfg, raw.unlabelled)
            overlap = split_overlap(splits, [self.cfg.text_field])  # on the raw text, before truncation
            tokenized = self.tokenize(splits)
            counts = {k: label_counts(v) for k, v in tokenized.items()}
            sizes = {k: len(v) for k, v in tokenized.items()}
            return tokenized, {
                "splits": how,
                "sizes": sizes,
                "label_counts": counts,
                "overlap": overlap,
                "warnings": class_warnings(counts) + overlap_warnings(overlap, sizes, how),
            }

        key = cache_key(self.cfg.name, self.tokenizer, raw.fingerprint, self.recipe())
        self.load_or_build(raw, key, build, needs=("overlap",))  # entries before the overlap count lack it
        for warning in self.info.get("warnings", []):
            log.warning("data: %s", warning)

    def tokenize(self, splits: DatasetDict) -> DatasetDict:
        cfg, tok = self.cfg, self.tokenizer

        def encode(batch):
            enc = tok(batch[cfg.text_field], truncation=True, max_length=cfg.max_length)
            enc["labels"] = batch[cfg.label_field]
            enc["length"] = [len(ids) for ids in enc["input_ids"]]
            return enc

        return DatasetDict(
            {
                name: ds.map(
                    encode,
                    batched=True,
                    batch_size=1000,
                    remove_columns=ds.column_names,
                    keep_in_memory=True,
                    desc=f"tokenize {name}",
                )
                for name, ds in splits.items()
            }
        )

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()

    # ------------------------------------------------------------------ loaders

    def train_dataloader(self) -> DataLoader:
        ds = self.data["train"]
        if self.cfg.group_by_length:
            sampler = LengthGroupedSampler(list(ds["length"]), self.cfg.batch_size, self.seed)
        else:
            sampler = EpochSeededSampler(len(ds), self.seed)
        sampler = self.train_sampler(sampler, self.cfg.batch_size)
        return self._loader(ds, self.per_process(self.cfg.batch_size), sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        # Longest first: similar lengths share a batch (little padding), and an OOM shows on batch one.
        ds = self.data[split].sort("length", reverse=True)
        return self._loader(ds, self.cfg.eval_batch_size, sampler=self.eval_sampler(ds))

    def _loader(self, ds, batch_size: int, **kwargs) -> DataLoader:
        return DataLoader(
            ds.remove_columns("length"),
            batch_size=batch_size,
            collate_fn=self.collate,
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=self.generator(),
            **kwargs,
        )


# ---------------------------------------------------------------------- helpers


def make_splits(
    raw: DatasetDict, cfg: ClassificationDatasetConfig, unlabelled: list[str] | tuple = ()
) -> tuple[DatasetDict, dict[str, str]]:
    """train / validation / test: the given (checked, labelled) splits kept; missing ones carved from
    train by a seeded split. Returns the splits and how each was made."""
    if "train" not in raw:
        raise DataError(f"dataset {cfg.name}: no 'train' split (got {sorted(raw)})")
    kept = {s: raw[s] for s in ("validation", "test") if s in raw}
    how = {s: f"given split '{s}'" for s in kept}
    missing = [s for s in ("validation", "test") if s not in kept]
    train = raw["train"]
    how["train"] = "given split 'train'"
    if missing:
        fraction = {"validation": cfg.val_fraction, "test": cfg.test_fraction}
        held = sum(fraction[s] for s in missing)
        try:
            parts = train.train_test_split(test_size=held, seed=cfg.split_seed)
            train, rest = parts["train"], parts["test"]
            if len(missing) == 2:
                halves = rest.train_test_split(test_size=fraction["test"] / held, seed=cfg.split_seed)
                kept["validation"], kept["test"] = halves["train"], halves["test"]
            else:
                kept[missing[0]] = rest
        except ValueError:  # datasets: a part would be empty
            raise DataError(
                f"dataset {cfg.name}: 'train' has {len(raw['train'])} rows, too few to carve "
                f"{' and '.join(missing)} "
                f"from it ({held:.0%}); give more rows, or those splits as files "
                "(dataset.data_files={train: ..., validation: ..., test: ...})"
            ) from None
        for s in missing:
            given = " (the given one is unlabelled: every label -1)" if s in unlabelled else ""
            how[s] = f"{fraction[s]:.0%} of 'train', seeded split (split_seed={cfg.split_seed}){given}"
        how["train"] = f"'train' minus the {held:.0%} held out (split_seed={cfg.split_seed})"
    if cfg.max_train_examples is not None and cfg.max_train_examples < len(train):
        train = train.shuffle(seed=cfg.split_seed).select(range(cfg.max_train_examples))
        how["train"] += f", first {cfg.max_train_examples} after a seeded shuffle"
    return DatasetDict(train=train, validation=kept["validation"], test=kept["test"]), how


def label_counts(ds) -> dict[str, int]:
    labels = list(ds["labels"])
    return {str(y): labels.count(y) for y in sorted(set(labels))}


def class_warnings(counts: dict[str, dict[str, int]]) -> list[str]:
    """A split with one class makes its accuracy and F1 meaningless (1.0 or 0.0 whatever the model); a
    class that validation or test holds but train does not is one the model never learnt."""
    out = []
    for split, c in counts.items():
        if len(c) == 1:
            ((label, n),) = c.items()
            what = (
                "the model learns nothing to tell classes apart"
                if split == "train"
                else "its scores say nothing"
            )
            out.append(f"single-class {split} split: all {n} rows have label {label}; {what}")
    for split in ("validation", "test"):
        unseen = [label for label in counts.get(split, {}) if label not in counts.get("train", {})]
        if unseen:
            rows = sum(counts[split][label] for label in unseen)
            out.append(
                f"class{'es' * (len(unseen) > 1)} {', '.join(unseen)} in {split} ({rows} of "
                f"{sum(counts[split].values())} rows) but not in train: the model never learnt "
                f"{'them' if len(unseen) > 1 else 'it'}, so those rows count against {split}'s scores"
            )
    return out
