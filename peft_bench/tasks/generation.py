"""Instruction tuning scored by what the model writes (GSM8K): the loss on the response tokens only (the
model's own next-token loss, prompt tokens masked), greedy generation at test (and at validation when the
primary metric is exact match), the answer read from the text by a rule (GSM8K: the number after ####,
else the last number), and exact match against the gold answer read the same way. The response's
perplexity under teacher forcing is kept beside it (the fast validation metric: dataset.metric=ppl)."""

from __future__ import annotations

import re

from peft_bench.tasks.base import Task, resampled_ppl, token_nll

# a number as GSM8K writes one: an optional sign and $, digits with thousands commas, a decimal part
NUMBER = re.compile(r"(?<![\w.])-?\$?\d[\d,]*(?:\.\d+)?")  # "10 - 5" reads 10 and 5, not -5
FINAL = re.compile(r"#\s?#\s?#\s?#\s*(.*)")  # ####, or # # # # as some vocabularies decode it


def normalise_number(text: str) -> str:
    """`$1,000.` -> `1000`, `18.50` -> `18.5`, `-3.0` -> `-3`: one spelling per value."""
    s = text.replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    negative = s.startswith("-")
    s = s.lstrip("-")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    s = s.lstrip("0") or "0"
    if s.startswith("."):
        s = "0" + s
    return f"-{s}" if negative and s != "0" else s


def last_number(text: str) -> str | None:
    found = NUMBER.findall(text)
    return normalise_number(found[-1]) if found else None


def extract_answer(text: str, rule: str) -> str | None:
    """The answer a text gives, by `rule` (dataset.answer): `gsm8k`, the first number after `####`, else
    the last number of the text; `last_number`; `text`, the whole text stripped. None: no answer (never
    correct)."""
    if rule == "text":
        return text.strip() or None
    if rule == "gsm8k":
        final = FINAL.search(text)
        if final:
            number = NUMBER.search(final.group(1))
            if number:
                return normalise_number(number.group(0))
    if rule in ("gsm8k", "last_number"):
        return last_number(text)
    raise ValueError(f"unknown answer rule {rule!r}")


def cut_at_stop(text: str, stops) -> str:
    """The text up to its first stop string (generate stops a batch's row at one, but keeps it)."""
    cut = min((i for s in stops if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def generated_tokens(new, eos: int, pad: int | None) -> int:
    """The tokens a batch's rows generated: each row's up to and including its first end-of-sequence
    token (what follows is padding), none of its padding where it stopped otherwise."""
    ended = (new == eos).long().cumsum(1)
    kept = (ended == 0) | ((ended == 1) & (new == eos))  # before the first eos, and the eos itself
    if pad is not None and pad != eos:
        kept &= new != pad
    return int(kept.sum())


def end_of_sequence(tokenizer) -> int:
    """The token a response ends with (and generation stops at): the tokenizer's end-of-sequence token,
    else its separator (a BERT vocabulary, the tiny test models')."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no end-of-sequence or separator token")
    return eos


class GenerationTask(Task):
    def metrics(self, num_labels: int | None):
        from torchmetrics import MeanMetric, MetricCollection
        from torchmetrics.text import Perplexity

        return MetricCollection({"em": MeanMetric(), "ppl": Perplexity(ignore_index=-100)})

    def update(self, metrics, logits, labels) -> None:
        metrics["ppl"].update(logits[:, :-1].float(), labels[:, 1:])

    def compute(self, metrics) -> dict:
        """The split's figures: exact match only where the split generates (decided alike on every
        process: each joins the same metric syncs), the response perplexity always."""
        prefix = metrics.prefix or ""  # the collection's keys carry it: val/em, test/ppl
        generated = self.generates(prefix.rstrip("/") or "test")
        return {k: m.compute() for k, m in metrics.items() if k.removeprefix(prefix) != "em" or generated}

    def generates(self, split: str) -> bool:
        """Test always generates; validation only when exact match is the primary metric."""
        return split != "val" or self.key == "em"

    def evaluate(self, module, batch: dict, metrics, split: str):
        """Teacher-forced response perplexity; then, where the split generates, greedy generations, their
        answers and exact match. Returns the logits and the per-example columns (test)."""
        import numpy as np
        import torch

        logits = module(batch)
        self.update(metrics, logits, batch["labels"])
        if not self.generates(split):
            return logits, None
        dm = module.trainer.datamodule
        texts = module.generate_texts(batch, dm.tokenizer, dm.cfg.max_new_tokens, dm.cfg.stop_strings)
        answers = [extract_answer(t, dm.cfg.answer) for t in texts]
        correct = torch.tensor(
            [a is not None and a == g for a, g in zip(answers, batch["gold"], strict=True)]
        )
        metrics["em"].update(correct.float().to(logits.device))
        nll, tokens = token_nll(logits.detach(), batch["labels"])
        prompts = [  # what the model was shown: the prompt as tokenized (chat template and all), unpadded
            dm.tokenizer.decode(ids[mask.bool()])
            for ids, mask in zip(batch["prompt_ids"], batch["prompt_mask"], strict=True)
        ]
        columns = {
            "prompt": np.array(prompts, dtype=object),
            "correct": correct,
            "answer": np.array([a if a is not None else "" for a in answers], dtype=object),
            "gold": np.array(batch["gold"], dtype=object),
            "generated": np.array(texts, dtype=object),
            "nll": nll,
            "tokens": tokens,
        }
        return logits, columns

    def before_training(self, module, datamodule) -> None:
        """The generation check (BenchModule.check_generation) on the first validation prompt, in eval
        mode: a method whose generate parts from its forward is refused before training, not after."""
        import torch

        batch = next(iter(datamodule.val_dataloader()))
        prompt = batch["prompt_ids"][0][batch["prompt_mask"][0].bool()].to(module.device)
        was_training = module.training
        module.eval()
        with torch.no_grad():
            module.check_generation(prompt, datamodule.tokenizer)
        module.train(was_training)

    def probe(self, module, datamodule) -> dict | None:
        """The mean next-token loss (nats per token) on the reference text's blocks, in eval mode."""
        import torch

        if not datamodule.cfg.forgetting_tokens:
            return None
        blocks, source = datamodule.reference_blocks()
        was_training, total, count = module.training, 0.0, 0
        module.eval()
        with torch.no_grad():
            for chunk in blocks.split(datamodule.cfg.eval_batch_size):
                chunk = chunk.to(module.device)
                logits = module({"input_ids": chunk, "attention_mask": torch.ones_like(chunk)})
                nll, tokens = token_nll(logits, chunk)
                total, count = total + float(nll.sum()), count + int(tokens.sum())
        module.train(was_training)
        return {"loss": total / count, "tokens": count, "source": source}

    def probe_results(self, before: dict, after: dict) -> dict:
        return {
            "forgetting": {
                "loss_before": before["loss"],
                "loss_after": after["loss"],
                "rise": after["loss"] - before["loss"],
                "tokens": after["tokens"],
                "source": after["source"],
            }
        }

    def correct(self, key: str, columns: dict):
        return columns["correct"].astype(bool) if key == "em" else None

    def resampled(self, key: str, columns: dict, idx, num_labels: int | None):
        """Exact match (the share correct) or the response perplexity of each resample of examples."""
        import numpy as np

        if key == "em":
            return columns["correct"].astype(np.float64)[idx].mean(1)
        if key == "ppl":
            return resampled_ppl(columns, idx)
        raise KeyError(key)
