"""Instruction-tuning data (GSM8K): a prompt and its response per example, the prompt rendered by the
tokenizer's chat template (a user turn, then the assistant's) or a plain template, the response ended
with the end-of-sequence token; the loss on the response tokens only (prompt tokens labelled -100).
Evaluation batches also carry the prompt alone, left-padded for batched generation, and the gold answer
read from the response. Splits are carved from train as for classification, cached on disk."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict
from torch.utils.data import DataLoader

from peft_bench.config import InstructionDatasetConfig, LMDatasetConfig
from peft_bench.data.base import BaseDataModule, EpochSeededSampler, RawData, cache_key, check_text
from peft_bench.data.classification import make_splits
from peft_bench.errors import DataError, PeftBenchError
from peft_bench.tasks.generation import end_of_sequence, extract_answer

log = logging.getLogger(__name__)


def uses_chat_template(tokenizer, cfg: InstructionDatasetConfig) -> bool:
    """Whether prompts go through the tokenizer's chat template (dataset.chat_template: null where it has
    one, true to require it, false for dataset.plain_template)."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if cfg.chat_template and not has:
        raise DataError(
            f"dataset.chat_template=true, but tokenizer {tokenizer.name_or_path!r} has no chat template: "
            "set dataset.chat_template=null (use it where there is one) or false (dataset.plain_template)"
        )
    return has if cfg.chat_template is None else cfg.chat_template


def render_prompt(tokenizer, cfg: InstructionDatasetConfig, prompt: str, chat: bool) -> list[int]:
    """A prompt's token ids, ready for the response to follow (the assistant turn opened)."""
    if chat:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    text = cfg.plain_template.replace("{prompt}", prompt)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + tokenizer(text, add_special_tokens=False)["input_ids"]


def encode(tokenizer, cfg: InstructionDatasetConfig, chat: bool, eos: int):
    """The batched map that tokenizes examples: input_ids (prompt + response + eos, cut at max_length),
    labels (-100 on the prompt), prompt_ids (its last max_prompt_length tokens), the gold answer."""

    def run(batch: dict) -> dict:
        out = {"input_ids": [], "labels": [], "prompt_ids": [], "gold": [], "length": []}
        for prompt, response in zip(batch[cfg.prompt_field], batch[cfg.response_field], strict=True):
            p = render_prompt(tokenizer, cfg, prompt, chat)
            r = tokenizer(response, add_special_tokens=False)["input_ids"] + [eos]
            ids = (p + r)[: cfg.max_length]
            out["input_ids"].append(ids)
            out["labels"].append(([-100] * len(p) + r)[: cfg.max_length])
            out["prompt_ids"].append(p[-cfg.max_prompt_length :])
            out["gold"].append(extract_answer(response, cfg.answer) or "")
            out["length"].append(len(ids))
        return out

    return run


WIKITEXT2 = ("Salesforce/wikitext", "wikitext-2-raw-v1")  # the default reference text (dataset=wikitext2's)


def read_reference(cfg: InstructionDatasetConfig, tokenizer) -> tuple[torch.Tensor, str]:
    """The forgetting probe's blocks: dataset.forgetting_data_files (their train split), else WikiText-2's
    validation split from the Hub, tokenized text by text until forgetting_tokens tokens are read."""
    field = cfg.forgetting_text_field
    ref = LMDatasetConfig(
        name=f"{cfg.name}-forgetting",
        hub_id=WIKITEXT2[0],
        hub_config=WIKITEXT2[1],
        data_files=cfg.forgetting_data_files,
        text_field=field,
    )

    def validate(ds: Dataset, where: str) -> tuple[Dataset, bool]:
        return Dataset.from_dict({field: check_text(ds, field, where, "forgetting_text_field")}), False

    try:
        raw = RawData(ref, validate)
        splits = raw.splits
    except PeftBenchError as e:
        raise DataError(
            f"the forgetting probe's text ({e}): give one (dataset.forgetting_data_files=<file>), or "
            "measure no forgetting (dataset.forgetting_tokens=0)"
        ) from None
    ds = (
        splits["validation"]
        if cfg.forgetting_data_files is None and "validation" in splits
        else splits["train"]
    )
    ids: list[int] = []
    for text in ds[field]:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= cfg.forgetting_tokens:
            break
    size = cfg.forgetting_block_size
    n = min(len(ids), cfg.forgetting_tokens) // size * size
    if n == 0:
        raise DataError(
            f"the forgetting probe's text ({raw.source}) has {len(ids)} tokens, fewer than one block of "
            f"dataset.forgetting_block_size={size}"
        )
    return torch.tensor(ids[:n]).view(-1, size), raw.source


def drop_unscored(data: DatasetDict, cfg: InstructionDatasetConfig) -> list[str]:
    """Drop (in place) the examples whose prompt leaves no response token within dataset.max_length (no
    loss to learn from, a NaN one for a batch of them); a warning for each split that lost some,
    DataError where a split loses all."""
    notes = []
    for name in list(data):
        scored = [any(x != -100 for x in labels) for labels in data[name]["labels"]]
        lost = scored.count(False)
        if not lost:
            continue
        if lost == len(scored):
            raise DataError(
                f"dataset {cfg.name}: every {name} prompt fills dataset.max_length={cfg.max_length} tokens, "
                "leaving no response to score: raise dataset.max_length"
            )
        data[name] = data[name].select([i for i, ok in enumerate(scored) if ok])
        notes.append(
            f"{name}: {lost} of {len(scored)} examples dropped: their prompt fills dataset.max_length="
            f"{cfg.max_length} tokens, leaving no response token"
        )
    return notes


