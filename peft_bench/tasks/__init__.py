"""The task kinds: classification (one text or a pair), regression, causal language modelling and
instruction tuning scored by generation, one
object each (tasks/base.py says what a task owns). `task_for(dataset_config)` is the task a run is
scored by; `task_of(results)` the task of a results.json record. Adding a task kind: docs/data.md."""

from __future__ import annotations

from peft_bench.tasks.base import METRICS, Metric, Task, column
from peft_bench.tasks.causal_lm import CausalLMTask
from peft_bench.tasks.classification import ClassificationTask
from peft_bench.tasks.generation import GenerationTask
from peft_bench.tasks.regression import RegressionTask

CLASSIFICATION = ClassificationTask(
    name="classification",
    label="classification",
    schema="dataset_schema",
    datamodule="peft_bench.data.classification.TextClassificationDataModule",
    auto_class_name="AutoModelForSequenceClassification",
    peft_task_type="SEQ_CLS",
    metric_keys=("acc", "precision", "recall", "f1", "mcc"),
    default_metric="acc",
    shown=("acc", "f1"),
    has_classes=True,
    spec=".4f",
    trains_head=True,
    length_key="max_length",
    models_hint="a classification encoder (distilbert, bert_base, roberta_base, minilm, tiny)",
)
REGRESSION = RegressionTask(
    name="regression",
    label="regression",
    schema="dataset_schema",
    datamodule="peft_bench.data.classification.TextClassificationDataModule",
    auto_class_name="AutoModelForSequenceClassification",
    peft_task_type="SEQ_CLS",
    metric_keys=("pearson", "spearman", "mse"),
    default_metric="pearson",
    shown=("pearson", "spearman"),
    has_classes=False,
    spec=".4f",
    trains_head=True,
    length_key="max_length",
    models_hint="a classification encoder (distilbert, bert_base, roberta_base, minilm, tiny)",
)
CAUSAL_LM = CausalLMTask(
    name="causal_lm",
    label="causal language modelling",
    schema="lm_dataset_schema",
    datamodule="peft_bench.data.causal_lm.CausalLMDataModule",
    auto_class_name="AutoModelForCausalLM",
    peft_task_type="CAUSAL_LM",
    metric_keys=("ppl",),
    default_metric="ppl",
    shown=("ppl",),
    has_classes=False,
    spec=".2f",
    trains_head=False,
    length_key="block_size",
    models_hint="a causal language model (gpt2, distilgpt2, smollm2, tiny_llama)",
)
GENERATION = GenerationTask(
    name="generation",
    label="instruction tuning, scored by generation",
    schema="instruction_dataset_schema",
    datamodule="peft_bench.data.instruction.InstructionDataModule",
    auto_class_name="AutoModelForCausalLM",
    peft_task_type="CAUSAL_LM",
    metric_keys=("em", "ppl"),
    default_metric="em",
    shown=("em", "ppl"),
    has_classes=False,
    spec=".4f",
    trains_head=False,
    length_key="max_length",
    models_hint="a causal language model (gpt2, distilgpt2, smollm2, tiny_llama)",
    figures=(
        ("Forgetting (loss rise)", "forgetting.rise", ".4f"),
        ("Generation (tokens/s)", "generation_tokens_per_s", ".1f"),
    ),
)
TASKS = {t.name: t for t in (CLASSIFICATION, REGRESSION, CAUSAL_LM, GENERATION)}


def get_task(name: str) -> Task:
    """A task kind with its default primary metric."""
    return TASKS[name]


def task_for(dataset) -> Task:
    """The task a dataset config is scored by: its kind, its primary metric, its extra test splits."""
    return TASKS[dataset.task if hasattr(dataset, "task") else dataset["task"]].bind(dataset)


class _Fields:
    def __init__(self, d: dict):
        self.__dict__.update(d)


def task_of(results: dict) -> Task:
    """The task of a results.json record (its config; records without one: by its scores)."""
    dataset = (results.get("config") or {}).get("dataset") or {}
    name = dataset.get("task")
    if name not in TASKS:
        name = "causal_lm" if "val_ppl" in results else "classification"
    metric = dataset.get("metric")
    if metric is None and name == "classification" and "metric" not in dataset:
        metric = "f1"  # a record from before dataset.metric: its checkpoint was picked by val F1
    return TASKS[name].bind(
        _Fields(
            {
                "metric": metric,
                "extra_test_splits": dataset.get("extra_test_splits"),
                "report_metrics": dataset.get("report_metrics"),
            }
        )
    )


__all__ = [
    "CAUSAL_LM",
    "CLASSIFICATION",
    "METRICS",
    "REGRESSION",
    "TASKS",
    "Metric",
    "Task",
    "column",
    "get_task",
    "task_for",
    "task_of",
]
