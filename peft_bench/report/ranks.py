"""Ranks across datasets (Demšar 2006): each method ranked on each dataset of the benchmark table, its mean
rank, the Friedman test over the datasets (two methods: the Wilcoxon signed-rank test), the Nemenyi
post-hoc's critical difference and the pairs further apart than it, and the critical-difference diagram."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from peft_bench.report.plots import pyplot, save_figure
from peft_bench.report.runs import BASELINE, Setting, best
from peft_bench.report.stats import ALPHA
from peft_bench.report.tables import benchmark_datasets, md_table

MIN_DATASETS = 3  # fewer: a rank per dataset says little beyond the benchmark table
DIAGRAM = "ranks_cd.png"
DIGITS = 12  # figures equal to this many decimals tie (float noise in a mean over seeds is no difference)


@dataclass
class RankData:
    """The figure each method ranks by on each dataset: its best setting's (by validation) mean primary test
    figure; the methods lacking a dataset are left out, named."""

    datasets: list[str]
    methods: list[str]
    scores: np.ndarray  # [dataset, method]
    higher: list[bool]  # per dataset: higher is better
    lacking: list[str]

    @property
    def ranks(self) -> np.ndarray:
        """[dataset, method]: 1 the best on that dataset, ties given the mean of their ranks."""
        signed = np.round(self.scores, DIGITS) * np.where(self.higher, -1.0, 1.0)[:, None]
        return np.array([stats.rankdata(row) for row in signed])


def figure(settings: list[Setting], method: str) -> float | None:
    """The method's best setting's (chosen on validation) mean primary test figure; None if it has none."""
    chosen = best([s for s in settings if s.method == method])
    value = chosen.mean(chosen.score)
    return None if value is None or math.isnan(value) else value


def rank_data(by_dataset: dict[str, list[Setting]]) -> RankData:
    """The datasets of the benchmark table, and every method that has a figure on each of them."""
    datasets = benchmark_datasets(by_dataset)
    figures: dict[str, dict[str, float]] = {}
    for d in datasets:
        for m in dict.fromkeys(s.method for s in by_dataset[d]):
            if (value := figure(by_dataset[d], m)) is not None:
                figures.setdefault(m, {})[d] = value
    names = sorted(figures, key=lambda m: (m != BASELINE, m))
    methods = [m for m in names if len(figures[m]) == len(datasets)]
    return RankData(
        datasets=datasets,
        methods=methods,
        scores=np.array([[figures[m][d] for m in methods] for d in datasets], dtype=float).reshape(
            len(datasets), len(methods)
        ),
        higher=[by_dataset[d][0].task.higher_is_better for d in datasets],
        lacking=[m for m in names if m not in methods],
    )


def critical_difference(k: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """(q_alpha, CD) of the Nemenyi test for k methods over n datasets: q_alpha the studentized range's
    1 - alpha quantile (k groups, infinite degrees of freedom) / sqrt(2), and
    CD = q_alpha sqrt(k (k + 1) / (6 n))."""
    q = float(stats.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    return q, q * math.sqrt(k * (k + 1) / (6 * n))


def nemenyi_p(mean_ranks: np.ndarray, n: int) -> np.ndarray:
    """[i, j]: the Nemenyi p-value of methods i and j's mean ranks over n datasets (scikit-posthocs'
    posthoc_nemenyi_friedman gives the same)."""
    k = len(mean_ranks)
    z = np.abs(mean_ranks[:, None] - mean_ranks[None, :]) / math.sqrt(k * (k + 1) / (6 * n))
    return stats.studentized_range.sf(z * math.sqrt(2), k, np.inf)


def friedman(ranks: np.ndarray) -> tuple[float, float] | None:
    """(chi2_F, p) of the Friedman test on [dataset, method] ranks (scipy's, corrected for ties); None where
    every method ties on every dataset (nothing to test)."""
    if np.all(ranks == ranks[:, :1]):
        return None
    result = stats.friedmanchisquare(*ranks.T)
    return float(result.statistic), float(result.pvalue)


def cd_groups(mean_ranks: list[float], cd: float) -> list[tuple[int, int]]:
    """The bars of the diagram: (first, last) positions in the ascending mean ranks of each maximal run of
    two or more methods whose mean ranks are at most CD apart (none of them differ)."""
    r = sorted(mean_ranks)
    groups: list[tuple[int, int]] = []
    for i in range(len(r)):
        j = max(j for j in range(i, len(r)) if r[j] - r[i] <= cd)
        if j > i and not (groups and groups[-1][1] >= j):
            groups.append((i, j))
    return groups


def cd_diagram(names: list[str], mean_ranks: list[float], cd: float, path: Path) -> None:
    """Demšar's critical-difference diagram (PNG and SVG): an axis of ranks 1..k (best on the left), each
    method's mean rank marked and labelled, a bar joining methods at most CD apart, CD as a segment."""
    plt = pyplot()
    k = len(names)
    order = sorted(range(k), key=lambda i: mean_ranks[i])
    groups = cd_groups(mean_ranks, cd)
    bar, step, left = 0.25, 0.45, (k + 1) // 2
    top = -(len(groups) + 1) * bar  # the labels' elbows start below the bars
    fig, ax = plt.subplots(figsize=(6.4, 1.4 + 0.3 * left + 0.15 * len(groups)))
    ax.plot([1, k], [0, 0], color="black", lw=1)
    for x in range(1, k + 1):
        ax.plot([x, x], [0, 0.1], color="black", lw=1)
        ax.text(x, 0.18, str(x), ha="center", va="bottom", fontsize=9)
    ax.plot([1, 1 + cd], [0.75, 0.75], color="black", lw=1.5, marker="|", markersize=8)
    ax.text(1 + cd / 2, 0.85, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9)
    for pos, i in enumerate(order):
        r = mean_ranks[i]
        side = pos < left
        depth = top - step * (pos if side else k - 1 - pos)
        end = 1 - 0.25 if side else k + 0.25
        ax.plot([r, r, end], [0, depth, depth], color="tab:blue", lw=1)
        ax.plot([r], [0], "o", color="tab:blue", markersize=5)
        label = f"{names[i]} ({r:.2f})" if side else f"({r:.2f}) {names[i]}"
        ax.text(end + (-0.05 if side else 0.05), depth, label, ha="right" if side else "left", va="center")
    for g, (a, b) in enumerate(groups):
        y = -(g + 1) * bar
        ax.plot([sorted(mean_ranks)[a] - 0.05, sorted(mean_ranks)[b] + 0.05], [y, y], color="black", lw=3)
    ax.set_xlim(1 - 0.3, k + 0.3)
    ax.set_ylim(top - step * left, 1.2)
    ax.axis("off")
    save_figure(fig, path.with_suffix(".png"), bbox_inches="tight")


def rank_table(data: RankData, ranks: np.ndarray, means: np.ndarray) -> list[str]:
    """One row per method, best mean rank first: its rank on each dataset and its mean rank."""
    rows = [
        [data.methods[j], *[f"{ranks[d, j]:g}" for d in range(len(data.datasets))], f"{means[j]:.2f}"]
        for j in sorted(range(len(data.methods)), key=lambda j: means[j])
    ]
    return md_table(["Method", *data.datasets, "Mean rank"], rows)


def two_methods(data: RankData) -> list[str]:
    """Two methods: the Wilcoxon signed-rank test of their differences over the datasets (signed so that
    > 0 is the first one better)."""
    a, b = data.methods
    diffs = (data.scores[:, 0] - data.scores[:, 1]) * np.where(data.higher, 1.0, -1.0)
    if not np.any(np.round(diffs, DIGITS)):
        return [f"Wilcoxon signed-rank test: {a} and {b} have the same figure on every dataset."]
    diffs = np.round(diffs, DIGITS)
    p = float(stats.wilcoxon(diffs).pvalue)  # ties (a zero difference) dropped
    n = int(np.count_nonzero(diffs))
    floor = 2 * 0.5**n  # the two-sided exact p when every dataset favours the same method
    return [
        f"Two methods: the Wilcoxon signed-rank test of {a} − {b} over the {len(diffs)} datasets (in place "
        f"of Friedman's, which needs three or more methods): p = {p:.3g}"
        + (f" (differ at α = {ALPHA})." if p < ALPHA else f" (no difference shown at α = {ALPHA}).")
        + (
            f" With {n} dataset{'s' * (n > 1)} that differ{'s' * (n == 1)} (ties dropped) it cannot go below "
            f"{floor:.3g}."
            if floor >= ALPHA
            else ""
        )
        + " It ranks the differences' sizes across datasets, so it takes them as commensurable."
    ]


def nemenyi_lines(data: RankData, means: np.ndarray) -> tuple[list[str], float]:
    """The Friedman test, the Nemenyi critical difference and the pairs further apart; and CD."""
    n, k = len(data.datasets), len(data.methods)
    test = friedman(data.ranks)
    q, cd = critical_difference(k, n)
    said = (
        "every method ties on every dataset: nothing to test."
        if test is None
        else f"χ²_F = {test[0]:.2f}, df = {k - 1}, p = {test[1]:.3g}: "
        + ("the mean ranks differ" if test[1] < ALPHA else "no difference between the mean ranks shown")
        + f" at α = {ALPHA}."
    )
    p = nemenyi_p(means, n)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    apart = [f"{data.methods[i]} vs {data.methods[j]}" for i, j in pairs if abs(means[i] - means[j]) > cd]
    rows = [
        [
            f"{data.methods[i]} vs {data.methods[j]}",
            f"{abs(means[i] - means[j]):.2f}",
            f"{p[i, j]:.3g}",
            "yes" if abs(means[i] - means[j]) > cd else "no",
        ]
        for i, j in pairs
    ]
    return [
        f"Friedman test over the {n} datasets (scipy's, corrected for ties): {said}",
        "",
        f"Nemenyi post-hoc: critical difference CD = q_α √(k(k+1)/(6N)) = {q:.3f} × √({k}·{k + 1}/(6·{n})) "
        f"= {cd:.2f} for k = {k} methods, N = {n} datasets, α = {ALPHA} (q_α: the studentized range's "
        "quantile / √2, Demšar 2006); two mean ranks further apart than CD differ "
        "(read it where the Friedman test rejects).",
        "",
        *md_table(["Pair", "Mean rank difference", "Nemenyi p", "> CD"], rows),
        "",
        f"Further apart than CD: {', '.join(apart)}." if apart else "No pair is further apart than CD.",
    ], cd


def ranks_section(by_dataset: dict[str, list[Setting]], out: Path) -> list[str]:
    """The section "Ranks across datasets" (and its diagram, written into `out`), where the benchmark
    table's datasets are three or more and two or more methods have a figure on each."""
    data = rank_data(by_dataset)
    if len(data.datasets) < MIN_DATASETS or len(data.methods) < 2:
        return []
    ranks = data.ranks
    means = ranks.mean(axis=0)
    lines = [
        "## Ranks across datasets",
        "",
        "Each method at its best setting on each dataset of the benchmark table (chosen on validation, as "
        "in the dataset's method comparison), ranked on the dataset's primary test metric (mean over "
        "seeds): 1 is the best, ties share the mean of their ranks.",
        "",
        *rank_table(data, ranks, means),
        "",
    ]
    if data.lacking:
        lines += [f"Not ranked (a dataset without a figure): {', '.join(data.lacking)}.", ""]
    if len(data.methods) == 2:
        lines += two_methods(data)
    else:
        text, cd = nemenyi_lines(data, means)
        cd_diagram(data.methods, list(means), cd, out / DIAGRAM)
        lines += [*text, "", f"![{DIAGRAM}]({DIAGRAM})"]
    lines += [
        "",
        "The tests assume the datasets are independent of each other and their ranks comparable (each "
        "dataset counts once, however large or hard); with few datasets only large rank differences show.",
        "",
    ]
    return lines
