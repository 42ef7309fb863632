"""What the per-example test answers (each run's predictions.parquet) add to the report: two runs compared
on the same test examples (exact McNemar where the primary metric is a share right: accuracy, exact
match; else a paired bootstrap over examples), which is what a single-seed sweep can say; and an interval
that resamples test examples within the seeds as well as the seeds (a two-level bootstrap). A run's
answers are used only when they are the file it wrote (its digest) and give back its recorded test
figure; else the report says why."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peft_bench.predictions import PREDICTIONS_FILE, read_predictions
from peft_bench.report.stats import ALPHA, Bounded, McNemar, holm, mcnemar
from peft_bench.tasks import Task

BOOT_EXAMPLES = 2_000  # resamples of the test examples
EXAMPLES_SEED = 0  # their generator: the same runs give the same report
AGREE = 1e-4  # a recomputed test figure within this (relative, or absolute near 0) of results.json's


@dataclass(frozen=True)
class Answers:
    """A run's answers on its test split, and the label count its metrics were computed with."""

    columns: dict[str, np.ndarray]
    num_labels: int | None
    # the data the run was scored on: its raw data's fingerprint, and for packed blocks (no label of
    # their own) the tokenized data's cache key, which the tokenizer and the block size are part of
    source: tuple = ()

    @property
    def examples(self) -> np.ndarray:
        return self.columns["example"]

    def same_examples(self, other: Answers) -> bool:
        """Whether the two runs were scored on the same examples: the same rows, with the same labels."""
        if self.source != other.source:
            return False
        if len(self.examples) != len(other.examples) or not (self.examples == other.examples).all():
            return False
        key = next((k for k in ("label", "gold", "tokens") if k in self.columns), None)
        return (
            key is not None and key in other.columns and bool((self.columns[key] == other.columns[key]).all())
        )


# (the file, its mtime and size, its recorded SHA-256, the score) -> answers_of's answer: a report
# reads, hashes and checks each file once, though the seed statistics and the pairs both ask for it
_READ: dict[tuple, tuple[Answers | None, str | None]] = {}


def answers_of(run: dict, task: Task) -> tuple[Answers | None, str | None]:
    """A run's test answers, or None and why not: no file (a run older than them), a file that is not the
    one it wrote, or answers that do not give back its recorded figure."""
    record = run.get("predictions") or {}
    path = Path(run.get("_dir", "")) / record.get("file", PREDICTIONS_FILE)
    stat = path.stat() if path.is_file() else None  # a file changed since it was read is read again
    seen = (stat.st_mtime_ns, stat.st_size) if stat else None
    key = (str(path), seen, record.get("sha256"), task.score, run.get(task.score))
    if key not in _READ:
        _READ[key] = read_answers(run, task)
    return _READ[key]


def read_answers(run: dict, task: Task) -> tuple[Answers | None, str | None]:
    try:
        columns = read_predictions(Path(run["_dir"]), run.get("predictions"))
    except (ValueError, OSError) as e:
        return None, str(e)
    num_labels = (run.get("config", {}).get("dataset") or {}).get("num_labels")
    data = run.get("data") or {}
    blocks = "label" not in columns and "gold" not in columns
    answers = Answers(
        columns, num_labels, (data.get("raw_fingerprint"), data.get("cache_key") if blocks else None)
    )
    recorded = run.get(task.score)
    if not isinstance(recorded, int | float):
        return None, f"no {task.score} in its results.json"
    again = float(task.resampled(task.key, columns, np.arange(len(answers.examples))[None], num_labels)[0])
    if not math.isclose(again, recorded, rel_tol=AGREE, abs_tol=AGREE):
        return None, f"its predictions.parquet gives {task.score} {again:.6g}, results.json {recorded:.6g}"
    return answers, None


def resamples(n: int, count: int = BOOT_EXAMPLES, seed: int = EXAMPLES_SEED) -> np.ndarray:
    """(count, n) row indices: `count` bootstrap resamples of n examples, from a seeded generator."""
    return np.random.default_rng(seed).integers(0, n, (count, n))


def percentile(values: np.ndarray, level: float, low: float, high: float) -> tuple[float, float]:
    tail = (1 - level) / 2
    lo, hi = np.quantile(values, [tail, 1 - tail])
    return min(max(float(lo), low), high), max(min(float(hi), high), low)


# --------------------------------------------------------------------------- two runs, example by example


