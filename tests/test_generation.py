"""Instruction tuning scored by generation (dataset=gsm8k, task generation) on the tiny Llama and real
GSM8K problems (../shared/data, read in place): prompt masking, answer extraction, exact match, batched
left-padded generation against one prompt at a time, merged generation, and a run end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from peft_bench.checks import check_config
from peft_bench.data.instruction import InstructionDataModule
from peft_bench.errors import ConfigError, DataError
from peft_bench.models import load_tokenizer
from peft_bench.predictions import read_predictions
from peft_bench.report import write_report
from peft_bench.tasks import TASKS
from peft_bench.tasks.generation import extract_answer, generated_tokens
from peft_bench.train import run
from tests.helpers import ROOT, assert_documented, compose

GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext2" / "validation.jsonl"  # the forgetting probe's text
needs_gsm8k = pytest.mark.skipif(
    not (GSM8K.is_file() and WIKITEXT.is_file()),
    reason=f"real GSM8K problems or WikiText-2 not at {GSM8K.parent.parent}",
)
GENERATION = TASKS["generation"]


def problems(tmp_path, n: int = 120):
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[:n]]
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def gen_args(path, *extra: str) -> list[str]:
    return [
        "model=tiny_llama",
        "dataset=gsm8k",
        f"dataset.data_files={{train:{path}}}",
        "logger=none",
        "dataset.max_val_examples=6",
        "dataset.max_test_examples=6",
        "dataset.max_new_tokens=12",
        "dataset.eval_batch_size=4",
        f"dataset.forgetting_data_files={WIKITEXT}",
        "dataset.forgetting_tokens=512",
        "dataset.forgetting_block_size=64",
        *extra,
    ]


def datamodule(cfg) -> InstructionDataModule:
    r = OmegaConf.to_object(cfg)
    dm = InstructionDataModule(r.dataset, load_tokenizer(r.model), r.cache_dir, seed=0)
    dm.prepare_data()
    return dm


# --------------------------------------------------------------------------- the answer


@pytest.mark.parametrize(
    ("text", "rule", "answer"),
    [
        ("so she has 5 + 3 = 8 apples.\n#### 1,000", "gsm8k", "1000"),
        ("so 8 apples. # # # # 8", "gsm8k", "8"),  # as a vocabulary that spaces punctuation writes it
        ("The total is $18.", "gsm8k", "18"),  # no ####: the last number; the full stop is no decimal
        ("It dropped by 7 degrees, to -4 degrees.", "gsm8k", "-4"),
        ("#### -12.50", "gsm8k", "-12.5"),
        ("#### 3.0 apples", "gsm8k", "3"),
        ("#### 0.75", "gsm8k", "0.75"),
        ("first 12, then #### 40 and 7 more", "gsm8k", "40"),  # the number after ####, not the last
        ("#### no number here, but 9 later", "gsm8k", "9"),  # #### without a number: the last number
        ("I cannot tell.", "gsm8k", None),
        ("about 007 of them", "last_number", "7"),
        ("she has 10 - 5", "last_number", "5"),  # a subtraction, not a negative number
        ("  Paris \n", "text", "Paris"),
    ],
)
def test_the_answer_is_read_from_tricky_texts(text, rule, answer):
    assert extract_answer(text, rule) == answer


def test_generated_tokens_stop_at_each_rows_end_of_sequence():
    eos, pad = 2, 0
    new = torch.tensor([[5, 6, 2, 2, 2], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0], [5, 0, 0, 0, 0]])
    # 3 (with its eos), 5 (no eos: all), 1 (the eos alone), 1 (stopped by a stop string, then padding)
    assert generated_tokens(new, eos, pad) == 3 + 5 + 1 + 1
    assert generated_tokens(new, eos, eos) == 3 + 5 + 1 + 5  # pad = eos: a padded row reads as generated


def test_exact_match_on_a_fixed_set_of_answers():
    texts = ["... #### 72", "she earns $10.", "#### 5", "no idea", "#### 1,200.00"]
    gold = ["72", "10", "6", "4", "1200"]
    correct = np.array([extract_answer(t, "gsm8k") == g for t, g in zip(texts, gold, strict=True)])
    assert list(correct) == [True, True, False, False, True]
    columns = {"correct": correct}
    assert GENERATION.resampled("em", columns, np.arange(5)[None], None)[0] == pytest.approx(3 / 5)


# --------------------------------------------------------------------------- the data


@needs_gsm8k
def test_the_loss_is_on_the_response_tokens_only(tmp_path):
    path, rows = problems(tmp_path)
    dm = datamodule(compose(gen_args(path), tmp_path))
    tok, train = dm.tokenizer, dm.data["train"]
    assert dm.info["chat_template"] is False  # the tiny Llama's BERT vocabulary has no chat template
    for i in range(5):
        ids, labels, prompt = train[i]["input_ids"], train[i]["labels"], train[i]["prompt_ids"]
        n = len(prompt)
        assert ids[:n] == prompt and labels[:n] == [-100] * n  # the prompt: in the input, not in the loss
        assert labels[n:] == ids[n:] and ids[-1] == dm.eos  # the response and its end: in the loss
        question = tok.decode(prompt, skip_special_tokens=True)
        answer = tok.decode(ids[n:], skip_special_tokens=True)
        assert question.startswith("question :") and question.endswith("answer :")
        assert answer.endswith(f"# # # # {train[i]['gold']}")  # BERT's vocabulary spaces punctuation out
    # the gold answers of the held-out problems, read from their responses (the number after ####)
    golds = {extract_answer(r["answer"], "gsm8k") for r in rows}
    assert len(dm.data["test"]) == 6 and set(dm.data["test"]["gold"]) <= golds


@needs_gsm8k
def test_a_prompt_that_fills_max_length_is_dropped_and_said_and_all_of_them_is_an_error(tmp_path):
    path, _ = problems(tmp_path)
    dm = datamodule(compose(gen_args(path, "dataset.max_length=60"), tmp_path))  # some prompts fill 60
    notes = [n for n in dm.info["warnings"] if "leaving no response token" in n]
    assert notes and notes[0].startswith("train: ")
    assert all(any(x != -100 for x in labels) for labels in dm.data["train"]["labels"])
    with pytest.raises(DataError, match="every train prompt fills dataset.max_length=8 tokens"):
        datamodule(compose(gen_args(path, "dataset.max_length=8"), tmp_path))


@needs_gsm8k
def test_a_batch_pads_prompts_on_the_left_and_the_training_text_on_the_right(tmp_path):
    path, _ = problems(tmp_path)
    dm = datamodule(compose(gen_args(path), tmp_path))
    rows = [dm.data["test"][i] for i in range(3)]
    batch = dm.collate(rows)
    pad = dm.tokenizer.pad_token_id
    for i, r in enumerate(rows):
        n, p = len(r["input_ids"]), len(r["prompt_ids"])
        assert batch["input_ids"][i, :n].tolist() == r["input_ids"] and batch["attention_mask"][i].sum() == n
        assert batch["prompt_ids"][i, -p:].tolist() == r["prompt_ids"]  # right-aligned: generation goes on
        assert (batch["prompt_ids"][i, :-p] == pad).all() and batch["prompt_mask"][i].sum() == p
    assert batch["gold"] == [r["gold"] for r in rows]


def test_bad_generation_settings_are_refused_before_any_work(tmp_path):
    bad = [
        "model=tiny_llama",
        "dataset=gsm8k",
        "dataset.answer=first_word",
        "dataset.response_field=question",
        "dataset.max_new_tokens=0",
        "dataset.plain_template=no placeholder",
        "dataset.extra_test_splits=[official]",
        "dataset.max_prompt_length=600",  # past the tiny Llama's 512 positions
    ]
    with pytest.raises(ConfigError) as e:
        check_config(compose(bad, tmp_path))
    said = str(e.value)
    for part in (
        "dataset.answer='first_word': valid values are ['gsm8k', 'last_number', 'text']",
        "dataset.prompt_field and dataset.response_field are both 'question'",
        "dataset.max_new_tokens=0: must be >= 1",
        "must contain {prompt}",
        "the generation task scores one test split",
        "dataset.max_prompt_length + dataset.max_new_tokens = 600 + 0",
    ):
        assert part in said, said


def test_an_encoder_is_refused_as_a_generator():  # BERT's LM head would see the tokens it predicts
    with pytest.raises(
        ConfigError, match="model=minilm has no instruction tuning, scored by generation head"
    ):
        check_config(compose(["model=minilm", "dataset=gsm8k"]))


@needs_gsm8k
def test_a_required_chat_template_the_tokenizer_lacks_is_one_sentence(tmp_path):
    path, _ = problems(tmp_path)
    with pytest.raises(DataError, match="has no chat template: set dataset.chat_template=null"):
        datamodule(compose(gen_args(path, "dataset.chat_template=true"), tmp_path))


# --------------------------------------------------------------------------- generation


def lora_module(cfg):
    r = OmegaConf.to_object(cfg)
    torch.manual_seed(0)
    module = get_class(r.method._target_)(method=r.method, model=r.model, dataset=r.dataset).eval()
    with torch.no_grad():  # a LoRA update that changes the outputs (B starts at zero)
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return module


@needs_gsm8k
def test_batched_left_padded_generation_is_one_prompt_at_a_time_and_merged_is_unmerged(tmp_path):
    path, _ = problems(tmp_path)
    cfg = compose(gen_args(path), tmp_path)
    dm, module = datamodule(cfg), lora_module(cfg)
    rows = [dm.data["test"][i] for i in range(4)]
    assert len({len(r["prompt_ids"]) for r in rows}) > 1  # prompts of different lengths: real padding
    args = (dm.tokenizer, 12, [])
    batched = module.generate_texts(dm.collate(rows), *args)
    alone = [module.generate_texts(dm.collate([r]), *args)[0] for r in rows]
    assert batched == alone and all(batched)
    with module.merged():
        assert module.generate_texts(dm.collate(rows), *args) == batched


# --------------------------------------------------------------------------- a run


def reference_loss(cfg, text_file) -> float:
    """The untrained model's mean next-token loss on the first 512 tokens of the text, in blocks of 64,
    by hand: the model as a run builds it (its seed), each block's loss as transformers computes it."""
    import lightning as L

    r = OmegaConf.to_object(cfg)
    L.seed_everything(r.seed, verbose=False)
    module = get_class(r.method._target_)(method=r.method, model=r.model, dataset=r.dataset).eval()
    tok = load_tokenizer(r.model)
    ids = []
    for line in text_file.read_text().splitlines():
        ids += tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"]
        if len(ids) >= 512:
            break
    blocks = torch.tensor(ids[:512]).view(8, 64)
    with torch.no_grad():
        losses = [float(module.model(input_ids=b[None], labels=b[None]).loss) for b in blocks]
    return sum(losses) / len(losses)  # every block scores 63 tokens: the mean of the means


