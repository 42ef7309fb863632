"""The report's markdown tables: runs by setting, the method comparison, seed statistics, 4-bit base
memory, and the benchmark (GLUE) table PEFT papers print over several datasets, with the trivial
predictor's row."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from statistics import fmean

from peft_bench.report.examples import (
    BOOT_EXAMPLES,
    ExamplePair,
    example_pair,
    example_verdicts,
    setting_answers,
    two_level_interval,
)
from peft_bench.report.runs import BASELINE, Setting, baseline_for, best, label_settings, nested_values
from peft_bench.report.significance import BOOT_RANKS, Pair, p_best, verdicts
from peft_bench.report.stats import (
    ALPHA,
    MIN_BOOTSTRAP,
    RESAMPLES,
    bounded_interval,
    interval,
    mean_std,
    paired_test,
    paired_text,
    seeds_text,
)
from peft_bench.tasks import METRICS, Metric, Task, column


def fmt(values: list[float], spec: str) -> str:
    """A table cell: `mean ± sample std` over seeds, the value alone for one seed, - for none."""
    if not values:
        return "-"
    mean, std = mean_std(values)
    return format(mean, spec) if std is None else f"{format(mean, spec)} ± {format(std, spec)}"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *["| " + " | ".join(row) + " |" for row in rows],
    ]


def params(s: Setting) -> tuple[str, str]:
    """A setting's trainable / total parameters, and their ratio."""
    r = s.runs[0]
    return (
        f"{r['trainable_params']:,} / {r['total_params']:,}",
        f"{r['trainable_params'] / r['total_params']:.3%}",
    )


def runs_by_setting(settings: list[Setting]) -> list[str]:
    """The runs by setting: one row per setting, its figures as mean ± sample std over its seeds."""
    task = settings[0].task
    scores = [(column(k), k, task.spec) for k in (*task.val_scores, *task.test_scores)]
    header = [
        "Method",
        "Rank",
        "Setting",
        "Seeds",
        "Trainable Params / Total",
        "Ratio",
        *[h for h, _, _ in scores],
        "Sparsity (<1e-3)",
        "Train Time (s)",
    ]
    rows = [
        [
            s.method + warned(s),
            str(s.rank) if s.rank is not None else "-",
            s.label or "-",
            str(len(s.runs)),
            *params(s),
            *[fmt(s.values(k), spec) for _, k, spec in scores],
            fmt(s.values("sparsity_below_1e-3"), ".3f"),
            fmt(s.values("train_time_s"), ".1f"),
        ]
        for s in settings
    ]
    return md_table(header, rows)


def warned(s: Setting) -> str:
    """A mark on a setting whose runs carry warnings (single-class split, ...): listed under Warnings."""
    return " ⚠" if any(r.get("warnings") for r in s.runs) else ""


def pruning_change(s: Setting) -> str:
    """Test score before -> after one-shot pruning (mean over seeds), where a run pruned after training."""
    before = [r["before_pruning"][s.score] for r in s.runs if s.score in r.get("before_pruning", {})]
    if not before:
        return "-"
    after = [r[s.score] for r in s.runs if "before_pruning" in r]
    spec = s.task.spec
    return f"{format(fmean(before), spec)} → {format(fmean(after), spec)}"


def method_comparison(settings: list[Setting]) -> tuple[list[str], list[Setting]]:
    """The method comparison: each method's best setting by validation, its test figures and costs; and
    those settings."""
    task = settings[0].task
    chosen = [best([s for s in settings if s.method == m]) for m in dict.fromkeys(s.method for s in settings)]
    scores = [(column(k), k, task.spec) for k in task.comparison_scores]
    header = [
        "Method",
        f"Best setting (by {task.select_label})",
        "Seeds",
        *[h for h, _, _ in scores],
        "Trainable Params",
        "Train Time (s)",
        "Time / Epoch (s)",
        "Peak Memory (MiB)",
        "Latency (ms/example)",
        "Merged Latency",
        "Sparsity (<1e-3)",
        "Test Before → After Pruning",
        *[h for h, _, _ in task.figures],
    ]
    rows = []
    for s in chosen:
        setting = " ".join(x for x in (f"rank={s.rank}" if s.rank is not None else "", s.label) if x) or "-"
        rows.append(
            [
                s.method + warned(s),
                setting,
                str(len(s.runs)),
                *[fmt(s.values(k), spec) for _, k, spec in scores],
                f"{s.runs[0]['trainable_params']:,}",
                fmt(s.values("train_time_s"), ".1f"),
                fmt(s.values("mean_time_per_epoch_s"), ".1f"),
                fmt([v / 2**20 for v in s.values("peak_memory_bytes")], ".0f"),
                fmt(s.values("inference_latency_ms_per_example"), ".3f"),
                fmt(s.values("inference_latency_merged_ms_per_example"), ".3f"),
                fmt(s.values("sparsity_below_1e-3"), ".3f"),
                pruning_change(s),
                *[fmt(nested_values(s, key), spec) for _, key, spec in task.figures],
            ]
        )
    return md_table(header, rows), chosen