class InstructionDataModule(BaseDataModule):
    def __init__(self, dataset: InstructionDatasetConfig, tokenizer, cache_dir: str, seed: int):
        super().__init__()
        self.cfg, self.tokenizer, self.seed = dataset, tokenizer, seed
        self.eos = end_of_sequence(tokenizer)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.sep_token
        self.cache_root = Path(cache_dir) / "tokenized"
        self.data: DatasetDict | None = None
        self.info: dict = {}
        self._reference: tuple[torch.Tensor, str] | None = None

    def validate(self, ds: Dataset, where: str) -> tuple[Dataset, bool]:
        p, r = self.cfg.prompt_field, self.cfg.response_field
        columns = {p: check_text(ds, p, where, "prompt_field"), r: check_text(ds, r, where, "response_field")}
        return Dataset.from_dict(columns), False

    def prepare_data(self) -> None:
        if self.data is not None:
            return
        raw = RawData(self.cfg, self.validate)
        chat = uses_chat_template(self.tokenizer, self.cfg)
        recipe = {
            "task": "generation",
            "fields": [self.cfg.prompt_field, self.cfg.response_field],
            "chat": chat,
            "template": None if chat else self.cfg.plain_template,
            "lengths": [self.cfg.max_length, self.cfg.max_prompt_length],
            "answer": self.cfg.answer,
            "split": [self.cfg.val_fraction, self.cfg.test_fraction, self.cfg.split_seed],
            "caps": [self.cfg.max_train_examples, self.cfg.max_val_examples, self.cfg.max_test_examples],
        }

        def build() -> tuple[DatasetDict, dict]:
            splits, how = make_splits(raw.splits, self.cfg)
            for split, cap in (
                ("validation", self.cfg.max_val_examples),
                ("test", self.cfg.max_test_examples),
            ):
                if cap is not None and cap < len(splits[split]):
                    splits[split] = splits[split].select(range(cap))
                    how[split] += f", its first {cap}"
            fn = encode(self.tokenizer, self.cfg, chat, self.eos)
            data = DatasetDict(
                {
                    name: ds.map(fn, batched=True, remove_columns=ds.column_names, desc=f"tokenize {name}")
                    for name, ds in splits.items()
                }
            )
            dropped = drop_unscored(data, self.cfg)
            no_gold = [s for s in ("validation", "test") if "" in data[s]["gold"]]
            if no_gold and self.cfg.answer != "text":
                raise DataError(
                    f"dataset {self.cfg.name}: some {no_gold[0]} responses hold no answer that "
                    f"dataset.answer={self.cfg.answer} can read (no number): pick another rule"
                )
            return data, {
                "splits": how,
                "sizes": {k: len(v) for k, v in data.items()},
                "chat_template": chat,
                "warnings": dropped,
            }

        self.load_or_build(raw, cache_key(self.cfg.name, self.tokenizer, raw.fingerprint, recipe), build)
        for warning in self.info.get("warnings", []):
            log.warning("data: %s", warning)
        if self.cfg.forgetting_tokens:  # before the weights load: a missing text is said up front
            self.reference_blocks()

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()

    def reference_blocks(self) -> tuple[torch.Tensor, str]:
        """The forgetting probe's text as blocks of token ids (its first dataset.forgetting_tokens tokens,
        whole blocks of dataset.forgetting_block_size), and where the text came from."""
        if self._reference is None:
            self._reference = read_reference(self.cfg, self.tokenizer)
        return self._reference

    def collate(self, rows: list[dict]) -> dict:
        """Right-padded input_ids / labels / attention_mask; an evaluation batch also has the prompts
        left-padded (prompt_ids, prompt_mask: generation continues each from its last token), the gold
        answers and the examples' rows."""
        pad = self.tokenizer.pad_token_id
        longest = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), longest), pad, dtype=torch.long)
        labels = torch.full((len(rows), longest), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = (
                torch.tensor(r["input_ids"]),
                torch.tensor(r["labels"]),
                1,
            )
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if "prompt_ids" in rows[0]:
            width = max(len(r["prompt_ids"]) for r in rows)
            prompts = torch.full((len(rows), width), pad, dtype=torch.long)
            prompt_mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                n = len(r["prompt_ids"])
                prompts[i, width - n :], prompt_mask[i, width - n :] = torch.tensor(r["prompt_ids"]), 1
            batch.update(prompt_ids=prompts, prompt_mask=prompt_mask, gold=[r["gold"] for r in rows])
        if "example" in rows[0]:
            batch["example"] = torch.tensor([r["example"] for r in rows])
        return batch

    def train_dataloader(self) -> DataLoader:
        ds = self.data["train"].select_columns(["input_ids", "labels"])
        sampler = self.train_sampler(EpochSeededSampler(len(ds), self.seed), self.cfg.batch_size)
        return self.loader(ds, self.per_process(self.cfg.batch_size), sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        ds = self.data[split].remove_columns("length")
        if split == "test":  # each example's row travels with it, for predictions.parquet
            ds = ds.add_column("example", list(range(len(ds))))
        return self.loader(ds, self.cfg.eval_batch_size, sampler=self.eval_sampler(ds))
