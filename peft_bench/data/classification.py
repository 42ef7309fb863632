"""Text classification data: load (Hub, local files or the demo generator), build missing splits,
tokenize once into an on-disk cache shared by a sweep's jobs, and serve dynamically padded batches."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import lightning as L
import torch
from datasets import DatasetDict, load_dataset, load_from_disk
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from peft_bench.config import (
    ClassificationDatasetConfig,
    DatasetConfig,
    PeftBenchError,
    data_file_paths,
    prepare_command,
)
from peft_bench.data.demo import build_demo

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when tokenization or split logic changes, to invalidate old caches
BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


class EpochSeededSampler(torch.utils.data.Sampler):
    """A random order that depends only on (seed, epoch): a run resumed mid-training sees the same
    order for its remaining epochs as an uninterrupted one. Lightning calls set_epoch each epoch."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist())

    def __len__(self) -> int:
        return self.size


class LengthGroupedSampler(EpochSeededSampler):
    """Batches of similar length (little padding), in an order that depends only on (seed, epoch).
    Each epoch: a random permutation cut into megabatches of `megabatch` batches, each sorted by
    length; the full batches then go in random order, the epoch's longest first (an out-of-memory
    shows at step one), the one short batch last. HF's LengthGroupedSampler, but seeded per epoch
    (a resumed run sees the same order) and with batches shuffled across megabatches."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, megabatch: int = 50):
        super().__init__(len(lengths), seed)
        self.lengths, self.batch_size, self.megabatch = torch.as_tensor(lengths), batch_size, megabatch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        batches = []
        for chunk in torch.randperm(self.size, generator=g).split(self.megabatch * self.batch_size):
            batches += chunk[torch.argsort(self.lengths[chunk], descending=True, stable=True)].split(self.batch_size)
        short = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        if not batches:
            return iter(torch.cat(short).tolist())
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        longest = max(range(len(batches)), key=lambda i: int(self.lengths[batches[i]].max()))
        batches[0], batches[longest] = batches[longest], batches[0]
        return iter(torch.cat(batches + short).tolist())


class TextClassificationDataModule(L.LightningDataModule):
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

    def prepare_data(self) -> None:
        if self.data is not None:
            return
        raw = RawData(self.cfg)
        cfg = self.cfg
        recipe = {"max_length": cfg.max_length, "text": cfg.text_field, "label": cfg.label_field,
                  "split": [cfg.val_fraction, cfg.test_fraction, cfg.split_seed, cfg.max_train_examples]}
        key = cache_key(cfg.name, self.tokenizer, raw.fingerprint, recipe)
        path = self.cache_root / key
        if (path / "dataset_dict.json").is_file():
            self.data = load_from_disk(str(path))
            self.info = json.loads((path / "info.json").read_text())
            self.info["cache"] = "hit"
            log.info("tokenized data: cache hit %s", path)
            return
        splits, how = make_splits(raw.splits, self.cfg)
        tokenized = self.tokenize(splits)
        self.info = {"source": raw.source, "splits": how, "sizes": {k: len(v) for k, v in tokenized.items()},
                     "label_counts": {k: label_counts(v) for k, v in tokenized.items()}, "cache_key": key}
        save_atomically(tokenized, self.info, path)
        self.data = load_from_disk(str(path))
        self.info["cache"] = "miss"
        log.info("tokenized data: cache miss, wrote %s", path)

    def tokenize(self, splits: DatasetDict) -> DatasetDict:
        cfg, tok = self.cfg, self.tokenizer

        def encode(batch):
            enc = tok(batch[cfg.text_field], truncation=True, max_length=cfg.max_length)
            enc["labels"] = batch[cfg.label_field]
            enc["length"] = [len(ids) for ids in enc["input_ids"]]
            return enc

        return DatasetDict({
            name: ds.map(encode, batched=True, batch_size=1000, remove_columns=ds.column_names,
                         keep_in_memory=True, desc=f"tokenize {name}")
            for name, ds in splits.items()
        })

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()

    # ------------------------------------------------------------------ loaders

    def train_dataloader(self) -> DataLoader:
        ds = self.data["train"]
        if self.cfg.group_by_length:
            sampler = LengthGroupedSampler(list(ds["length"]), self.cfg.batch_size, self.seed)
            return self._loader(ds, self.cfg.batch_size, sampler=sampler)
        return self._loader(ds, self.cfg.batch_size, sampler=EpochSeededSampler(len(ds), self.seed))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        # Longest first: similar lengths share a batch (little padding), and an OOM shows on batch one.
        ds = self.data[split].sort("length", reverse=True)
        return self._loader(ds, self.cfg.eval_batch_size)

    def _loader(self, ds, batch_size: int, **kwargs) -> DataLoader:
        return DataLoader(ds.remove_columns("length"), batch_size=batch_size, collate_fn=self.collate,
                          num_workers=self.cfg.num_workers, persistent_workers=self.cfg.num_workers > 0,
                          pin_memory=torch.cuda.is_available(), **kwargs)


# ---------------------------------------------------------------------- helpers


def load_raw(cfg: DatasetConfig) -> tuple[DatasetDict, str, str]:
    """(raw splits, a fingerprint of the data's content, a description of the source)."""
    raw = RawData(cfg)
    return raw.splits, raw.fingerprint, raw.source


class RawData:
    """A dataset config's raw splits, with a fingerprint of their content and a description of the
    source. Local files are fingerprinted by their bytes and the generator by its settings, without
    parsing anything: a job that finds its tokenized data cached never loads the raw text."""

    def __init__(self, cfg: DatasetConfig):
        self.cfg = cfg
        self._splits: DatasetDict | None = None
        if cfg.data_files is not None:
            self.files = cfg.data_files if isinstance(cfg.data_files, dict) else {"train": cfg.data_files}
            paths = data_file_paths(self.files)
            self.builder = builder_for(paths[0])
            digest = hashlib.sha256()
            for p in paths:
                digest.update(Path(p).read_bytes())
            self.fingerprint, self.source = f"files:{digest.hexdigest()}", f"local files {json.dumps(self.files)}"
        elif cfg.generator == "demo":
            self.fingerprint = f"demo-v1:{cfg.generator_size}:{cfg.split_seed}"
            self.source = f"generated demo sentences (size {cfg.generator_size}, seed {cfg.split_seed})"
        else:  # the Hub: its fingerprint comes with the (cached) download
            self._splits = load_hub(cfg)
            fingerprint = ":".join(f"{k}={v._fingerprint}" for k, v in sorted(self._splits.items()))
            self.fingerprint, self.source = f"hub:{cfg.hub_id}:{cfg.hub_config}:{fingerprint}", f"hub {cfg.hub_id}"

    @property
    def splits(self) -> DatasetDict:
        if self._splits is None:
            if self.cfg.data_files is not None:
                self._splits = load_dataset(self.builder, data_files=self.files)
            else:
                self._splits = build_demo(self.cfg.generator_size, self.cfg.split_seed)
        return self._splits


def load_hub(cfg: DatasetConfig) -> DatasetDict:
    try:
        return load_dataset(cfg.hub_id, cfg.hub_config)
    except Exception as e:  # offline: ConnectionError, OSError, or datasets' own errors, by version
        raise PeftBenchError(
            f"dataset {cfg.name}: cannot load {cfg.hub_id!r} from the Hugging Face Hub "
            f"({e.__class__.__name__}) and it is not in the local cache. Where there is network (a login node), "
            f"`{prepare_command()}` fetches and caches it (jobs then run with HF_DATASETS_OFFLINE=1); "
            f"or give local files with dataset.data_files= (json, jsonl, jsonl.gz, csv, parquet)."
        ) from None


def builder_for(path: str) -> str:
    suffixes = Path(path).suffixes
    ext = suffixes[-2] if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zst") else Path(path).suffix
    if ext not in BUILDERS:
        raise PeftBenchError(f"dataset.data_files: cannot read {path}: use one of {sorted(BUILDERS)} (optionally .gz)")
    return BUILDERS[ext]


def make_splits(raw: DatasetDict, cfg: ClassificationDatasetConfig) -> tuple[DatasetDict, dict[str, str]]:
    """train / validation / test: given splits kept when labelled; missing ones carved from train
    by a seeded split. Returns the splits and how each was made."""
    if "train" not in raw:
        raise PeftBenchError(f"dataset {cfg.name}: no 'train' split (got {sorted(raw)})")
    for split in raw.values():
        for col in (cfg.text_field, cfg.label_field):
            if col not in split.column_names:
                raise PeftBenchError(f"dataset {cfg.name}: no column {col!r} (columns: {split.column_names}); "
                                     f"set dataset.text_field= / dataset.label_field=")
    kept = {s: raw[s] for s in ("validation", "test") if s in raw and min(raw[s][cfg.label_field]) >= 0}
    how = {s: f"given split '{s}'" for s in kept}
    missing = [s for s in ("validation", "test") if s not in kept]
    train = raw["train"]
    how["train"] = "given split 'train'"
    if missing:
        fraction = {"validation": cfg.val_fraction, "test": cfg.test_fraction}
        held = sum(fraction[s] for s in missing)
        parts = train.train_test_split(test_size=held, seed=cfg.split_seed)
        train, rest = parts["train"], parts["test"]
        if len(missing) == 2:
            halves = rest.train_test_split(test_size=fraction["test"] / held, seed=cfg.split_seed)
            kept["validation"], kept["test"] = halves["train"], halves["test"]
        else:
            kept[missing[0]] = rest
        for s in missing:
            how[s] = f"{fraction[s]:.0%} of 'train', seeded split (split_seed={cfg.split_seed})"
        how["train"] = f"'train' minus the {held:.0%} held out (split_seed={cfg.split_seed})"
    if cfg.max_train_examples is not None and cfg.max_train_examples < len(train):
        train = train.shuffle(seed=cfg.split_seed).select(range(cfg.max_train_examples))
        how["train"] += f", first {cfg.max_train_examples} after a seeded shuffle"
    return DatasetDict(train=train, validation=kept["validation"], test=kept["test"]), how


def label_counts(ds) -> dict[str, int]:
    labels = list(ds["labels"])
    return {str(y): labels.count(y) for y in sorted(set(labels))}


def cache_key(name: str, tokenizer, fingerprint: str, recipe: dict) -> str:
    """Tokenizer content x data content x the recipe (max_length, fields, split or packing)."""
    tok_id = tokenizer.backend_tokenizer.to_str() if getattr(tokenizer, "is_fast", False) else repr(tokenizer)
    full = {"v": CACHE_VERSION, "tokenizer": hashlib.sha256(tok_id.encode()).hexdigest(), "data": fingerprint,
            **recipe}
    return f"{name}-{hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:16]}"


def save_atomically(data: DatasetDict, info: dict, path: Path) -> None:
    """Write to a temporary folder, then rename: a concurrent job sees all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    data.save_to_disk(str(tmp))
    (tmp / "info.json").write_text(json.dumps(info, indent=2))
    try:
        os.replace(tmp, path)
    except OSError:  # another job got there first: its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
