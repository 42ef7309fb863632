"""Every PEFT type, one config away: `method=peft method.peft_type=X` builds PEFT's own config class for
the type; docs/methods.md's "Every PEFT type" table names each of the installed PEFT's types as an
option, a type that runs by name, or not applicable with its reason (a PEFT release that adds a type
fails here until it is placed); bad settings are one sentence each, before anything loads; and every
type that runs only by name trains on the tiny encoder and the tiny Llama, merged outputs equal to
unmerged where the trial found it mergeable (an option's type: tests/test_all_methods.py)."""

from __future__ import annotations

import re

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from peft import PeftType

from peft_bench.checks import check_config
from peft_bench.errors import ConfigError
from peft_bench.methods.peft_by_name import NOT_APPLICABLE
from peft_bench.train import run
from tests.helpers import CONF_DIR, ROOT, build_module, compose, run_cli

TINY = ["model=tiny", "dataset=demo", "dataset.generator_size=200"]
TINY_LLAMA = [
    "model=tiny_llama",
    "dataset=wikitext2",
    "dataset.generator=demo",
    "dataset.text_field=sentence",
    "dataset.block_size=32",
    "dataset.generator_size=200",
]
SHORT = [
    "logger=none",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "rank=4",
    "method.lr=1e-2",
]