def scores_by_seed(s: Setting) -> dict[int, float | None]:
    """{seed: the primary test figure} of a setting's runs."""
    return {r["seed"]: r.get(s.score) for r in s.runs}


def seed_statistics(settings: list[Setting]) -> list[str]:
    """Each setting's mean, std and 95% bootstrap interval over seeds (within the metric's range), and its
    paired t-test against LoRA; [] when no setting ran two seeds."""
    if not any(len(s.runs) >= 2 for s in settings):
        return []
    task = settings[0].task
    score, spec = task.score_label, task.spec
    rows = []
    bounds = metric_of(task.score).bounded or (-math.inf, math.inf)
    for s in settings:
        values = s.values(s.score)
        base = baseline_for(s, settings)
        vs = paired_text(paired_test(scores_by_seed(s), scores_by_seed(base)) if base else None, spec)
        rows.append(
            [
                s.method,
                " ".join(x for x in (f"rank={s.rank}" if s.rank is not None else "", s.label) if x) or "-",
                str(len(s.runs)),
                ", ".join(map(str, s.seeds)),
                "-" if len(values) < 2 else fmt(values, spec),
                "-" if len(values) < 2 else bounded_interval(values, *bounds).text(spec),
                examples_interval(s, bounds),
                vs,
            ]
        )
    header = [
        "Method",
        "Setting",
        "n",
        "Seeds",
        f"Mean ± Std ({score})",
        "95% Interval",
        "95% Interval, Seeds × Examples",
        "vs LoRA: Δ (paired t-test)",
    ]
    note = (
        "Mean ± sample standard deviation over seeds; 95% interval: percentile bootstrap of the mean over "
        f"seeds (scipy.stats.bootstrap, {RESAMPLES:,} resamples, seeded), within the metric's range; not "
        f"informative below {MIN_BOOTSTRAP} seeds, and at 3 it is the seeds' range (docs/report.md). "
        f"vs LoRA: {score} minus that of the LoRA setting of the same model and rank (else the best LoRA "
        f"by validation), over the seeds both ran; two-sided paired t-test (scipy.stats.ttest_rel), "
        f"* where p < {ALPHA} (no variance: the same difference on every seed, so no t-test). With 3–5 "
        "seeds only large, consistent differences reach significance. Seeds × examples: the same "
        f"percentile interval with the test examples resampled too ({BOOT_EXAMPLES:,} draws, each of "
        "the seeds and, for all of them together, of the examples: each run's predictions.parquet), so "
        "it also holds the test set's sampling noise; one seed: over the examples alone (seed noise "
        "unmeasured); - where a run has no usable predictions.parquet."
    )
    return ["", "### Seed statistics", "", note, "", *md_table(header, rows)]


def examples_interval(s: Setting, bounds: tuple[float, float]) -> str:
    """A setting's interval over seeds and test examples (its runs' answers), as the table prints it; a
    run whose answers are refused is named under the pairs on one seed (example_pairs)."""
    task = s.task
    found, _ = setting_answers(s.runs, task)
    if not found or len(found) < len(s.runs):
        return "-"
    if len(found) == 2:
        return f"not informative (n={len(found)})"
    b = two_level_interval(list(found.values()), task, bounds)
    if b is None:
        return "- (its seeds were scored on different test examples)"
    return f"examples only: {b.text(task.spec)}" if b.n == 1 else b.text(task.spec)


def refused_lines(refused: list[str]) -> list[str]:
    if not refused:
        return []
    return [
        "",
        "Per-example answers not used (the run's figures are): " + "; ".join(sorted(set(refused))) + ".",
    ]


# --------------------------------------------------------------------------- pairwise verdicts

