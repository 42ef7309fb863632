"""Causal language modelling: next-token cross-entropy (the model's own loss), scored by perplexity
over every predicted token of a split."""

from __future__ import annotations

from peft_bench.tasks.base import Task


class CausalLMTask(Task):
    def metrics(self, num_labels: int | None):
        from torchmetrics import MetricCollection
        from torchmetrics.text import Perplexity

        # token-weighted over the whole split: exp(total NLL / predicted tokens)
        return MetricCollection({"ppl": Perplexity(ignore_index=-100)})

    def update(self, metrics, logits, labels) -> None:
        metrics.update(logits[:, :-1].float(), labels[:, 1:])  # token t predicts token t+1