def types_table() -> dict[str, tuple[str, str]]:
    """docs/methods.md's "Every PEFT type" rows: {type: (how it runs, note)}."""
    text = (ROOT / "docs" / "methods.md").read_text()
    table = text.split("<!-- every PeftType, checked by tests/test_peft_types.py -->", 1)[1].split("\n\n", 1)[
        0
    ]
    rows = {}
    for line in table.splitlines():
        if line.startswith("| `") and not line.startswith("| `type"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


def peft_type_of(option: str) -> str:
    """The PeftType an option's model carries, built on the tiny encoder."""
    cfg = OmegaConf.to_object(compose([*TINY, f"method={option}", "rank=4"]))

    L.seed_everything(0, verbose=False)
    module = build_module(cfg, total_steps=10)
    return module.model.peft_config["default"].peft_type.value


def test_every_peft_type_is_an_option_runs_by_name_or_is_not_applicable():
    rows = types_table()
    installed = {t.value for t in PeftType}
    assert set(rows) == installed, (
        f"docs/methods.md's 'Every PEFT type' should list exactly PEFT's types: missing "
        f"{sorted(installed - set(rows))}, not in PEFT {sorted(set(rows) - installed)}"
    )
    not_applicable = {t for t, (how, _) in rows.items() if how == "not applicable"}
    assert not_applicable == set(NOT_APPLICABLE)
    for kind in not_applicable:  # the reason in the docs is the one the error gives
        assert rows[kind][1] == NOT_APPLICABLE[kind], kind
    for kind, (how, _) in rows.items():
        options = re.findall(r"`method=([a-z0-9_]+)`", how)
        if how == "not applicable":
            continue
        assert options or how == f"`method=peft method.peft_type={kind}`", (kind, how)
        for option in options:  # an option of its own: it builds that PEFT type
            assert (CONF_DIR / "method" / f"{option}.yaml").is_file(), option
            assert peft_type_of(option) == kind, (option, kind)


def problem_of(*overrides: str) -> str:
    with pytest.raises(ConfigError) as e:
        check_config(compose([*TINY, "method=peft", *overrides]))
    assert len(e.value.problems) == 1, e.value.problems
    return e.value.problems[0]


def test_bad_settings_of_a_type_by_name_are_one_sentence_before_anything_loads():
    assert "method.peft_type" in problem_of()  # no type given
    p = problem_of("method.peft_type=NOPE")
    assert "'NOPE' is not a PEFT type; valid types are [" in p and "'OFT'" in p and "'XLORA'" not in p
    assert problem_of("method.peft_type=XLORA") == (
        f"method.peft_type=XLORA is not applicable here: {NOT_APPLICABLE['XLORA']}"
    )
    p = problem_of("method.peft_type=HRA", "method.config={nope: 1}")
    assert (
        p.startswith("method.config: HRAConfig has no field ['nope']; its fields are [") and "'apply_GS'" in p
    )
    p = problem_of("method.peft_type=HRA", "method.config={task_type: CAUSAL_LM}")
    assert "['task_type'] are set by peft_bench" in p
    p = problem_of("method.peft_type=BOFT")  # rank_field r, and BOFT has no r
    assert p.startswith("method.rank_field='r': BOFTConfig has no such field") and "rank_field=null" in p
    p = problem_of("method.peft_type=OFT")  # r from the rank and PEFT's default block size: PEFT says no
    assert p.startswith("PEFT refuses OFTConfig(") and "oft_block_size" in p
    p = problem_of("method.peft_type=C3A", "method.rank_field=null")  # 256 does not divide the tiny 64
    assert "cannot adapt model tiny: The block size should be a factor of the input size" in p
    p = problem_of("method.peft_type=HRA", "method.config=5")
    assert "give the PEFT config's fields as a mapping" in p
    p = problem_of("method.peft_type=LN_TUNING", "method.rank_field=null", "method.layers=[0]")
    assert p == "method.layers: LNTuningConfig adapts every layer; set method.layers=null"
    p = problem_of("method.peft_type=HRA", "method.config={r: 16}")  # the rank would overwrite it
    assert p.startswith("method.config.r: the rank sets it")
    p = problem_of("method.peft_type=BOFT", "method.rank_field=null", "method.r=16")  # would name runs -r16
    assert p.startswith("method.r=16: method.rank_field is null")
    p = problem_of("method.peft_type=ADALORA")  # its budget needs the allocator calls of its option
    assert p.startswith("method.peft_type=ADALORA does not run by name: use method=adalora")
    p = problem_of("method.peft_type=HRA", "method.layers=3")
    assert p.startswith("method.layers=3: give a list of layer indices")
    p = problem_of(
        "method.peft_type=PROMPT_TUNING", "method.rank_field=num_virtual_tokens", "method.layers=[0]"
    )
    assert p == "method.layers: PromptTuningConfig adds virtual tokens, no layer; set method.layers=null"
    with pytest.raises(ConfigError, match="cannot adapt model tiny: Model does not support past key values"):
        check_config(compose([*TINY, "method=prefix_tuning"]))  # an encoder: no KV cache to prefix
    assert problem_of("method.peft_type=HRA", "method.lr=???") == (
        "method.lr is not set (the config leaves it ???): give it, e.g. method.lr=..."
    )
    for option in ("prompt_tuning", "lily"):  # virtual tokens; an adapter PEFT cannot merge and unmerge
        with pytest.raises(ConfigError, match="no merged model to export; set method.export_merged=false"):
            check_config(compose([*TINY, f"method={option}", "method.export_merged=true"]))
    check_config(compose([*TINY, "method=hra", "method.export_merged=true"]))  # HRA merges: accepted


def test_the_name_is_the_type_and_a_method_without_rank_ignores_it():
    cfg = OmegaConf.to_object(compose([*TINY, "method=peft", "method.peft_type=hra"]))
    assert cfg.method.name == "hra" and cfg.method.r == 8
    cfg = OmegaConf.to_object(compose([*TINY, "method=boft", "rank=16"]))
    assert cfg.method.r is None  # BOFT has no rank: rank=16 does not reach it (nor the run's identity)
    cfg = OmegaConf.to_object(compose([*TINY, "method=prompt_tuning", "rank=16"]))
    assert cfg.method.r == 16  # the number of virtual tokens


def test_a_sweep_over_rank_of_a_method_without_one_is_refused_as_repeated_runs(tmp_path):
    out = run_cli(["-m", *TINY, "method=boft", "rank=4,8", f"hydra.sweep.dir={tmp_path}"])
    assert out.returncode != 0
    assert "are the same run" in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


# per type run by name only, what a user must set for it to run on the tiny models (as the docs' table)
BY_NAME = {"ADAPTION_PROMPT": "{adapter_len: 4, adapter_layers: 1, target_modules: self_attn}"}
# refused up front on a model, with PEFT's reason: (type, model) -> a part of the sentence
REFUSED = {
    ("ADAPTION_PROMPT", "tiny"): "Unsupported model type for adaption prompt: 'distilbert'",
}


def by_name_args(kind: str) -> list[str]:
    from dataclasses import fields

    from peft_bench.methods.peft_by_name import config_class

    rank = "r" if "r" in {f.name for f in fields(config_class(kind))} else "null"
    out = ["method=peft", f"method.peft_type={kind}", f"method.rank_field={rank}"]
    return out + ([f"method.config={BY_NAME[kind]}"] if kind in BY_NAME else [])


# the types without an option of their own (an option's type is covered by tests/test_all_methods.py)
ONLY_BY_NAME = sorted(t for t, (how, _) in types_table().items() if how.startswith("`method=peft "))


def test_the_by_name_settings_are_of_types_run_by_name():
    assert set(BY_NAME) <= set(ONLY_BY_NAME)


@pytest.mark.slow  # 13 types x 2 models, 3 steps each: ~1.5 min
@pytest.mark.parametrize("model", ["tiny", "tiny_llama"])
@pytest.mark.parametrize("kind", ONLY_BY_NAME)
def test_every_type_runs_by_name_and_merges_where_it_says(kind, model, tmp_path):
    args = [*(TINY if model == "tiny" else TINY_LLAMA), *SHORT, *by_name_args(kind)]
    cfg = compose(args, tmp_path)
    if (kind, model) in REFUSED:
        with pytest.raises(ConfigError, match=re.escape(REFUSED[(kind, model)])):
            check_config(cfg)
        return
    from tests.test_all_methods import Record

    record = Record()
    out = run(cfg, callbacks=[record])
    assert out["status"] == "completed", out.get("error")
    assert out["optimizer_steps"] == 3 and out["trainable_params"] > 0
    assert out["adapter"], "results.json records the PEFT config the run trained with"
    module = record.module.eval()
    ids = torch.randint(1000, 2000, (2, 10))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        expected = module(batch)
        if module.can_merge():  # the trial on one layer said it merges: so it does on the whole model
            with module.merged():
                torch.testing.assert_close(module(batch), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(module(batch), expected, atol=1e-5, rtol=1e-5)  # and unmerged again


GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext2" / "validation.jsonl"


@pytest.mark.skipif(not (GSM8K.is_file() and WIKITEXT.is_file()), reason=f"real GSM8K not at {GSM8K}")
@pytest.mark.slow  # three short runs of the tiny Llama on GSM8K: ~40 s
def test_generation_is_the_models_own_or_not_scored(tmp_path):
    """With PEFT 0.21.2 and transformers 5, generate with cached virtual tokens (prompt tuning) parts
    from the model's own forward, and prefix tuning's generate does with or without the cache. Virtual-
    token methods generate without the cache, which agrees; prefix tuning is refused, in one sentence and
    before it trains, by the check that each fit and every generation pass start with. If PEFT mends
    prefix tuning, this test says so."""
    from peft_bench.errors import PeftBenchError

    args = [
        "model=tiny_llama",
        "dataset=gsm8k",
        f"dataset.data_files={{train:{GSM8K}}}",
        "dataset.max_train_examples=40",
        "dataset.max_val_examples=4",
        "dataset.max_test_examples=4",
        "dataset.max_new_tokens=8",
        f"dataset.forgetting_data_files={WIKITEXT}",
        "dataset.forgetting_tokens=256",
        "dataset.forgetting_block_size=64",
        "logger=none",
        "trainer=fast",
        "trainer.limit_train_batches=2",
    ]
    for method in ("prompt_tuning", "p_tuning"):
        out = run(compose([*args, f"method={method}"], tmp_path / method))
        assert out["status"] == "completed" and "test_em" in out, out.get("error")
    with pytest.raises(PeftBenchError, match="parts from the model's own forward at new token"):
        run(compose([*args, "method=prefix_tuning"], tmp_path / "prefix"))


def test_trying_a_method_leaves_the_runs_random_stream_alone():
    """The capability trial runs inside the run's build (after its seed is set): a run that tried the
    method and one that found the answer cached must draw the same random numbers."""
    import json

    from peft_bench.methods.peft_by_name import capabilities

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    cfg = json.dumps({"_type": "HRA", "task_type": "SEQ_CLS", "target_modules": ["x"], "r": 2})
    caps = capabilities(cfg, 16, 24, True)  # first call: the trial runs
    assert caps.mergeable and "Conv1D" in caps.conv1d  # HRA merges, and PEFT has no Conv1D layer for it
    torch.testing.assert_close(torch.rand(3), expected)
