"""Data: split building, the demo generator, local files, dynamic padding and length grouping."""

from __future__ import annotations

import gzip
import json

import pytest
from datasets import Dataset, DatasetDict

from peft_bench.config import ClassificationDatasetConfig as DatasetConfig
from peft_bench.data.base import LengthGroupedSampler, RawData, builder_for
from peft_bench.data.classification import TextClassificationDataModule, make_splits
from peft_bench.data.demo import build_demo, clause
from peft_bench.errors import PeftBenchError
from peft_bench.models import load_tokenizer
from tests.helpers import compose


def dataset_cfg(**kw) -> DatasetConfig:
    return DatasetConfig(name="t", **{"text_field": "sentence", **kw})


def labelled(n: int, offset: int = 0, label=None) -> Dataset:
    return Dataset.from_dict(
        {
            "sentence": [f"s{i + offset}" for i in range(n)],
            "label": [label if label is not None else i % 2 for i in range(n)],
        }
    )


def test_sst2_shape_keeps_validation_and_carves_a_labelled_test_from_train():
    # the Hub's SST-2 test split is unlabelled (every label -1): the raw data leaves it out, and says so
    raw = DatasetDict(train=labelled(1000), validation=labelled(100, 5000))
    splits, how = make_splits(raw, dataset_cfg(), unlabelled=["test"])
    assert {k: len(v) for k, v in splits.items()} == {"train": 900, "validation": 100, "test": 100}
    assert how["validation"] == "given split 'validation'"
    assert "10% of 'train'" in how["test"] and "split_seed=42" in how["test"] and "unlabelled" in how["test"]
    assert set(splits["test"]["sentence"]).isdisjoint(splits["train"]["sentence"])
    assert min(splits["test"]["label"]) >= 0


def test_only_train_is_split_8_1_1_the_same_way_every_time():
    raw = DatasetDict(train=labelled(1000))
    a, how = make_splits(raw, dataset_cfg())
    b, _ = make_splits(raw, dataset_cfg())
    assert {k: len(v) for k, v in a.items()} == {"train": 800, "validation": 100, "test": 100}
    assert a["test"]["sentence"] == b["test"]["sentence"]
    sets = [set(a[s]["sentence"]) for s in ("train", "validation", "test")]
    assert sum(map(len, sets)) == len(set.union(*sets)) == 1000
    c, _ = make_splits(raw, dataset_cfg(split_seed=7))
    assert c["test"]["sentence"] != a["test"]["sentence"]


def test_imdb_shape_keeps_test_and_carves_validation():
    raw = DatasetDict(train=labelled(1000), test=labelled(500, 5000))
    splits, how = make_splits(raw, dataset_cfg())
    assert {k: len(v) for k, v in splits.items()} == {"train": 900, "validation": 100, "test": 500}
    assert how["test"] == "given split 'test'"


def test_wrong_column_names_say_which_field_to_set():
    cfg = dataset_cfg(text_field="text")
    validate = TextClassificationDataModule(cfg, None, "/nonexistent", 0).validate
    with pytest.raises(PeftBenchError, match="no column 'text'.*dataset.text_field="):
        validate(labelled(10), "data file x.jsonl")


def test_demo_is_deterministic_disjoint_and_reads_negation():
    a, b = build_demo(500, seed=3), build_demo(500, seed=3)
    assert a["train"]["sentence"] == b["train"]["sentence"]
    assert {k: len(v) for k, v in a.items()} == {"validation": 50, "test": 50, "train": 400}
    sets = [set(a[s]["sentence"]) for s in a]
    assert sum(map(len, sets)) == len(set.union(*sets))
    assert 0.35 < sum(a["train"]["label"]) / 400 < 0.65
    rows = dict(zip(a["train"]["sentence"], a["train"]["label"], strict=True))
    negated = [
        s for s in rows if " not " in s and ", but" not in s and any(w in s for w in ("good", "great"))
    ]
    assert negated and all(rows[s] == 0 for s in negated)


def test_clause_polarity_flips_with_negation():
    import random

    rng = random.Random(0)
    for _ in range(200):
        text, label = clause(rng)
        negated = any(f" {n} " in f" {text} " for n in ("not", "never", "hardly"))
        positive = text.split()[-1] in {
            "good",
            "great",
            "wonderful",
            "moving",
            "brilliant",
            "funny",
            "charming",
            "delightful",
            "gripping",
            "beautiful",
            "clever",
            "fresh",
        }
        assert label == int(positive != negated), text


