"""What decides a ranking of settings over seeds: a verdict per pair (better, worse, equivalent within a
margin, or undecided with the seeds it would take), the paired tests Holm-adjusted over every pair of a
dataset; and each setting's chance of being the best, with its rank interval, by bootstrap over seeds."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from peft_bench.report.stats import (
    ALPHA,
    Bounded,
    bounded_interval,
    holm,
    mean_std,
    paired_test,
    seeds_needed,
    tost,
)

BOOT_RANKS = 2_000  # p_best's resamples


@dataclass(frozen=True)
class Pair:
    """Setting a against setting b over the seeds both ran: the mean difference a − b, the differences'
    sample sd and bootstrap interval, the paired t-test's p (two-sided, unadjusted), TOST's p against the
    margin; and, once every pair of the family is known (verdicts), the Holm-adjusted p, the verdict and,
    for an undecided pair, the seeds a paired t-test would need for the difference `seeds_for`."""

    a: str
    b: str
    n: int
    delta: float
    sd: float
    interval: Bounded
    p: float | None
    p_tost: float | None
    p_holm: float | None = None
    verdict: str = "undecided"
    seeds_needed: int | None = None
    seeds_for: float | None = None


def compare(
    a: str,
    b: str,
    x: Mapping[int, float],
    y: Mapping[int, float],
    margin: float,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> Pair | None:
    """The pair (a, b) of {seed: figure} x and y over the seeds both ran; None below two such seeds.
    `bounds`: the metric's range, so a difference lies within ±(high − low)."""
    seeds = sorted(set(x) & set(y))
    if len(seeds) < 2:
        return None
    diffs = [x[s] - y[s] for s in seeds]
    width = bounds[1] - bounds[0]
    test = paired_test(dict(x), dict(y))
    delta, sd = mean_std(diffs)  # nan for a diverged figure
    return Pair(
        a,
        b,
        len(seeds),
        delta,
        sd,
        bounded_interval(diffs, -width, width),
        test.p if test else None,
        tost(diffs, margin),
    )


def verdict(
    pair: Pair,
    p_holm: float | None,
    margin: float,
    higher_is_better: bool,
    family: int = 1,
    alpha: float = ALPHA,
) -> Pair:
    """The pair with its verdict: `better` or `worse` (a against b) where the Holm-adjusted paired p <
    alpha, else `equivalent` where TOST's p < alpha (the difference within ±margin), else `undecided`
    with the seeds a paired t-test at alpha / family (Bonferroni over the family of pairs: enough under
    Holm whatever the other pairs) needs for the observed difference, or for one margin where the observed
    difference is smaller than the margin (a difference the report does not chase)."""
    if p_holm is not None and p_holm < alpha:
        word = "better" if (pair.delta > 0) == higher_is_better else "worse"
        return replace(pair, p_holm=p_holm, verdict=word)
    if pair.p_tost is not None and pair.p_tost < alpha:
        return replace(pair, p_holm=p_holm, verdict="equivalent")
    target = pair.delta if abs(pair.delta) >= margin else margin
    if not (math.isfinite(pair.sd) and pair.sd > 0):  # no variance, or a diverged figure: no estimate
        return replace(pair, p_holm=p_holm)
    needed = seeds_needed(target, pair.sd, alpha / max(1, family))
    return replace(pair, p_holm=p_holm, seeds_needed=needed, seeds_for=abs(target))


def verdicts(
    samples: Mapping[str, Mapping[int, float]],
    margin: float,
    higher_is_better: bool,
    bounds: tuple[float, float] = (-math.inf, math.inf),
    alpha: float = ALPHA,
) -> list[Pair]:
    """Every pair of settings (in the order given) that share two or more seeds, with its verdict; the
    paired p-values Holm-adjusted over those pairs (a pair without a t-test, no variance or a non-finite
    figure, is no member of the family)."""
    names = list(samples)
    pairs = [
        pair
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        if (pair := compare(a, b, samples[a], samples[b], margin, bounds)) is not None
    ]
    tested = [i for i, pair in enumerate(pairs) if pair.p is not None and math.isfinite(pair.p)]
    adjusted = dict(zip(tested, holm([pairs[i].p for i in tested]), strict=True))
    return [
        verdict(pair, adjusted.get(i), margin, higher_is_better, len(tested), alpha)
        for i, pair in enumerate(pairs)
    ]


@dataclass(frozen=True)
class Rank:
    """A setting's share of bootstrap resamples in which it is the best (ties share), and the 95% interval
    of its rank over them (1: the best)."""

    p_best: float
    low: int
    high: int


def resampled_means(
    samples: Sequence[Mapping[int, float] | Sequence[float]], n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_boot, settings) means over resampled seeds: the seeds every setting ran, drawn together (a
    seed's data order and initialisation are shared), where there are two or more; else each setting's
    own figures, drawn on their own."""
    mappings = all(isinstance(s, Mapping) for s in samples)
    shared = sorted(set.intersection(*(set(s) for s in samples))) if mappings else []
    if len(shared) >= 2:
        x = np.array([[s[k] for k in shared] for s in samples], dtype=float)  # settings × seeds
        idx = rng.integers(0, len(shared), (n_boot, len(shared)))
        return x[:, idx].mean(axis=2).T
    columns = []
    for s in samples:
        v = np.array(list(s.values()) if isinstance(s, Mapping) else s, dtype=float)
        columns.append(v[rng.integers(0, len(v), (n_boot, len(v)))].mean(axis=1))
    return np.stack(columns, axis=1)


def p_best(
    samples_by_method: Mapping[str, Mapping[int, float] | Sequence[float]],
    higher_is_better: bool,
    n_boot: int = BOOT_RANKS,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Rank]:
    """Each setting's P(best) and rank interval by bootstrap over seeds (resampled_means): in each
    resample the settings are ranked by their means (1: the best; ties share the better rank and the best
    place); P(best) is the share of resamples a setting is first in, its interval the ranks' central
    `level` quantiles."""
    names = list(samples_by_method)
    means = resampled_means([samples_by_method[m] for m in names], n_boot, np.random.default_rng(seed))
    # the scores are float32 (torchmetrics): equal means reached along different paths (the same count
    # of correct answers, 556/692 + 573/692 against 559/692 + 570/692) differ in the 8th digit. At the
    # scores' own resolution (6 decimals) they tie, as they should
    means = np.round(means, 6)
    ranks = stats.rankdata(-means if higher_is_better else means, method="min", axis=1)
    first = ranks == 1
    share = (first / first.sum(axis=1, keepdims=True)).mean(axis=0)
    tail = (1 - level) / 2
    low = np.quantile(ranks, tail, axis=0, method="inverted_cdf")
    high = np.quantile(ranks, 1 - tail, axis=0, method="inverted_cdf")
    return {m: Rank(float(share[i]), int(low[i]), int(high[i])) for i, m in enumerate(names)}
