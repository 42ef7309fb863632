"""What every task's data shares: reading the raw splits (Hub, local files or the demo generator) with
row-level checks that name the file and row, the on-disk cache of tokenized splits (keyed by
everything that shapes them, verified on every hit), and the resumable, epoch-seeded samplers."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import itertools
import json
import logging
import lzma
import math
import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from datasets import Dataset, DatasetDict, concatenate_datasets, load_dataset, load_from_disk
from filelock import FileLock
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from peft_bench.data.demo import build_demo
from peft_bench.errors import DataError, PeftBenchError, prepare_command
from peft_bench.io import atomic_write, file_digest, set_aside

log = logging.getLogger("peft_bench")

CACHE_VERSION = 2  # bump when tokenization, checks or split logic change: old cache entries are not reused
BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
SPLITS = ("train", "validation", "test")


def split_names(cfg) -> tuple[str, ...]:
    """The splits a dataset config reads: train, validation, test and its extra test_<name> splits."""
    return (*SPLITS, *(f"test_{x}" for x in getattr(cfg, "extra_test_splits", None) or ()))


def in_order(splits) -> list[str]:
    """Split names, train / validation / test first, extra test splits after them."""
    return [*(s for s in SPLITS if s in splits), *(s for s in splits if s not in SPLITS)]


DATA_FILES = "data-*.arrow"  # what save_to_disk writes per split; their digests are kept in info.json

# A validator checks the rows of one file (or Hub split) and returns them reduced to the task's
# columns, plus whether the whole file is unlabelled (every label -1, GLUE's mark for a hidden test set).
Validator = Callable[[Dataset, str], tuple[Dataset, bool]]


# ---------------------------------------------------------------------------------- local files


def builder_for(path: str) -> str:
    """The datasets builder that reads a file, by its extension (a compression suffix is looked through)."""
    suffixes = Path(path).suffixes
    ext = suffixes[-2] if len(suffixes) > 1 and suffixes[-1] in COMPRESSED else Path(path).suffix
    if ext not in BUILDERS:
        raise PeftBenchError(
            f"dataset.data_files: cannot read {path}: use one of {sorted(BUILDERS)} "
            "(optionally .gz, .bz2, .xz)"
        )
    return BUILDERS[ext]


def files_by_split(data_files) -> tuple[str, dict[str, list[str]]]:
    """(how data_files was given: path, list or mapping; {split: [paths]}). A path or a list feeds train."""
    if isinstance(data_files, str):
        return "path", {"train": [data_files]}
    if isinstance(data_files, dict):
        return "mapping", {
            k: [v] if isinstance(v, str) else [str(p) for p in v] for k, v in data_files.items()
        }
    return "list", {"train": [str(p) for p in data_files]}


def read_file(path: str) -> Dataset:
    """One local file as a Dataset; any failure is one DataError naming the file (and the line, for
    JSON lines) and what to do."""
    if os.path.getsize(path) == 0:
        raise DataError(f"data file {path} is empty (0 bytes): give a file with rows")
    builder = builder_for(path)
    text = read_text(path) if builder != "parquet" else None  # compression and encoding, checked first
    if text is not None and not any(
        line.strip() for line in text.splitlines()[1 if builder == "csv" else 0 :]
    ):
        raise DataError(
            f"data file {path} has no rows{' (a header only)' * (builder == 'csv')}: give a file with rows"
        )
    try:
        ds = load_dataset(builder, data_files={"train": [path]}, split="train")
    except Exception as e:  # datasets wraps the reader's error; find the cause ourselves
        why = diagnose_json(text) if builder == "json" and text is not None else None
        raise DataError(f"data file {path}: {why or describe(e)}") from None
    if len(ds) == 0:
        raise DataError(f"data file {path} has no rows: give a file with rows")
    return ds


def describe(e: BaseException) -> str:
    """The innermost cause of a library error, in one line."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return f"cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def read_text(path: str) -> str:
    """A text file's content (decompressed); DataError if it is a broken archive or not UTF-8."""
    suffix = Path(path).suffix
    opener = COMPRESSED.get(suffix, open)
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, OSError, lzma.LZMAError) as e:
        kind = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz"}.get(suffix, "readable")
        raise DataError(
            f"data file {path}: is not a complete {kind} file ({type(e).__name__}: {e}): "
            "the file is truncated or corrupt"
        ) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"data file {path}: is not UTF-8 text (byte {e.start}, line {line}): re-encode it as UTF-8"
        ) from None