MARGIN_POINT = 0.01  # the default margin of a metric with a range: one point as the tables print it, ×100
MARGIN_SHARE = 0.01  # of one without (perplexity, MSE): 1% of the dataset's mean figure


def default_margin(settings: list[Setting]) -> float:
    """The difference the pairwise verdicts call negligible when --margin is not given: one point (0.01)
    of a metric with a range (accuracy, F1, MCC, correlations: 0.01 printed ×100 is 1.0); for one without,
    1% of the mean primary test figure over the dataset's runs (perplexity 25: 0.25)."""
    task = settings[0].task
    if metric_of(task.score).bounded:
        return MARGIN_POINT
    figures = [abs(v) for s in settings for v in s.values(s.score) if math.isfinite(v)]
    return MARGIN_SHARE * fmean(figures) if figures and fmean(figures) > 0 else MARGIN_POINT


def pair_name(s: Setting) -> str:
    """A setting in the pairwise tables: its method and the seed statistics' Setting cell."""
    return " ".join(x for x in (s.method, f"rank={s.rank}" if s.rank is not None else "", s.label) if x)


def seeded_figures(settings: list[Setting]) -> tuple[dict[str, dict[int, float]], list[str]]:
    """{name: {seed: primary test figure}} of the settings that ran two or more seeds (every setting, as in
    the seed statistics); and the names of those left out for a non-finite figure (a diverged run)."""
    samples, diverged = {}, []
    for s in settings:
        figures = {seed: float(v) for seed, v in scores_by_seed(s).items() if isinstance(v, int | float)}
        if len(figures) < 2:
            continue
        name = pair_name(s)
        if not all(math.isfinite(v) for v in figures.values()):
            diverged.append(name)
            continue
        samples[name if name not in samples else f"{name} ({len(samples) + 1})"] = figures
    return samples, diverged


def verdict_row(pair: Pair, spec: str) -> list[str]:
    """A pair's row: A, B, n, Δ, its interval, Holm p, TOST p, the verdict, seeds needed if undecided."""

    def p_text(p: float | None) -> str:
        return "-" if p is None else f"{p:.3g}"

    needed = "-"
    if pair.verdict == "undecided":
        needed = "- (no variance)"
        if pair.seeds_for is not None:
            needed = f"{seeds_text(pair.seeds_needed)} (Δ {pair.seeds_for:{spec}})"
    return [
        pair.a,
        pair.b,
        str(pair.n),
        f"{pair.delta:+{spec}}",
        pair.interval.text("+" + spec),
        p_text(pair.p_holm),
        p_text(pair.p_tost),
        pair.verdict,
        needed,
    ]


def verdict_notes(task: Task, margin: float, tested: int) -> tuple[str, str]:
    """The notes over the pairs' table and over the P(best) table."""
    score, spec = task.score_label, task.spec
    pairs = (
        f"Every pair of settings that ran two or more of the same seeds, over the seeds both ran. Δ: A's "
        f"{score} minus B's; 95% interval: percentile bootstrap of the per-seed differences (not "
        f"informative below {MIN_BOOTSTRAP} seeds). Holm p: two-sided paired t-test, Holm-adjusted over the "
        f"{tested} tested pairs (-: every seed differs by the same, no t-test). TOST p: two one-sided paired "
        f"t-tests that |Δ| < {margin:{spec}} (the margin, `--margin`), not adjusted. Verdict, A against B: "
        f"better or worse where Holm p < {ALPHA}; equivalent where TOST p < {ALPHA}; else undecided, with "
        f"the seeds a paired t-test at α = {ALPHA} / {max(tested, 1)} (enough under Holm) and power 0.8 "
        "needs for the observed Δ (for one margin where |Δ| is smaller), from the observed sd of the "
        "differences: with few seeds, an order of magnitude."
    )
    ranks = (
        f"P(best): the share of {BOOT_RANKS:,} bootstrap resamples of the seeds (those every setting ran, "
        f"drawn together, where they share two) in which the setting has the "
        f"{'highest' if task.higher_is_better else 'lowest'} mean {score}, ties sharing; rank interval: the "
        "central 95% of its ranks over them (1: the best)."
    )
    return pairs, ranks