@dataclass(frozen=True)
class ExamplePair:
    """Run a against run b on the same test examples: Δ (a − b, the recorded figures), its paired bootstrap
    interval (95%) and the 90% one TOST's analogue reads, the test's p (McNemar's exact one on
    correctness where the metric is accuracy, else the paired bootstrap's two-sided p), the Holm-adjusted
    p and the verdict, once the family is known."""

    a: str
    b: str
    seeds: str
    examples: int
    delta: float
    interval: Bounded
    inner: tuple[float, float]  # the 90% interval: within ±margin is "equivalent"
    test: str
    p: float
    p_holm: float | None = None
    verdict: str = "undecided"


def example_pair(
    names: tuple[str, str],
    seeds: str,
    answers: tuple[Answers, Answers],
    task: Task,
    bounds: tuple[float, float],
) -> ExamplePair:
    """The comparison of two runs' answers on the same examples (Answers.same_examples)."""
    (a, b), key = answers, task.key
    n = len(a.examples)
    idx = np.concatenate([np.arange(n)[None], resamples(n)])
    diffs = task.resampled(key, a.columns, idx, a.num_labels) - task.resampled(
        key, b.columns, idx, b.num_labels
    )
    delta, boot = float(diffs[0]), diffs[1:]
    width = bounds[1] - bounds[0]
    lo, hi = percentile(boot, 0.95, -width, width)
    inner = percentile(boot, 1 - 2 * ALPHA, -width, width)
    right = [task.correct(key, x.columns) for x in (a, b)]
    if right[0] is not None:  # a share of examples right (accuracy, exact match): McNemar on them
        m: McNemar = mcnemar(right[0].tolist(), right[1].tolist())
        test, p = f"McNemar ({m.only_a} / {m.only_b})", m.p
    else:  # two-sided: twice the smaller share of resampled differences on either side of 0
        p = min(1.0, 2 * min(float((boot <= 0).mean()), float((boot >= 0).mean())))
        test = "paired bootstrap"
    return ExamplePair(names[0], names[1], seeds, n, delta, Bounded(n, delta, lo, hi), inner, test, p)


def example_verdicts(pairs: list[ExamplePair], margin: float, higher_is_better: bool) -> list[ExamplePair]:
    """Each pair with its Holm-adjusted p (over these pairs) and verdict: better or worse where it is below
    alpha; equivalent where the 90% interval lies within ±margin; else undecided."""
    adjusted = holm([p.p for p in pairs])
    out = []
    for pair, p_holm in zip(pairs, adjusted, strict=True):
        if p_holm < ALPHA:
            word = "better" if (pair.delta > 0) == higher_is_better else "worse"
        elif -margin < pair.inner[0] and pair.inner[1] < margin:
            word = "equivalent"
        else:
            word = "undecided"
        out.append(ExamplePair(**{**pair.__dict__, "p_holm": p_holm, "verdict": word}))
    return out


# --------------------------------------------------------------------------- seeds and examples together


def two_level_interval(
    answers: list[Answers], task: Task, bounds: tuple[float, float], level: float = 0.95
) -> Bounded | None:
    """The percentile interval of a setting's mean figure over seeds, resampling the seeds (with
    replacement) and, in the same draw, the test examples (one resample of the rows for all its seeds:
    they were scored on the same examples); None when the runs' examples differ. With one seed it is the
    interval over examples alone."""
    if any(not x.same_examples(answers[0]) for x in answers[1:]):
        return None
    n, seeds = len(answers[0].examples), len(answers)
    idx = resamples(n)
    figures = np.stack([task.resampled(task.key, x.columns, idx, x.num_labels) for x in answers])  # seeds × B
    drawn = np.random.default_rng(EXAMPLES_SEED + 1).integers(0, seeds, (idx.shape[0], seeds))
    means = figures[drawn, np.arange(idx.shape[0])[:, None]].mean(1)
    lo, hi = percentile(means, level, *bounds)
    point = float(
        np.mean([task.resampled(task.key, x.columns, np.arange(n)[None], x.num_labels) for x in answers])
    )
    return Bounded(seeds, point, lo, hi)


def setting_answers(runs: list[dict], task: Task) -> tuple[dict[int, Answers], list[str]]:
    """{seed: answers} of the runs whose answers can be used, and a sentence for each run whose file
    exists but cannot (not the file it wrote, or not its figures); a run without one is not listed."""
    found, refused = {}, []
    for r in runs:
        answers, why = answers_of(r, task)
        if answers is not None:
            found[r["seed"]] = answers
        elif r.get("predictions"):
            refused.append(f"{r['_dir']}: {why}")
    return found, refused