def test_local_jsonl_gz_files_load_with_a_content_fingerprint(tmp_path):
    path = tmp_path / "train.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for i in range(20):
            f.write(json.dumps({"text": f"review {i}", "label": i % 2}) + "\n")
    cfg = dataset_cfg(data_files=str(path), text_field="text")
    raw = RawData(cfg, TextClassificationDataModule(cfg, None, "/nonexistent", 0).validate)
    assert len(raw.splits["train"]) == 20 and json.loads(raw.fingerprint)["files"] == "path"
    assert str(path) in raw.source
    assert builder_for("a/b.parquet") == "parquet" and builder_for("x.csv") == "csv"
    with pytest.raises(PeftBenchError, match="cannot read x.txt"):
        builder_for("x.txt")


@pytest.fixture(scope="module")
def demo_module():
    cfg = compose(["model=tiny", "dataset=demo", "dataset.batch_size=8"])
    from peft_bench.checks import check_config

    run = check_config(cfg)
    dm = TextClassificationDataModule(run.dataset, load_tokenizer(run.model), run.cache_dir, seed=0)
    dm.prepare_data()
    return dm


def test_batches_are_padded_to_their_longest_example_not_max_length(demo_module):
    for batch in list(demo_module.train_dataloader())[:20]:
        lengths = batch["attention_mask"].sum(1)
        assert batch["input_ids"].shape[1] == int(lengths.max()) < demo_module.cfg.max_length


def test_length_grouping_cuts_padding(tmp_path):
    texts = [" ".join(["word"] * (1 + (i * 37) % 200)) for i in range(800)]
    files = tmp_path / "train.jsonl"
    files.write_text("".join(json.dumps({"sentence": t, "label": i % 2}) + "\n" for i, t in enumerate(texts)))

    def padding_fraction(group: bool) -> float:
        cfg = compose(
            [
                "model=tiny",
                f"dataset.data_files={files}",
                "dataset.max_length=256",
                f"dataset.group_by_length={str(group).lower()}",
            ]
        )
        from peft_bench.checks import check_config

        run = check_config(cfg)
        dm = TextClassificationDataModule(run.dataset, load_tokenizer(run.model), run.cache_dir, seed=0)
        dm.prepare_data()
        batches = list(dm.train_dataloader())
        assert sum(len(b["labels"]) for b in batches) == len(dm.data["train"])  # every example once
        return sum(float((b["attention_mask"] == 0).sum()) for b in batches) / sum(
            b["attention_mask"].numel() for b in batches
        )

    random_order, grouped = padding_fraction(False), padding_fraction(True)
    assert random_order > 0.3 and grouped < random_order / 3, (random_order, grouped)


def test_length_grouped_order_depends_only_on_seed_and_epoch_longest_batch_first_short_batch_last():
    lengths = [(i * 37) % 500 + 1 for i in range(1003)]  # 62 full batches of 16 and one of 11
    sampler = LengthGroupedSampler(lengths, batch_size=16, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(1003))  # every example once
    assert list(LengthGroupedSampler(lengths, batch_size=16, seed=3)) == first  # a resumed run: same order
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == list(range(1003))
    sampler.set_epoch(0)
    assert list(sampler) == first
    batches = [first[i : i + 16] for i in range(0, 1003, 16)]
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # an out-of-memory shows at step one
    assert len(batches[-1]) == 11  # the short batch last, so the loader's batches are the sampler's groups
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 30, spread  # a megabatch of 800 sorted: neighbours differ by ~500/800 each


def test_a_cache_hit_on_local_files_does_not_parse_them(tmp_path, monkeypatch):
    files = tmp_path / "train.jsonl"
    files.write_text("".join(json.dumps({"sentence": f"s {i}", "label": i % 2}) + "\n" for i in range(50)))
    cfg = compose(["model=tiny", f"dataset.data_files={files}", f"cache_dir={tmp_path / 'cache'}"])
    from peft_bench.checks import check_config

    run = check_config(cfg)

    def module():
        dm = TextClassificationDataModule(run.dataset, load_tokenizer(run.model), run.cache_dir, seed=0)
        dm.prepare_data()
        return dm

    assert module().info["cache"] == "miss"

    def no_parse(*args, **kwargs):
        raise AssertionError("the raw files were parsed on a cache hit")

    monkeypatch.setattr("peft_bench.data.base.load_dataset", no_parse)
    assert module().info["cache"] == "hit"
    files.write_text(files.read_text().replace("s 1", "s one"))  # changed content: a miss, parsed again
    with pytest.raises(Exception, match="parsed on a cache hit"):
        module()