def diagnose_json(text: str) -> str | None:
    """Why JSON (lines) text cannot be read as rows: the first line that is not a JSON object."""
    if text.lstrip().startswith("["):  # one JSON array of rows
        try:
            rows = json.loads(text)
        except ValueError as e:
            return f"is not valid JSON ({e})"
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
        return None if bad is None else f"element {bad + 1} of its JSON array is not an object"
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            return f"line {n} is not valid JSON ({e}): {line[:80]!r}"
        if not isinstance(row, dict):
            return f"line {n} is not a JSON object: {line[:80]!r}"
    return None


# ---------------------------------------------------------------------------------- raw splits


class RawData:
    """A dataset config's raw splits, checked row by row, with a fingerprint of everything they are
    made of (which file feeds which split, each file's bytes; the Hub's fingerprints; the generator's
    settings) and a description of the source. Local files are fingerprinted without being parsed:
    a job that finds its tokenized data cached never reads the raw text."""

    def __init__(self, cfg, validate: Validator):
        self.cfg, self.validate = cfg, validate
        self._splits: DatasetDict | None = None
        self.unlabelled: list[str] = []  # given splits whose every label is -1
        if cfg.data_files is not None:  # (the config check has made sure of the splits and files)
            _, self.files = files_by_split(cfg.data_files)
            self.fingerprint = local_fingerprint(cfg)
            self.source = f"local files {json.dumps(self.files)}"
        elif cfg.generator == "demo":
            self.fingerprint = local_fingerprint(cfg)
            self.source = f"generated demo sentences (size {cfg.generator_size}, seed {cfg.split_seed})"
        else:  # the Hub: its fingerprint comes with the (cached) download
            self._hub = load_hub(cfg)
            fingerprint = ":".join(f"{k}={v._fingerprint}" for k, v in sorted(self._hub.items()))
            self.fingerprint, self.source = (
                f"hub:{cfg.hub_id}:{cfg.hub_config}:{fingerprint}",
                f"hub {cfg.hub_id}",
            )

    @property
    def splits(self) -> DatasetDict:
        """train, and validation / test where the source has them labelled, each checked."""
        if self._splits is None:
            if self.cfg.data_files is not None:
                parts = {s: [(p, read_file(p)) for p in paths] for s, paths in self.files.items()}
                where = {s: [f"data file {p}" for p in paths] for s, paths in self.files.items()}
            else:
                raw = (
                    build_demo(self.cfg.generator_size, self.cfg.split_seed)
                    if self.cfg.generator == "demo"
                    else self._hub
                )
                theirs = {s: (self.cfg.hub_splits or {}).get(s, s) for s in split_names(self.cfg)}
                parts = {s: [(theirs[s], raw[theirs[s]])] for s in theirs if theirs[s] in raw}
                where = {s: [f"split '{theirs[s]}' of {self.source}"] for s in parts}
            self._splits = DatasetDict()
            for split, files in parts.items():
                checked = [self.validate(ds, w) for (_, ds), w in zip(files, where[split], strict=True)]
                unlabelled = [w for (_, u), w in zip(checked, where[split], strict=True) if u]
                if unlabelled and len(unlabelled) < len(checked):
                    raise DataError(
                        f"{unlabelled[0]}: every label is -1 (unlabelled) while the other files of "
                        f"split '{split}' are labelled: drop it from dataset.data_files"
                    )
                if unlabelled:
                    if split == "train":
                        raise DataError(
                            f"{unlabelled[0]}: every label is -1: the training split has no labels"
                        )
                    self.unlabelled.append(split)
                    continue
                datasets = [ds for ds, _ in checked]
                self._splits[split] = datasets[0] if len(datasets) == 1 else concatenate_datasets(datasets)
            if "train" not in self._splits:
                raise DataError(f"dataset {self.cfg.name}: no 'train' split in {self.source}")
        return self._splits


