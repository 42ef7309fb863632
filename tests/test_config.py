"""Composition and validation: every option composes; each kind of bad input gets one clear error
before any data or weights are loaded."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from peft_bench.checks import check_config
from peft_bench.config import RunConfig
from peft_bench.errors import ConfigError
from peft_bench.tasks import CLASSIFICATION
from tests.helpers import CONF_DIR, TINY, compose, run_cli

GROUPS = ["method", "dataset", "model", "trainer", "logger"]
OFFLINE_MODELS = {"tiny", "minilm", "tiny_llama"}  # the others need the Hub (or `make smollm2`)
LM_MODELS = {"tiny_llama", "smollm2", "gpt2", "distilgpt2"}
WIKITEXT = CONF_DIR.parent.parent / "shared" / "data" / "wikitext2" / "validation.jsonl"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_into_the_typed_schema(group, option):
    if (group, option) == ("method", "peft"):  # names no type of its own: tests/test_peft_types.py
        option = "peft method.peft_type=HRA"
    cfg = compose(f"{group}={option}".split())
    run = OmegaConf.to_object(cfg)
    assert isinstance(run, RunConfig)
    assert getattr(run, group) is not None
    lm = (group == "model" and option in LM_MODELS) or (
        group == "dataset" and option in ("wikitext2", "gsm8k")
    )
    lm = lm or option == "prefix_tuning"  # a KV-cache prefix: causal LMs only (PEFT 0.21.2)
    base = ["dataset=wikitext2", f"dataset.data_files={WIKITEXT}"] if lm else []
    if option == "gsm8k":  # 384 prompt + 256 new tokens: more than the tiny Llama's 512 positions
        base.append("dataset.max_prompt_length=256")
    if group != "model":
        base.append("model=tiny_llama" if lm else "model=tiny")
    if group != "model" or option in OFFLINE_MODELS:
        check_config(compose(base + f"{group}={option}".split()))


def test_rank_sweep_values_reach_the_adapter():
    for r in (2, 4, 8, 16):
        assert check_config(compose(["model=tiny", f"rank={r}"])).method.r == r


def test_typo_in_key_fails_at_compose():
    with pytest.raises(ConfigCompositionException, match="rrank|Could not override 'method.rrank'"):
        compose(["method.rrank=4"])


def test_wrong_type_fails_at_compose():
    with pytest.raises(ConfigCompositionException) as e:
        compose(["method.dropout=lots"])
    assert "dropout" in str(e.value.__cause__ or e.value)


def test_missing_value_fails_before_anything_runs():
    with pytest.raises(ConfigError) as e:
        check_config(compose(["model=tiny", "method.lr=???"]))
    assert e.value.problems == [
        "method.lr is not set (the config leaves it ???): give it, e.g. method.lr=..."
    ]


def test_rank_zero_is_rejected():
    with pytest.raises(ConfigError, match=r"method.r=0: .*must be >= 1"):
        check_config(compose(["model=tiny", "rank=0"]))


def test_all_problems_are_reported_together():
    with pytest.raises(ConfigError) as e:
        check_config(
            compose(
                [
                    "model=tiny",
                    "rank=0",
                    "method.dropout=1.5",
                    "method.lr=-1",
                    "dataset.data_files=/no/such/train.jsonl",
                ]
            )
        )
    msg = str(e.value)
    assert len(e.value.problems) == 4, msg
    for needle in ("method.r=0", "method.dropout=1.5", "method.lr=-1.0", "/no/such/train.jsonl"):
        assert needle in msg


def test_missing_data_file_is_named(tmp_path):
    missing = tmp_path / "validation.jsonl"
    (tmp_path / "train.jsonl").write_text('{"sentence": "good", "label": 1}\n')
    with pytest.raises(ConfigError, match=f"no such file: {missing}"):
        check_config(
            compose(
                [
                    "model=tiny",
                    f"+dataset.data_files.train={tmp_path / 'train.jsonl'}",
                    f"+dataset.data_files.validation={missing}",
                ]
            )
        )


def test_unknown_target_module_lists_the_models_linear_modules():
    with pytest.raises(ConfigError) as e:
        check_config(compose(["model=tiny", "method.target_modules=[q_lin,query]"]))
    msg = str(e.value)
    assert "'query'" in msg and "q_lin" in msg and "v_lin" in msg and "out_lin" in msg and "lin1" in msg
    assert len(e.value.problems) == 1  # q_lin exists


def test_unknown_target_module_on_a_pretrained_model_needs_no_weights(monkeypatch):
    import peft_bench.models as models

    def no_weights(*a, **k):
        raise AssertionError("validation loaded weights")

    monkeypatch.setattr(models, "load_backbone", no_weights)
    with pytest.raises(ConfigError, match="has no Linear module 'q_lin'.*'query'"):
        check_config(compose(["model=minilm", "method.target_modules=[q_lin]"]))


def test_cli_bad_input_is_one_message_without_traceback(tmp_path):
    out = run_cli([*TINY, "rank=0", "method.dropout=2", f"hydra.run.dir={tmp_path}"])
    assert out.returncode == 2
    assert "invalid configuration (2 problems)" in out.stderr
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout
    assert not (tmp_path / "results.json").exists()  # rejected before the run started


def test_unreachable_hub_without_local_files_names_the_fix(tmp_path):
    out = run_cli(["model=tiny", "dataset=sst2", "logger=none", f"hydra.run.dir={tmp_path}"])
    assert out.returncode == 2
    assert "dataset.data_files=" in out.stderr and "HF_DATASETS_OFFLINE" in out.stderr
    assert "stanfordnlp/sst2" in out.stderr
    assert (
        "`python -m peft_bench.prepare model=tiny dataset=sst2 logger=none`" in out.stderr
    )  # the run's overrides
    assert "Traceback" not in out.stderr


def test_layer_selective_lora_takes_named_target_sets_and_layers():
    run = check_config(
        compose(["model=minilm", "method=lora_layers", "method.target_modules=${model.target_sets.qkvo}"])
    )
    assert run.method.target_modules == ["query", "key", "value", "attention.output.dense"]
    assert run.method.layers == [3, 4, 5]  # top half of MiniLM's 6 layers
    with pytest.raises(ConfigError, match=r"method.layers: \[6\] out of range.*0..5"):
        check_config(compose(["model=minilm", "method=lora_layers", "method.layers=[5,6]"]))


def test_pruning_settings_are_checked_with_the_rest():
    with pytest.raises(ConfigError) as e:
        check_config(
            compose(
                [
                    "model=tiny",
                    "method=sparse_lora",
                    "sparsity=1.5",
                    "method.pruning.criterion=biggest",
                    "method.pruning.schedule=later",
                ]
            )
        )
    msg = str(e.value)
    assert "sparsity=1.5" in msg and "'biggest'" in msg and "'later'" in msg and "magnitude_global" in msg


def test_layers_must_be_a_list_of_indices():
    with pytest.raises(ConfigError, match="method.layers='top': give a list of layer indices"):
        check_config(compose(["model=tiny", "method=lora_layers", "method.layers=top"]))


def test_attention_dropout_reaches_every_attention_layer():
    from torch import nn

    from peft_bench.models import load_backbone

    def dropouts(overrides):
        model = load_backbone(compose(overrides).model, CLASSIFICATION, 2)
        # DistilBERT: attention.dropout; BERT: attention.self.dropout (attention.output.dropout: hidden)
        return {
            m.p
            for name, m in model.named_modules()
            if isinstance(m, nn.Dropout) and name.endswith(("attention.dropout", "attention.self.dropout"))
        }

    assert dropouts(["model=tiny"]) == {0.0}  # the default: fused attention kernels on CPU
    assert dropouts(["model=tiny", "model.attention_dropout=0.2"]) == {0.2}
    assert dropouts(["model=tiny", "model.attention_dropout=null"]) == {0.1}  # DistilBERT's own
    assert dropouts(["model=minilm"]) == {0.0}  # pretrained: the checkpoint says 0.1


def test_attention_dropout_on_an_architecture_without_one_is_a_config_error():
    with pytest.raises(
        ConfigError, match=r"model.attention_dropout=0.0: model tiny \(t5\).*attention_dropout=null"
    ):
        check_config(compose(["model=tiny", "model.architecture.model_type=t5"]))
    with pytest.raises(ConfigError, match=r"model.attention_dropout=1.0: must be in \[0, 1\)"):
        check_config(compose(["model=tiny", "model.attention_dropout=1.0"]))


def test_sanity_validation_is_off_on_a_cpu_by_default_and_can_be_asked_for(tmp_path):
    from peft_bench.train import build_trainer

    def sanity(*overrides):
        run_cfg = check_config(compose([*TINY, *overrides]))
        return build_trainer(run_cfg, tmp_path, None)[0].num_sanity_val_steps

    assert sanity() == 0  # this machine has no accelerator
    assert sanity("trainer.num_sanity_val_steps=2") == 2
    assert sanity("trainer.num_sanity_val_steps=-1") == float("inf")
    with pytest.raises(ConfigError, match=r"trainer.num_sanity_val_steps=-2: .*-1 for all"):
        check_config(compose([*TINY, "trainer.num_sanity_val_steps=-2"]))
