"""results.json has one typed home (peft_bench/results.py: RunResult) and one description
(docs/results.md): every key of the one is in the other. That a real run writes no other key is
checked on the runs of every method (test_methods.py, test_causal_lm.py: assert_documented)."""

from __future__ import annotations

from peft_bench.results import DataInfo, RunResult, score_key
from peft_bench.tasks import METRICS, TASKS
from tests.helpers import documented_keys


def test_every_typed_key_is_documented():
    docs = documented_keys()
    assert not [k for k in RunResult.__annotations__ if k not in docs and not score_key(k)]
    assert not [k for k in DataInfo.__annotations__ if f"data.{k}" not in docs]
    assert not [m for m in METRICS if m not in docs]  # a score key is its split and a documented metric


def test_score_keys_are_the_tasks_own():
    keys = {k for t in TASKS.values() for k in t.result_keys()}
    assert {"val_mcc", "test_pearson", "merged_test_spearman", "val_ppl", "test_acc"} <= keys
    assert all(score_key(k) for k in keys)
    assert score_key("test_mismatched_acc") and score_key("merged_test_mismatched_f1")
    assert not score_key("test_accuracy") and not score_key("train_time_s") and not score_key("val_loss")


def test_an_undocumented_key_is_caught():
    from tests.helpers import assert_documented

    try:
        assert_documented({"status": "completed", "brand_new_figure": 1.0})
    except AssertionError as e:
        assert "brand_new_figure" in str(e)
    else:
        raise AssertionError("an undocumented key went through")