@needs_gsm8k
def test_a_lora_run_scores_test_by_generation_and_keeps_every_answer(tmp_path):
    path, _ = problems(tmp_path)
    cfg = compose(gen_args(path, "trainer=fast", "trainer.limit_train_batches=4"), tmp_path / "run")
    r = run(cfg)
    assert r["status"] == "completed", r.get("error")
    assert_documented(r)
    assert {"val_em", "val_ppl", "test_em", "test_ppl", "merged_test_em"} <= set(r)
    answers = read_predictions(tmp_path / "run", r["predictions"])
    assert len(answers["example"]) == 6 and r["predictions"]["examples"] == {"test": 6}
    assert answers["correct"].mean() == pytest.approx(r["test_em"])
    assert all(isinstance(t, str) for t in answers["generated"]) and set(answers["gold"]) != {""}
    # what the model was shown, as tokenized: the question of the problem the row names
    data = datamodule(cfg)
    shown = [data.tokenizer.decode(data.data["test"][int(i)]["prompt_ids"]) for i in answers["example"]]
    assert list(answers["prompt"]) == shown and shown[0].lower().startswith("question")  # the plain template
    # the same rows, readable: one JSON object per line, in the parquet's order
    lines = (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    assert r["predictions"]["readable"] == "predictions.jsonl" and len(lines) == 6
    rows = sorted((json.loads(line) for line in lines), key=lambda row: row["example"])
    assert set(rows[0]) == {
        "split",
        "example",
        "prompt",
        "generated",
        "answer",
        "gold",
        "correct",
        "nll",
        "tokens",
    }
    assert [row["generated"] for row in rows] == list(answers["generated"])
    assert [row["correct"] for row in rows] == answers["correct"].tolist()
    again = np.exp(answers["nll"].sum() / answers["tokens"].sum())  # teacher-forced response perplexity
    assert again == pytest.approx(r["test_ppl"], rel=1e-4)
    # forgetting: the reference text's loss before and after (512 tokens: 8 blocks of 64)
    f = r["forgetting"]
    assert f["tokens"] == 8 * 63 and f["rise"] == pytest.approx(f["loss_after"] - f["loss_before"])
    assert f["loss_before"] == pytest.approx(reference_loss(cfg, WIKITEXT), rel=1e-4)  # the untrained model
    assert f["loss_after"] != f["loss_before"] and str(WIKITEXT) in f["source"]
    assert r["generation_tokens_per_s"] > 0
    # the fast validation: response perplexity, no generation during training
    fast = run(
        compose(
            gen_args(path, "trainer=fast", "trainer.limit_train_batches=4", "dataset.metric=ppl"),
            tmp_path / "fast",
        )
    )
    assert "val_em" not in fast and "val_ppl" in fast and "test_em" in fast
    # the report: exact match, its forgetting and generation speed; exact match against forgetting
    out = write_report([tmp_path / "run"], tmp_path / "report")["out"]
    md = (out / "report.md").read_text()
    assert "Task: instruction tuning, scored by generation" in md
    assert "| Forgetting (loss rise) | Generation (tokens/s) |" in md
    assert f"| {f['rise']:.4f} | {r['generation_tokens_per_s']:.1f} |" in md  # the method comparison's row
    assert (out / "gsm8k_score_vs_forgetting.png").is_file()


@needs_gsm8k
@pytest.mark.slow  # 2 trials and 1 final run of the tiny Llama on 120 real problems, in a subprocess: ~40 s
def test_a_study_tunes_lora_on_generation_by_validation_exact_match(tmp_path):
    import subprocess
    import sys

    path, _ = problems(tmp_path)
    args = [
        "method=lora",
        *gen_args(path, "trainer.max_epochs=1", "trainer.limit_train_batches=4"),
        "tune.trials=2",
        "tune.seeds=1",
        "tune.defaults=false",
        f"tune.dir={tmp_path / 't'}",
    ]
    out = subprocess.run(
        [sys.executable, "-m", "peft_bench.tune", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    study = tmp_path / "t"
    trial_runs = sorted(p.parent for p in (study / "trials").rglob("results.json"))
    assert len(trial_runs) == 2
    trial_em = [json.loads((p / "results.json").read_text())["val_em"] for p in trial_runs]
    final = json.loads((study / "final" / "lora" / "best-s1" / "results.json").read_text())
    assert final["status"] == "completed" and final["dataset"] == "gsm8k" and "test_em" in final
    assert final["forgetting"]["rise"] == pytest.approx(
        final["forgetting"]["loss_after"] - final["forgetting"]["loss_before"]
    )
    report = (study / "report" / "report.md").read_text()
    assert "## Tuned comparison" in report and "val exact match" in report
    # the final run trains with the lr of a trial with the best validation exact match
    lrs = {
        json.loads((p / "results.json").read_text())["config"]["method"]["lr"]: em
        for p, em in zip(trial_runs, trial_em, strict=True)
    }
    assert lrs[final["config"]["method"]["lr"]] == max(trial_em)
