"""Text classification and regression data, one text or a pair of texts per example: the raw splits
(checked row by row), missing splits carved from train, tokenized once into the shared on-disk cache
(pairs as pairs, truncated longest first), served as dynamically padded (length-grouped) batches."""

from __future__ import annotations

import logging
from pathlib import Path

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
    check_scores,
    check_text,
    overlap_warnings,
    split_names,
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

    @property
    def text_fields(self) -> list[str]:
        """The text of an example: one field, or a pair's two."""
        return [self.cfg.text_field, *([self.cfg.text_pair_field] if self.cfg.text_pair_field else [])]

    @property
    def regression(self) -> bool:
        return self.cfg.task == "regression"

    def validate(self, ds: Dataset, where: str) -> tuple[Dataset, bool]:
        """One file's rows: text strings (both of a pair) and labels (integer classes in range, or finite
        numbers for regression), reduced to those columns."""
        cfg = self.cfg
        settings = ("text_field", "text_pair_field")
        texts = {f: check_text(ds, f, where, s) for f, s in zip(self.text_fields, settings, strict=False)}
        if self.regression:
            labels, unlabelled = check_scores(ds, cfg.label_field, where)
        else:
            labels, unlabelled = check_labels(ds, cfg.label_field, cfg.num_labels, where)
        if unlabelled:
            return ds, True
        return Dataset.from_dict({**texts, cfg.label_field: labels}), False

    def recipe(self) -> dict:
        cfg = self.cfg
        recipe = {
            "task": cfg.task,
            "max_length": cfg.max_length,
            "text": cfg.text_field,
            "label": cfg.label_field,
            "num_labels": cfg.num_labels,
            "split": [cfg.val_fraction, cfg.test_fraction, cfg.split_seed, cfg.max_train_examples],
        }
        if cfg.text_pair_field:  # (absent for one text: cache entries of single-text data keep their key)
            recipe["pair"] = cfg.text_pair_field
        if cfg.extra_test_splits:
            recipe["extra_tests"] = list(cfg.extra_test_splits)
        return recipe

    def prepare_data(self) -> None:
        if self.data is not None:
            return
        raw = RawData(self.cfg, self.validate)

        def build() -> tuple[DatasetDict, dict]:
            splits, how = make_splits(raw.splits, self.cfg, raw.unlabelled)
            overlap = split_overlap(splits, self.text_fields)  # on the raw text, before truncation
            tokenized = self.tokenize(splits)
            sizes = {k: len(v) for k, v in tokenized.items()}
            info = {"splits": how, "sizes": sizes, "overlap": overlap}
            warnings = overlap_warnings(overlap, sizes, how)
            if self.regression:
                info["label_stats"] = {k: label_stats(v) for k, v in tokenized.items()}
            else:
                info["label_counts"] = counts = {k: label_counts(v) for k, v in tokenized.items()}
                warnings = class_warnings(counts) + warnings
            return tokenized, {**info, "warnings": warnings}

        key = cache_key(self.cfg.name, self.tokenizer, raw.fingerprint, self.recipe())
        self.load_or_build(raw, key, build, needs=("overlap",))  # entries before the overlap count lack it
        for warning in self.info.get("warnings", []):
            log.warning("data: %s", warning)

    def tokenize(self, splits: DatasetDict) -> DatasetDict:
        cfg, tok = self.cfg, self.tokenizer

        pair = cfg.text_pair_field

        def encode(batch):
            enc = tok(
                batch[cfg.text_field],
                batch[pair] if pair else None,
                truncation="longest_first" if pair else True,
                max_length=cfg.max_length,
            )
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

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """The test split, then each extra labelled test split (dataset.extra_test_splits, in order)."""
        splits = [s for s in split_names(self.cfg) if s.startswith("test")]
        loaders = [self._eval_loader(s) for s in splits]
        return loaders[0] if len(loaders) == 1 else loaders

    def _eval_loader(self, split: str) -> DataLoader:
        ds = self.data[split]
        if split.startswith("test"):  # each example's row travels with it, for predictions.parquet
            ds = ds.add_column("example", list(range(len(ds))))
        # Longest first: similar lengths share a batch (little padding), and an OOM shows on batch one.
        ds = ds.sort("length", reverse=True)
        return self._loader(ds, self.cfg.eval_batch_size, sampler=self.eval_sampler(ds))

    def _loader(self, ds, batch_size: int, **kwargs) -> DataLoader:
        return self.loader(ds.remove_columns("length"), batch_size, **kwargs)


# ---------------------------------------------------------------------- helpers


def make_splits(
    raw: DatasetDict, cfg: ClassificationDatasetConfig, unlabelled: list[str] | tuple = ()
) -> tuple[DatasetDict, dict[str, str]]:
    """train / validation / test: the given (checked, labelled) splits kept; missing ones carved from
    train by a seeded split. Returns the splits and how each was made."""
    if "train" not in raw:
        raise DataError(f"dataset {cfg.name}: no 'train' split (got {sorted(raw)})")
    extra = [s for s in split_names(cfg) if s not in ("train", "validation", "test")]
    absent = [s for s in extra if s not in raw]
    if absent:
        raise DataError(
            f"dataset {cfg.name}: no labelled split {', '.join(absent)} (dataset.extra_test_splits="
            f"{list(cfg.extra_test_splits)}): give it as dataset.data_files.{absent[0]}=..., or score "
            "test alone with dataset.extra_test_splits=[]"
        )
    kept = {s: raw[s] for s in ("validation", "test", *extra) if s in raw}
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
    out = DatasetDict(train=train, validation=kept["validation"], test=kept["test"])
    for s in extra:
        out[s] = kept[s]
    return out, how


def label_stats(ds) -> dict[str, float]:
    """A real-valued label's spread over a split (regression)."""
    labels = list(ds["labels"])
    if not labels:
        return {}
    mean = sum(labels) / len(labels)
    std = (sum((y - mean) ** 2 for y in labels) / len(labels)) ** 0.5
    return {"mean": mean, "std": std, "min": min(labels), "max": max(labels)}


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
