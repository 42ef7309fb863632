"""What a task is, in one place: classification (sequence labels, accuracy/F1) and causal language
modelling (next token, perplexity). Everything that differs between them (the model's Auto class and
PEFT task type, the metrics and how they are updated, the monitored score and its direction, the
report's score columns, whether a task head is trained in full) is read from these objects; nothing
else tests the task's name. Heavy libraries are imported only where they are needed, so the report
reads a task without loading torch models."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str  # dataset.task
    label: str  # in words, for reports
    auto_class_name: str  # transformers Auto class with this task's head
    peft_task_type: str  # peft.TaskType member name
    monitor: str  # the validation metric that picks the best checkpoint
    higher_is_better: bool
    score: str  # the primary test figure of a run (results.json key)
    select_by: str  # the validation figure a method's best setting is chosen by
    val_scores: tuple[str, ...]  # results.json keys of the validation table columns
    test_scores: tuple[str, ...]
    comparison_scores: tuple[str, ...]  # the test figures of the report's method comparison
    score_label: str  # the primary test figure in words
    select_label: str  # the selection figure in words
    curve_metric: str  # the logged validation metric of the training-curve plot
    has_classes: bool  # labels with a majority class (a chance level to show)
    spec: str  # number format of its scores
    trains_head: bool  # a new task head, trained in full beside the adapters
    length_key: str  # the dataset key that caps a sequence's tokens
    models_hint: str  # the model options that have this head

    @property
    def mode(self) -> str:
        return "max" if self.higher_is_better else "min"

    def better(self, a: float, b: float) -> bool:
        return a > b if self.higher_is_better else a < b

    def auto_class(self):
        import transformers

        return getattr(transformers, self.auto_class_name)

    def task_type(self):
        from peft import TaskType

        return getattr(TaskType, self.peft_task_type)

    def metrics(self, num_labels: int | None):
        """The torchmetrics collection a split is scored with."""
        raise NotImplementedError

    def update(self, metrics, logits, labels) -> None:
        """Feed one batch's logits and labels to the metrics."""
        raise NotImplementedError


class ClassificationTask(Task):
    def metrics(self, num_labels: int | None):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import Accuracy, F1Score, Precision, Recall

        kind = (
            {"task": "binary"}
            if num_labels == 2
            else {"task": "multiclass", "num_classes": num_labels, "average": "macro"}
        )
        return MetricCollection(
            {
                "acc": Accuracy(**kind),
                "precision": Precision(**kind),
                "recall": Recall(**kind),
                "f1": F1Score(**kind),
            }
        )

    def update(self, metrics, logits, labels) -> None:
        metrics.update(logits.argmax(-1), labels)


class CausalLMTask(Task):
    def metrics(self, num_labels: int | None):
        from torchmetrics import MetricCollection
        from torchmetrics.text import Perplexity

        # token-weighted over the whole split: exp(total NLL / predicted tokens)
        return MetricCollection({"ppl": Perplexity(ignore_index=-100)})

    def update(self, metrics, logits, labels) -> None:
        metrics.update(logits[:, :-1].float(), labels[:, 1:])  # token t predicts token t+1


CLASSIFICATION = ClassificationTask(
    name="classification",
    label="classification",
    auto_class_name="AutoModelForSequenceClassification",
    peft_task_type="SEQ_CLS",
    monitor="val/f1",
    higher_is_better=True,
    score="test_acc",
    select_by="val_f1",
    val_scores=("val_f1", "val_acc"),
    test_scores=("test_f1", "test_acc"),
    comparison_scores=("test_acc", "test_f1"),
    score_label="test accuracy",
    select_label="val F1",
    curve_metric="val/acc",
    has_classes=True,
    spec=".4f",
    trains_head=True,
    length_key="max_length",
    models_hint="a classification encoder (distilbert, bert_base, minilm, tiny)",
)
CAUSAL_LM = CausalLMTask(
    name="causal_lm",
    label="causal language modelling",
    auto_class_name="AutoModelForCausalLM",
    peft_task_type="CAUSAL_LM",
    monitor="val/ppl",
    higher_is_better=False,
    score="test_ppl",
    select_by="val_ppl",
    val_scores=("val_ppl",),
    test_scores=("test_ppl",),
    comparison_scores=("test_ppl",),
    score_label="test perplexity",
    select_label="val perplexity",
    curve_metric="val/ppl",
    has_classes=False,
    spec=".2f",
    trains_head=False,
    length_key="block_size",
    models_hint="a causal language model (gpt2, distilgpt2, smollm2, tiny_llama)",
)
TASKS = {t.name: t for t in (CLASSIFICATION, CAUSAL_LM)}


def column(key: str) -> str:
    """A score key as a table header: val_f1 -> Val F1, test_ppl -> Test PPL."""
    split, metric = key.split("_", 1)
    return f"{split.title()} {metric.upper() if metric in ('f1', 'ppl') else metric.title()}"


def get_task(name: str) -> Task:
    return TASKS[name]


def task_of(results: dict) -> Task:
    """The task of a results.json record (its config; records without one: by its scores)."""
    name = (results.get("config") or {}).get("dataset", {}).get("task")
    if name in TASKS:
        return TASKS[name]
    return CAUSAL_LM if "val_ppl" in results else CLASSIFICATION