def pairwise_verdicts(settings: list[Setting], margin: float | None = None) -> list[str]:
    """Every pair of the dataset's settings that share two or more seeds, over those seeds: the mean
    difference and its bootstrap interval, the Holm-adjusted paired t-test, TOST against `margin` (None:
    default_margin), the verdict, the seeds an undecided pair needs; then each setting's P(best) and rank
    interval; then the pairs that do not share two seeds, compared on one seed's test examples where their
    runs kept them (example_pairs). [] when there is neither."""
    margin = default_margin(settings) if margin is None else margin
    return seed_pairs(settings, margin) + example_pairs(settings, margin)


def one_seed_each(a: Setting, b: Setting, x: dict, y: dict) -> tuple[str, tuple] | None:
    """The one run of each of two settings to compare example by example: of their one shared seed with
    answers, or, sharing none, each one's only run; None otherwise (or when they share two seeds: the
    seed-level pairs compare them). x, y: their {seed: answers}."""
    shared = sorted(set(a.seeds) & set(b.seeds))
    if len(shared) >= 2:
        return None
    if shared:
        return (str(shared[0]), (x[shared[0]], y[shared[0]])) if shared[0] in x and shared[0] in y else None
    if len(a.runs) == len(b.runs) == 1 and x and y:
        (sa, ra), (sb, rb) = next(iter(x.items())), next(iter(y.items()))
        return f"{sa} / {sb}", (ra, rb)
    return None


def example_pairs(settings: list[Setting], margin: float) -> list[str]:
    """The pairs of settings that share fewer than two seeds, compared on one run each over the same test
    examples (their predictions.parquet): Δ and its paired bootstrap interval over examples, McNemar's
    exact test where the metric is accuracy (else the paired bootstrap's p), Holm over these pairs, and a
    verdict; [] without such a pair."""
    task = settings[0].task
    bounds = metric_of(task.score).bounded or (-math.inf, math.inf)
    found, refused, pairs, apart = [], [], [], []
    for s in settings:
        answers, why = setting_answers(s.runs, task)
        found.append(answers)
        refused += why
    for i, a in enumerate(settings):
        for j in range(i + 1, len(settings)):
            b = settings[j]
            chosen = one_seed_each(a, b, found[i], found[j])
            if chosen is None:
                continue
            names, (seeds, answers) = (pair_name(a), pair_name(b)), chosen
            if not answers[0].same_examples(answers[1]):
                apart.append(f"{names[0]} and {names[1]}")
                continue
            pairs.append(example_pair(names, seeds, answers, task, bounds))
    if not pairs and not apart:
        return refused_lines(refused)
    lines = ["", "### Pairs on one seed, example by example", "", example_note(task, margin, len(pairs)), ""]
    if pairs:
        pairs = example_verdicts(pairs, margin, task.higher_is_better)
        header = ["A", "B", "Seed", "Examples", f"Δ A − B ({task.score_label})", "95% Interval"]
        header += ["Test", "Holm p", "Verdict"]
        lines += md_table(header, [example_row(p, task.spec) for p in pairs])
    if apart:
        lines += ["", f"Not compared, scored on different test examples: {'; '.join(apart)}."]
    return lines + refused_lines(refused)


def example_row(pair: ExamplePair, spec: str) -> list[str]:
    return [
        pair.a,
        pair.b,
        pair.seeds,
        f"{pair.examples:,}",
        f"{pair.delta:+{spec}}",
        pair.interval.text("+" + spec),
        f"{pair.test}: p={pair.p:.3g}",
        f"{pair.p_holm:.3g}",
        pair.verdict,
    ]


def example_note(task: Task, margin: float, tested: int) -> str:
    return (
        f"Pairs that do not share two seeds, compared on one run each (their shared seed; or, sharing none, "
        f"each one's only run) over the same test examples, from the runs' predictions.parquet. Δ: A's "
        f"{task.score_label} minus B's; 95% interval: paired bootstrap over the examples ({BOOT_EXAMPLES:,} "
        "resamples, seeded). Test: where the metric is a share right (accuracy, exact match), the exact "
        "McNemar test on the examples "
        "one run gets right and the other wrong (A only / B only); else the paired bootstrap's two-sided "
        f"p. Holm p: adjusted over the {tested} pairs. Verdict: better or worse where Holm p < {ALPHA}; "
        f"equivalent where the 90% bootstrap interval lies within ±{margin:{task.spec}} (`--margin`); else "
        "undecided. One seed measures the test set's noise, not the seed's: a verdict here says these two "
        "trained models differ on this test set, and needs more seeds to say the methods do."
    )