def local_fingerprint(cfg) -> str | None:
    """What local data is made of, without parsing it: which file feeds which split, how data_files was
    given, each file's bytes (or the generator's settings). None for the Hub (known only once loaded)."""
    if cfg.data_files is not None:
        shape, files = files_by_split(cfg.data_files)
        return json.dumps(
            {
                "files": shape,
                "splits": {s: [file_digest(p) for p in paths] for s, paths in sorted(files.items())},
            },
            sort_keys=True,
        )
    if cfg.generator == "demo":
        return f"demo-v1:{cfg.generator_size}:{cfg.split_seed}"
    return None


def load_hub(cfg) -> DatasetDict:
    try:
        return load_dataset(cfg.hub_id, cfg.hub_config)
    except Exception as e:  # offline: ConnectionError, OSError, or datasets' own errors, by version
        raise PeftBenchError(
            f"dataset {cfg.name}: cannot load {cfg.hub_id!r} from the Hugging Face Hub "
            f"({e.__class__.__name__}) and it is not in the local cache. Where there is network "
            "(a login node), "
            f"`{prepare_command()}` fetches and caches it (jobs then run with HF_DATASETS_OFFLINE=1); "
            f"or give local files with dataset.data_files= (json, jsonl, jsonl.gz, csv, parquet)."
        ) from None


def check_text(ds: Dataset, field: str, where: str, setting: str = "text_field") -> list[str]:
    """The text column as a list of strings; DataError naming the first bad row. `setting`: the dataset
    key that names this column (text_field, or text_pair_field for a pair's second text)."""
    if field not in ds.column_names:
        raise DataError(f"{where}: no column {field!r} (columns: {ds.column_names}); set dataset.{setting}=")
    texts = ds[field]
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(f"{where}, row {i + 1}: {field!r} is {t!r}, not text: mend or drop that row")
    return texts


def label_column(ds: Dataset, field: str, where: str) -> list:
    """The label column as a list; DataError naming the columns there are."""
    if field not in ds.column_names:
        raise DataError(
            f"{where}: no column {field!r} (columns: {ds.column_names}); set dataset.label_field="
        )
    return ds[field]


def unlabelled(labels: list) -> bool:
    """Every label -1: GLUE's mark for a hidden test set."""
    return bool(labels) and all(y == -1 and not isinstance(y, bool) for y in labels)


def check_labels(ds: Dataset, field: str, num_labels: int, where: str) -> tuple[list[int], bool]:
    """The label column as ints in [0, num_labels) (0.0 / 1.0 are taken as 0 / 1), and whether the whole
    file is unlabelled (every label -1); DataError naming the first bad row."""
    labels = label_column(ds, field, where)
    if unlabelled(labels):
        return labels, True
    out = []
    for i, y in enumerate(labels):
        ok = isinstance(y, int | float) and not isinstance(y, bool) and float(y).is_integer()
        if not ok or not 0 <= y < num_labels:
            what = "not an integer class" if not ok else f"outside [0, {num_labels})"
            raise DataError(
                f"{where}, row {i + 1}: label {y!r} is {what}: labels must be integers 0.."
                f"{num_labels - 1} (dataset.num_labels={num_labels}); mend or drop that row"
            )
        out.append(int(y))
    return out, False


def check_scores(ds: Dataset, field: str, where: str) -> tuple[list[float], bool]:
    """A regression label column as finite floats, and whether the whole file is unlabelled (every
    label -1: GLUE's hidden STS-B test); DataError naming the first bad row."""
    labels = label_column(ds, field, where)
    if unlabelled(labels):
        return labels, True
    out = []
    for i, y in enumerate(labels):
        if not isinstance(y, int | float) or isinstance(y, bool) or not math.isfinite(y):
            raise DataError(
                f"{where}, row {i + 1}: label {y!r} is not a finite number: a regression label "
                "(dataset.task=regression) is a real value; mend or drop that row"
            )
        out.append(float(y))
    return out, False


# ------------------------------------------------------------------------------ leakage between splits

NORMALISED = "NFKC, casefold, whitespace collapsed"  # what "the same text" means for split_overlap


ASCII_SPACE = ("  ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f")  # str.split's


