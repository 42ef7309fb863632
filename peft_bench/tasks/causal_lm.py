"""Causal language modelling: next-token cross-entropy (the model's own loss), scored by perplexity
over every predicted token of a split."""

from __future__ import annotations

from peft_bench.tasks.base import Task, resampled_ppl, token_nll


class CausalLMTask(Task):
    def metrics(self, num_labels: int | None):
        from torchmetrics import MetricCollection
        from torchmetrics.text import Perplexity

        # token-weighted over the whole split: exp(total NLL / predicted tokens)
        return MetricCollection({"ppl": Perplexity(ignore_index=-100)})

    def update(self, metrics, logits, labels) -> None:
        metrics.update(logits[:, :-1].float(), labels[:, 1:])  # token t predicts token t+1

    def resampled(self, key: str, columns: dict, idx, num_labels: int | None):
        """Perplexity of each resample of blocks: exp(its NLL / its tokens)."""
        if key != "ppl":
            raise KeyError(key)
        return resampled_ppl(columns, idx)

    def example_columns(self, logits, labels) -> dict:
        """Per block: its summed next-token NLL and its predicted tokens (the split's perplexity is
        exp(sum of nll / sum of tokens))."""
        nll, tokens = token_nll(logits, labels)
        return {"nll": nll, "tokens": tokens}