def seed_pairs(settings: list[Setting], margin: float) -> list[str]:
    """The seed-level pairs' table and the P(best) table ([] when no two settings share two seeds)."""
    task = settings[0].task
    samples, diverged = seeded_figures(settings)
    bounds = metric_of(task.score).bounded or (-math.inf, math.inf)
    pairs = verdicts(samples, margin, task.higher_is_better, bounds)
    if not pairs:
        return []
    score, spec = task.score_label, task.spec
    pairs_note, ranks_note = verdict_notes(task, margin, sum(p.p is not None for p in pairs))
    header = ["A", "B", "n", f"Δ A − B ({score})", "95% Interval", "Holm p", "TOST p", "Verdict"]
    header.append("Seeds Needed")
    rank_rows = [
        [name, str(len(samples[name])), f"{fmean(samples[name].values()):{spec}}", f"{r.p_best:.2f}"]
        + [str(r.low) if r.low == r.high else f"{r.low}–{r.high}"]
        for name, r in p_best(samples, task.higher_is_better).items()
    ]
    lines = ["", "### Pairwise verdicts", "", pairs_note, ""]
    lines += md_table(header, [verdict_row(p, spec) for p in pairs])
    lines += ["", ranks_note, ""]
    lines += md_table(["Setting", "n", f"Mean ({score})", "P(best)", "95% Rank Interval"], rank_rows)
    if diverged:
        lines += ["", f"Left out: {', '.join(diverged)} (a non-finite figure: a diverged run)."]
    return lines


def qlora_memory(settings: list[Setting]) -> list[str]:
    """The 4-bit base memory of each QLoRA setting against its LoRA setting; [] without one."""
    rows = []
    for s in settings:
        if "quantization" not in s.runs[0]:  # the figures of a 4-bit base
            continue
        q = s.runs[0]["quantization"]
        base = baseline_for(s, settings)
        peak, base_peak = s.mean("peak_memory_bytes"), base.mean("peak_memory_bytes") if base else None
        rows.append(
            [
                f"rank={s.rank}" if s.rank is not None else "-",
                f"{q['quantized_linear_weight_bytes'] / 2**20:.1f} / "
                f"{q['quantized_linear_weight_bytes_fp32'] / 2**20:.1f}",
                f"{q['quantized_linear_weight_ratio']:.3f}×",
                f"{q['base_weight_bytes'] / 2**20:.1f} / {q['base_weight_bytes_fp32'] / 2**20:.1f}",
                f"{q['base_weight_ratio']:.3f}×",
                "-" if peak is None else f"{peak / 2**20:.0f}",
                "-" if base_peak is None else f"{base_peak / 2**20:.0f}",
                "-" if not (peak and base_peak) else f"{peak / base_peak:.2f}×",
            ]
        )
    if not rows:
        return []
    kind = {r.get("peak_memory_kind") for s in settings for r in s.runs} - {None}
    header = [
        "QLoRA",
        "Quantized Linear Weights (MiB, NF4 / fp32)",
        "Ratio",
        "All Weights (MiB / fp32)",
        "Ratio",
        "Peak Memory (MiB)",
        "LoRA Peak Memory (MiB)",
        "QLoRA / LoRA",
    ]
    return [
        "",
        "### 4-bit base memory",
        "",
        f"Peak memory is {', '.join(sorted(kind))} (on a CPU that includes the "
        "Python process and libraries, so weight savings show less than on a GPU).",
        "",
        *md_table(header, rows),
    ]


# --------------------------------------------------------------------------- the benchmark (GLUE) table

SCALE = 100  # a benchmark table prints a score in [0, 1] (or [-1, 1]) as PEFT papers do: 0.897 as 89.7


@dataclass
class Row:
    """A row of the benchmark table: one setting of a method, and its setting on each dataset."""

    method: str
    config: dict  # the setting's keys without its dataset's own
    cells: dict[str, Setting] = field(default_factory=dict)  # dataset -> its setting there
    label: str = ""  # set by label_settings

    @property
    def rank(self):
        return self.config.get("method.r")


def metric_of(key: str) -> Metric:
    """The metric of a score key: test_mismatched_acc -> acc."""
    return METRICS[key.rsplit("_", 1)[-1]]