def normalise(text: str) -> str:
    """A text as split_overlap compares it: Unicode NFKC, casefolded, runs of whitespace as one space.
    ASCII text (most of it) takes a shortcut with the same result: NFKC leaves it as it is, casefold is
    lower, and the split-join (the slow part) is needed only where whitespace is not single spaces."""
    if not text.isascii():
        return " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    text = text.lower()
    if text[:1] == " " or text[-1:] == " " or any(s in text for s in ASCII_SPACE):
        return " ".join(text.split())
    return text


def split_overlap(splits: dict[str, Dataset], fields: list[str]) -> dict[str, dict[str, int]]:
    """{split: {earlier split: examples of split whose normalised text (all `fields`: a pair task's
    pair) is also in the earlier split}} for validation against train and test against train and
    validation. One pass of hashing per split: no pairwise comparison."""
    seen: dict[str, set] = {}
    out: dict[str, dict[str, int]] = {}
    for split in in_order(splits):
        rows = zip(*(column(splits[split], f) for f in fields), strict=True)
        keys = ["\x1f".join(normalise(x) for x in row) for row in rows]
        if seen:
            out[split] = {other: sum(k in those for k in keys) for other, those in seen.items()}
        seen[split] = set(keys)
    return out


def column(ds, field: str) -> list:
    """A column as a list; from a Dataset through Arrow, ten times quicker than its lazy Column."""
    return ds.with_format("arrow")[field].to_pylist() if isinstance(ds, Dataset) else list(ds[field])


def overlap_warnings(
    overlap: dict[str, dict[str, int]], sizes: dict[str, int], how: dict[str, str]
) -> list[str]:
    """One warning per pair of splits that share examples, saying whether both were given or carved
    from train here (then the shared ones are texts the given train data holds more than once)."""
    out = []
    for split, others in overlap.items():
        for other, n in others.items():
            if not n:
                continue
            carved = [s for s in (other, split) if s != "train" and not how.get(s, "").startswith("given")]
            origin = (
                f"{other} and {split} both given: they should be disjoint"
                if not carved
                else f"{' and '.join(carved)} carved from the given train data here: these are texts it "
                "holds more than once, now on both sides"
            )
            out.append(
                f"{split} shares {n} of {sizes.get(split, '?')} examples with {other} (normalised text: "
                f"{NORMALISED}; {origin}): figures on {split} may be inflated"
            )
    return out


# ------------------------------------------------------------------------------ tokenized cache