def benchmark_datasets(by_dataset: dict[str, list[Setting]]) -> list[str]:
    """The datasets a benchmark table can show: those whose table metrics (task.table_scores) all have a
    range, printed ×100 (accuracy, F1, MCC, correlations); not perplexity or MSE."""
    return [
        d
        for d, settings in by_dataset.items()
        if all(metric_of(k).bounded for k in settings[0].task.table_scores)
    ]


def benchmark_rows(by_dataset: dict[str, list[Setting]], datasets: list[str]) -> list[Row]:
    """The settings of the datasets as the table's rows. A row is a setting without the keys that are its
    dataset's own (dataset.*, the data's cache key), so `-m method=lora,dora dataset=cola,mrpc` gives two
    rows of two cells; a dataset key that varies between one dataset's settings (dataset.max_train_examples=
    300,600) tells rows apart."""

    def own(k: str) -> bool:
        return k.startswith(("dataset.", "data."))

    varying = {
        k
        for d in datasets
        for k in set().union(*(s.config for s in by_dataset[d]))
        if own(k)
        and k != "data.cache_key"
        and len({json.dumps(s.config.get(k), default=str) for s in by_dataset[d]}) > 1
    }
    rows: dict[str, Row] = {}
    for d in datasets:
        for s in by_dataset[d]:
            cfg = {k: v for k, v in s.config.items() if not own(k) or k in varying}
            rows.setdefault(json.dumps(cfg, sort_keys=True, default=str), Row(s.method, cfg)).cells[d] = s
    out = list(rows.values())
    label_settings(out)
    out.sort(key=lambda r: (r.method != BASELINE, r.method, r.rank if r.rank is not None else -1, r.label))
    return out


def collapsed(s: Setting, key: str) -> bool:
    """Whether a run of the setting warns that its predictions on the split of `key` (test,
    test_mismatched) collapsed: (nearly) all one class, or nearly constant (tasks' collapse_warning)."""
    said = f"predictions on {key.rsplit('_', 1)[0]} are "
    return any(w.startswith(said) for r in s.runs for w in r.get("warnings", []))


def row_average(row: Row, datasets: list[str], tasks: dict[str, Task]) -> list[float]:
    """The row's average as GLUE computes it (×100): a dataset's score is the mean of its table scores,
    the average the mean of the datasets' scores. Per seed when every score has the same seeds (so the
    cell has a spread), else one value from the means; [] when the row lacks a dataset."""
    if any(d not in row.cells for d in datasets):
        return []
    by_seed = {
        (d, k): {r["seed"]: float(r[k]) for r in row.cells[d].runs if isinstance(r.get(k), int | float)}
        for d in datasets
        for k in tasks[d].table_scores
    }
    if not all(by_seed.values()):
        return []
    seeds = set.intersection(*(set(v) for v in by_seed.values()))

    def average(value) -> float:
        scores = [
            sum(value(d, k) for k in tasks[d].table_scores) / len(tasks[d].table_scores) for d in datasets
        ]
        return SCALE * fmean(scores)

    if all(set(v) == seeds for v in by_seed.values()):
        return [average(lambda d, k, seed=seed: by_seed[d, k][seed]) for seed in sorted(seeds)]
    return [average(lambda d, k: fmean(by_seed[d, k].values()))]


def benchmark_cell(values: list[float], intervals: bool, bounds: tuple[float, float] | None = None) -> str:
    """Mean ± sample std (×100, one decimal), with a 95% t interval where asked and there are two seeds,
    clipped to the metric's range `bounds` (×100; with 2 or 3 seeds the t interval runs far past it)."""
    text = fmt(values, ".1f")
    stats = interval(values) if intervals else None
    if not stats:
        return text
    low, high = stats[2:]
    if bounds:
        low, high = max(low, SCALE * bounds[0]), min(high, SCALE * bounds[1])
    return f"{text} [{low:.1f}, {high:.1f}]"


def bold_best(cells: list[tuple[str, float | None]], higher_is_better: bool | None) -> list[str]:
    """The cells' texts, the best mean (as printed, one decimal) in bold where two or more compete; None: no
    direction, no bold."""
    means = [round(m, 1) for _, m in cells if m is not None]
    if len(means) < 2 or higher_is_better is None:
        return [text for text, _ in cells]
    top = max(means) if higher_is_better else min(means)
    return [f"**{text}**" if m is not None and round(m, 1) == top else text for text, m in cells]