def safe_name(name: str) -> str:
    """A dataset name as one harmless path component (the config check refuses odd names already)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")[:64] or "data"


def cache_key(name: str, tokenizer, fingerprint: str, recipe: dict) -> str:
    """Tokenizer content x data content and layout x the recipe (max_length, fields, labels, split or
    packing): anything that changes the tokenized splits changes the key."""
    tok_id = tokenizer.backend_tokenizer.to_str() if getattr(tokenizer, "is_fast", False) else repr(tokenizer)
    full = {
        "v": CACHE_VERSION,
        "tokenizer": hashlib.sha256(tok_id.encode()).hexdigest(),
        "data": fingerprint,
        **recipe,
    }
    return f"{safe_name(name)}-{hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:16]}"


def cache_lock(path: Path) -> FileLock:
    """One job builds a cache entry while the others of a sweep wait for it (and then hit)."""
    locks = path.parent.parent / "locks"  # beside the cache's folders, not among their entries
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(locks / f"{path.parent.name}-{path.name}.lock")


def load_cached(path: Path, notes: list[str] | None = None) -> tuple[DatasetDict, dict] | None:
    """A cache entry, verified against the digests it was written with; None if there is none. A
    damaged entry (truncated or changed file, unreadable info.json) is set aside (noted in `notes`) and
    None returned, so the caller tokenizes again: a corrupt cache never fails a run for good."""
    if not path.exists():
        return None
    try:
        info = json.loads((path / "info.json").read_text())
        digests = info["file_digests"]
        found = {str(p.relative_to(path)) for p in path.rglob(DATA_FILES)}
        if found != set(digests):
            raise ValueError(f"files {sorted(found ^ set(digests))} missing or unexpected")
        for rel, digest in digests.items():
            if file_digest(str(path / rel)) != digest:
                raise ValueError(f"{rel} does not match its digest")
        return load_from_disk(str(path)), info
    except Exception as e:  # noqa: BLE001  (any damage: bad JSON, missing keys, pyarrow errors)
        why = f"tokenized-data cache entry is damaged ({type(e).__name__}: {e}); tokenizing again"
        aside = set_aside(path, why)
        if notes is not None:
            notes.append(f"cache entry {path.name}: {why}; set aside as {aside.name}")
        return None


def save_atomically(data: DatasetDict, info: dict, path: Path) -> dict:
    """Write to a temporary folder, then rename: a concurrent job sees all or nothing. Returns the info
    with the digests of the data files, which every later hit verifies. (A folder, renamed once whole:
    not io.atomic_path, which writes one file; the first job's folder wins, a later one is dropped.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    data.save_to_disk(str(tmp))
    info = {
        **info,
        "file_digests": {str(p.relative_to(tmp)): file_digest(str(p)) for p in tmp.rglob(DATA_FILES)},
    }
    atomic_write(tmp / "info.json", json.dumps(info, indent=2))
    try:
        os.replace(tmp, path)
    except OSError:  # another job got there first: its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return info


# ------------------------------------------------------------------------------------ samplers


class EpochSeededSampler(torch.utils.data.Sampler):
    """A random order that depends only on (seed, epoch), so a resumed run sees the same order as an
    uninterrupted one. Lightning calls set_epoch each epoch; `resume_at` makes the next pass of that
    epoch skip the examples already trained on (a checkpoint taken mid-epoch)."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0
        self._resume: tuple[int, int] | None = None  # (epoch, examples to skip)

        self.rank, self.processes, self.batch_size = 0, 1, 1  # a job of several processes: this one's share

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self, rank: int, processes: int, batch_size: int) -> None:
        """Yield only this process's share of each batch of `batch_size` (the job's batch): process r
        of n takes the r-th of n equal parts, so n processes together train on the batches one process
        would. A short last batch is topped up with its own first examples (at most n - 1) so that every
        process takes as many steps as the others (DDP waits for all of them at each step)."""
        self.rank, self.processes, self.batch_size = rank, processes, batch_size

    def resume_at(self, epoch: int, examples: int) -> None:
        self._resume = (epoch, examples)

    def order(self) -> list[int]:
        return torch.randperm(
            self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)
        ).tolist()

    def __iter__(self):
        order = self.order()
        if self._resume is not None:
            epoch, skip = self._resume
            self._resume = None
            if epoch == self.epoch:
                order = order[skip:]
        if self.processes > 1:
            order = self.share(order)
        return iter(order)

    def share(self, order: list[int]) -> list[int]:
        n, out = self.processes, []
        for i in range(0, len(order), self.batch_size):
            batch = order[i : i + self.batch_size]
            batch += [batch[j % len(batch)] for j in range(-len(batch) % n)]
            part = len(batch) // n
            out += batch[self.rank * part : (self.rank + 1) * part]
        return out

    def __len__(self) -> int:
        if self.processes > 1:
            full, rest = divmod(self.size, self.batch_size)
            return full * (self.batch_size // self.processes) + math.ceil(rest / self.processes)
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

    def order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        batches = []
        for chunk in torch.randperm(self.size, generator=g).split(self.megabatch * self.batch_size):
            batches += chunk[torch.argsort(self.lengths[chunk], descending=True, stable=True)].split(
                self.batch_size
            )
        short = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        if not batches:
            return torch.cat(short).tolist()
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        longest = max(range(len(batches)), key=lambda i: int(self.lengths[batches[i]].max()))
        batches[0], batches[longest] = batches[longest], batches[0]
        return torch.cat(batches + short).tolist()


class BaseDataModule(L.LightningDataModule):
    """What the task datamodules share: the tokenized splits from the shared cache (built once, under a
    lock, by the first job of a sweep that needs them), and exact resumes. Its state (the epoch of the
    training order and
    how many of its batches were trained) travels in every checkpoint; a run restored from a mid-epoch
    checkpoint goes on with the next batch of the same order instead of starting the epoch over.
    (Lightning's own stateful-loader path cannot do this here: `estimated_stepping_batches`, which the
    LR schedule needs, builds the train loader before the loop state is restored.) Every loader also
    has its own generator, so building one draws nothing from the global RNG stream that dropout uses."""

    seed: int
    cache_root: Path
    data: DatasetDict | None
    info: dict
    _sampler: EpochSeededSampler | None = None
    _resume: dict | None = None

    def load_or_build(
        self,
        raw: RawData,
        key: str,
        build: Callable[[], tuple[DatasetDict, dict]],
        needs: tuple[str, ...] = (),
    ) -> None:
        """self.data and self.info from the cache entry `key`, built with `build()` on a miss. An entry
        whose info lacks a key of `needs` (written by an older peft_bench: the same tokens, fewer checks)
        is built again under the same key, so the data keeps its identity across the upgrade."""
        path, notes = self.cache_root / key, []
        with cache_lock(path):
            cached, hit = load_cached(path, notes), "hit"
            if cached is not None and (lacking := [k for k in needs if k not in cached[1]]):
                shutil.rmtree(path)  # under the entry's lock; a reader has its files mapped already
                notes.append(f"tokenized data rebuilt: its cache entry had no {', '.join(lacking)}")
                cached = None
            if cached is None:
                data, info = build()
                save_atomically(data, {**info, "cache_key": key}, path)
                cached, hit = load_cached(path, notes), "miss"
        if cached is None:
            raise DataError(
                f"the tokenized data just written to {path} cannot be read back: is the disk full?"
            )
        self.data, info = cached
        # the source as this run names it (a hit may come from other paths to the same bytes)
        self.info = {
            **{k: v for k, v in info.items() if k != "file_digests"},
            "source": raw.source,
            "raw_fingerprint": raw.fingerprint,
            "cache": hit,
            "notes": notes,
        }
        log.info("tokenized data: cache %s %s", hit, path)

    def state_dict(self) -> dict:
        trainer = getattr(self, "trainer", None)
        if self._sampler is None or trainer is None:
            return {}
        return {
            "epoch": self._sampler.epoch,
            "batches_done": trainer.fit_loop.epoch_loop.batch_progress.current.processed,
        }

    def load_state_dict(self, state: dict) -> None:
        self._resume = state or None

    def train_sampler(self, sampler: EpochSeededSampler, batch_size: int) -> EpochSeededSampler:
        """Keep the training sampler, and hand it a pending resume position."""
        if self._resume:
            sampler.resume_at(self._resume["epoch"], self._resume["batches_done"] * batch_size)
            self._resume = None
        rank, processes = self.processes()
        if processes > 1:
            sampler.shard(rank, processes, batch_size)
        self._sampler = sampler
        return sampler

    def first_train_batches(self, batches: int) -> list[dict]:
        """The first `batches` batches of the run's first epoch, in training's own seeded order and
        collation (what a data-driven adapter init reads before training), the training sampler left
        as it was. Every DDP rank reads the same, whole batches, so all ranks start from one init."""
        kept = self._sampler, self._resume
        self._resume = None
        try:
            out = list(itertools.islice(self.train_dataloader(), batches))
        finally:
            self._sampler, self._resume = kept
        if len(out) < batches:
            raise DataError(
                f"a data-driven init reads {batches} training batches (method.init_batches) but the "
                f"training split has {len(out)}: lower method.init_batches"
            )
        return out

    def processes(self) -> tuple[int, int]:
        """(this process's rank, the job's processes): in a DDP job each rank reads its share of a split
        (the Trainer's use_distributed_sampler is off: this module shards its own data)."""
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def per_process(self, batch_size: int) -> int:
        """dataset.batch_size is the job's batch: each of its processes trains on an equal part of it (the
        pre-check makes sure it divides), so a DDP run trains on the batches a single process would."""
        return batch_size // self.processes()[1]

    def eval_sampler(self, ds) -> UnrepeatedDistributedSampler | None:
        """In a DDP job, every example of an evaluation split exactly once over the ranks (no padding
        repeats; torchmetrics sums the ranks' counts at compute); None for a process alone."""
        rank, processes = self.processes()
        if processes == 1:
            return None
        return UnrepeatedDistributedSampler(ds, num_replicas=processes, rank=rank, shuffle=False)

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    def loader(self, ds, batch_size: int, **kwargs) -> DataLoader:
        """A DataLoader of `ds` with this module's collate, workers and generator (kwargs: its sampler)."""
        return DataLoader(
            ds,
            batch_size=batch_size,
            collate_fn=self.collate,
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=self.generator(),
            **kwargs,
        )