def benchmark_table(
    rows: list[Row], datasets: list[str], tasks: dict[str, Task], intervals: bool = False
) -> list[str]:
    """The table PEFT papers print: one row per setting (method), its trainable parameters, each dataset's
    table scores (task.table_scores: MRPC F1 and accuracy, MNLI matched and mismatched, ...) ×100 as mean
    ± std over seeds (with a 95% t interval where `intervals`), the average as GLUE computes it, the best
    of each column in bold; under them the trivial predictor's row (results.json's `baseline`), and the
    notes: seeds per cell, how the average is computed, ⚠ (collapsed predictions)."""
    columns = [(d, k) for d in datasets for k in tasks[d].table_scores]
    header = [
        "Method",
        "Trainable Params",
        *[f"{d} {column(k).removeprefix('Test ')}" for d, k in columns],
        "Avg.",
    ]
    grid, counts, warned_cells = score_columns(rows, columns, intervals)
    averages = [row_average(row, datasets, tasks) for row in rows]
    grid.append(average_column(averages, columns, intervals))
    body, ranged = named_rows(rows, grid)
    body.append(baseline_row(rows, columns, datasets, tasks))
    lacking = sum(1 for a in averages if not a)
    notes = benchmark_notes(tasks, counts, intervals, lacking, ranged, warned_cells)
    return [*md_table(header, body), *[line for note in notes for line in ("", note)]]


def score_columns(
    rows: list[Row], columns: list[tuple[str, str]], intervals: bool
) -> tuple[list[list[str]], set[int], int]:
    """Each (dataset, score) column's cells over the rows, its best in bold; the seed counts of its cells;
    how many cells are marked ⚠ (collapsed predictions)."""
    grid, counts, warned_cells = [], set(), 0
    for d, k in columns:
        cells = []
        for row in rows:
            s = row.cells.get(d)
            values = [SCALE * v for v in s.values(k)] if s else []
            if not values:
                cells.append(("-", None))
                continue
            counts.add(len(values))
            mark = " ⚠" if collapsed(s, k) else ""
            warned_cells += bool(mark)
            cell = benchmark_cell(values, intervals, metric_of(k).bounded)
            cells.append((cell + mark, fmean(values)))
        grid.append(bold_best(cells, metric_of(k).higher_is_better))
    return grid, counts, warned_cells


def average_column(averages: list[list[float]], columns: list[tuple[str, str]], intervals: bool) -> list[str]:
    """The Avg. column's cells, the best in bold where every column has the same direction."""
    ranges = [metric_of(k).bounded for _, k in columns]
    span = (min(b[0] for b in ranges), max(b[1] for b in ranges))  # an average of scores in those ranges
    directions = {metric_of(k).higher_is_better for _, k in columns}
    return bold_best(
        [(benchmark_cell(a, intervals, span), fmean(a)) if a else ("-", None) for a in averages],
        directions.pop() if len(directions) == 1 else None,
    )


def named_rows(rows: list[Row], grid: list[list[str]]) -> tuple[list[list[str]], bool]:
    """The table's body: each row's name (a rank in it where a method has rows of several ranks), its
    trainable parameters (lowest–highest where they differ over the datasets) and cells; and whether some
    row's parameters differ."""
    ranked = {
        m for m in {row.method for row in rows} if len({row.rank for row in rows if row.method == m}) > 1
    }
    body, ranged = [], False
    for i, row in enumerate(rows):
        name = " ".join(
            x for x in (row.method, f"rank={row.rank}" if row.method in ranked else "", row.label) if x
        )
        trainable = sorted({r["trainable_params"] for s in row.cells.values() for r in s.runs})
        ranged |= len(trainable) > 1
        body.append(
            [
                name,
                f"{trainable[0]:,}" if len(trainable) == 1 else f"{trainable[0]:,}–{trainable[-1]:,}",
                *[col[i] for col in grid],
            ]
        )
    return body, ranged


def benchmark_notes(
    tasks: dict[str, Task], counts: set[int], intervals: bool, lacking: int, ranged: bool, warned_cells: int
) -> list[str]:
    """The notes under the benchmark table: seeds per cell, how the average is computed, the trivial
    predictor, ⚠."""
    n = f"{min(counts)}" if len(counts) == 1 else f"{min(counts)} to {max(counts)}" if counts else "no"
    notes = [
        f"Test figures ×{SCALE}: mean ± sample std over seeds, {n} seed{'s' * (counts != {1})} per cell"
        + (" [95% Student-t interval, clipped to the metric's range]" if intervals else "")
        + ", the best of each column in bold. Avg.: each dataset's score is the mean of its columns, the "
        "average the mean of the datasets' scores (as GLUE computes it; per seed, where every column of the "
        "row has the same seeds)"
        + (
            f", only for rows that have every dataset ({lacking} row{'s' * (lacking > 1)} lack some: -)."
            if lacking
            else "."
        )
        + (
            " Trainable Params: the lowest to the highest over the datasets (a head's size follows the "
            "dataset's labels)."
            if ranged
            else ""
        ),
        f"{baseline_name(tasks)}: the trivial predictor, always the training split's "
        f"{' or its '.join(baseline_kinds(tasks))} (each run's `baseline`).",
    ]
    if warned_cells:
        notes.append(
            "⚠: predictions of at least one seed on that test split are (nearly) all one class or nearly "
            "constant (the runs' warnings say so): a collapsed model's figure; compare it with the baseline "
            "row."
        )
    return notes


def baseline_kinds(tasks: dict[str, Task]) -> list[str]:
    """What the trivial predictor answers (tasks' baselines): the majority class, or the mean label."""
    return list(dict.fromkeys("majority class" if t.has_classes else "mean label" for t in tasks.values()))


def baseline_name(tasks: dict[str, Task]) -> str:
    return " / ".join(baseline_kinds(tasks)).capitalize()


def baseline_row(rows: list[Row], columns: list[tuple[str, str]], datasets, tasks) -> list[str]:
    """The trivial predictor's figures (×100; the mean over the runs of a dataset, which share their data
    in a sweep), and their average; - where no run has one (records from before `baseline`)."""
    means = {}
    for d, k in columns:
        v = [
            float(r["baseline"][k])
            for row in rows
            if d in row.cells
            for r in row.cells[d].runs
            if isinstance((r.get("baseline") or {}).get(k), int | float)
        ]
        means[d, k] = SCALE * fmean(v) if v else None
    cells = ["-" if means[c] is None else f"{means[c]:.1f}" for c in columns]
    if all(v is not None for v in means.values()):
        scores = [
            sum(means[d, k] for k in tasks[d].table_scores) / len(tasks[d].table_scores) for d in datasets
        ]
        cells.append(f"{fmean(scores):.1f}")
    else:
        cells.append("-")
    return [baseline_name(tasks), "0", *cells]


def benchmark_section(by_dataset: dict[str, list[Setting]]) -> list[str]:
    """The report's opening table, when its runs cover two or more datasets that one can show."""
    datasets = benchmark_datasets(by_dataset)
    if len(datasets) < 2:
        return []
    tasks = {d: by_dataset[d][0].task for d in datasets}
    lines = [
        "## Benchmark table",
        "",
        "Every method on every dataset, each with the metrics its benchmark reports (the GLUE table of "
        "PEFT papers); a row is a setting, the same on each dataset. Per dataset, its own section below.",
        "",
        *benchmark_table(benchmark_rows(by_dataset, datasets), datasets, tasks),
    ]
    left = [d for d in by_dataset if d not in datasets]
    if left:
        lines += [
            "",
            f"Not in the table: {', '.join(left)} (a metric without a range, as perplexity, is not shown "
            f"×{SCALE} beside the others).",
        ]
    return [*lines, ""]


def baseline_text(task: Task, r: dict, split: str = "test") -> str | None:
    """The trivial predictor's figures on a split, from results.json's `baseline`: `majority class
    baseline: test MCC 0.0000 (Acc 0.6910, F1 0.8170)`; for an older record without one, the majority
    class's share of the split's labels (data.label_counts); None where neither."""
    base = r.get("baseline") or {}
    keys = [f"{split}_{k}" for k in task.columns if isinstance(base.get(f"{split}_{k}"), int | float)]
    if keys and keys[0] == f"{split}_{task.key}":
        others = [f"{metric_of(k).header} {base[k]:{task.spec}}" for k in keys[1:]]
        return (
            f"{'majority class' if task.has_classes else 'mean label'} baseline: {split} "
            f"{task.metric.header} {base[keys[0]]:{task.spec}}"
            + (f" ({', '.join(others)})" if others else "")
        )
    counts = (r.get("data") or {}).get("label_counts", {}).get(split)
    if counts and task.has_classes:
        share = max(counts.values()) / sum(counts.values())
        return f"Chance (majority class) on the {split} split: accuracy {share:.4f}"
    return None
