"""The report's statistics over seeds, in one place: a sample's mean and standard deviation, its Student-t
interval and its bootstrap interval within the metric's range, the paired t-test of two settings over the
seeds both ran, and what counts as no variance; Holm's adjustment, the exact McNemar test, TOST
equivalence, the seeds a paired t-test needs, and the expected best of n trials (Dodge et al. 2019).
docs/report.md, "What the statistics assume", says what each one takes for granted."""

from __future__ import annotations

import inspect
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05  # the paired tests' significance level (a * in the tables)
NOISE = 1e-9  # relative to the figures' size: a spread this small is float noise, not variance
MIN_BOOTSTRAP = 3  # two seeds give at most three distinct resampled means: no interval worth printing
RESAMPLES = 9_999  # scipy.stats.bootstrap's default
RESAMPLE_SEED = 0  # the bootstrap's generator: the same runs give the same report
SEEDS_CAP = 1_000  # seeds_needed looks no further: None means more than this
# scipy >= 1.15 names bootstrap's generator `rng`; pyproject allows scipy 1.11, where it is random_state
SEED_KEYWORD = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n − 1 degrees of freedom); None for the std of one value. A
    non-finite figure (a diverged loss, an infinite perplexity) makes both nan, not an error."""
    if not all(math.isfinite(v) for v in values):
        return math.nan, math.nan if len(values) > 1 else None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def interval(values: list[float], level: float = 0.95) -> tuple[float, float, float, float] | None:
    """(mean, sample std, low, high) of a Student-t interval over seeds; None below two values."""
    n = len(values)
    if n < 2:
        return None
    mean, std = mean_std(values)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def no_variance(values: list[float], size: float = 1.0) -> bool:
    """Whether the values are all the same up to float noise, relative to `size` (the magnitude of the
    figures they come from: 0.84 - 0.82 and 0.83 - 0.81 differ in their 17th digit only)."""
    return max(values) - min(values) <= NOISE * max(1.0, size)


@dataclass(frozen=True)
class Paired:
    """A paired comparison of two settings over the seeds both ran: the mean difference, and the t-test's
    statistic and two-sided p-value (None below two pairs, or when every pair differs by the same)."""

    n: int
    delta: float
    t: float | None = None
    p: float | None = None

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < ALPHA


def paired_test(a: dict[int, float | None], b: dict[int, float | None], min_pairs: int = 2) -> Paired | None:
    """Two-sided paired t-test (scipy.stats.ttest_rel) of {seed: figure} a against b over the seeds both
    have; None below `min_pairs` such seeds. No variance (the same difference on every seed): no t-test,
    whose t is then infinite or undefined."""
    seeds = sorted(s for s in a if s in b and a[s] is not None and b[s] is not None)
    if len(seeds) < max(1, min_pairs):
        return None
    x, y = [a[s] for s in seeds], [b[s] for s in seeds]
    diff = [u - v for u, v in zip(x, y, strict=True)]
    delta = statistics.fmean(diff)
    if not all(math.isfinite(d) for d in diff):  # a diverged figure: no test, said as nan
        return Paired(len(seeds), delta, math.nan, math.nan)
    if len(seeds) < 2 or no_variance(diff, max(map(abs, x + y))):
        return Paired(len(seeds), delta)
    res = stats.ttest_rel(x, y)
    return Paired(len(seeds), delta, float(res.statistic), float(res.pvalue))


def paired_text(test: Paired | None, spec: str) -> str:
    """`+0.0200 (t=3.46, p=0.0742, n=3)`, a * where significant; `+0.0200 (n=3, no variance)`;
    `+0.0200 (n=1)`; `-` without a pair."""
    if test is None:
        return "-"
    if test.t is None:
        return f"{test.delta:+{spec}} (n={test.n}{', no variance' if test.n > 1 else ''})"
    mark = " *" if test.significant else ""
    return f"{test.delta:+{spec}} (t={test.t:.2f}, p={test.p:.3g}, n={test.n}){mark}"


# --------------------------------------------------------------------------- intervals within a range


@dataclass(frozen=True)
class Bounded:
    """A bootstrap interval over seeds, within the metric's range: the mean and [low, high]; low and high
    None below MIN_BOOTSTRAP values (not informative)."""

    n: int
    mean: float
    low: float | None = None
    high: float | None = None

    @property
    def informative(self) -> bool:
        return self.low is not None

    def text(self, spec: str) -> str:
        """`[0.8020, 0.8420]`; `not informative (n=2)` below three values."""
        if not self.informative:
            return f"not informative (n={self.n})"
        return f"[{self.low:{spec}}, {self.high:{spec}}]"


def bounded_interval(
    values: Sequence[float], low: float = -math.inf, high: float = math.inf, level: float = 0.95
) -> Bounded:
    """The percentile bootstrap interval of the mean over seeds (scipy.stats.bootstrap, RESAMPLES
    resamples from a generator seeded RESAMPLE_SEED), clipped to the metric's range [low, high]; not
    informative below MIN_BOOTSTRAP values. A percentile interval lies within the values' own range, so
    it never leaves the metric's; at 3 seeds it is their range (min, max), which covers the true mean only
    about 75% of the time (docs/report.md). A non-finite figure gives nan bounds."""
    n = len(values)
    mean = statistics.fmean(values) if n else math.nan
    if n < MIN_BOOTSTRAP:
        return Bounded(n, mean)
    if not all(math.isfinite(v) for v in values):
        return Bounded(n, math.nan, math.nan, math.nan)
    if no_variance(list(values), max(map(abs, values))):
        lo = hi = mean  # every resample has this mean: scipy would warn of a degenerate distribution
    else:
        seeded = {SEED_KEYWORD: np.random.default_rng(RESAMPLE_SEED)}
        res = stats.bootstrap(
            (np.asarray(values, dtype=float),),
            np.mean,
            confidence_level=level,
            n_resamples=RESAMPLES,
            method="percentile",
            **seeded,
        )
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return Bounded(n, mean, min(max(lo, low), high), max(min(hi, high), low))


# --------------------------------------------------------------------------- tests that decide a ranking


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given: the k-th smallest of m is multiplied by
    m − k + 1, capped at 1, and made non-decreasing along that order. Reject where adjusted p < alpha: the
    chance of any false rejection among the m stays below alpha."""
    m = len(pvalues)
    adjusted = [0.0] * m
    running = 0.0
    for k, i in enumerate(sorted(range(m), key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - k) * pvalues[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class McNemar:
    """The exact McNemar test of two models on the same examples: the discordant pairs (a right and b
    wrong, a wrong and b right) and the two-sided p of a binomial test of them against 1/2."""

    only_a: int
    only_b: int
    p: float


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> McNemar:
    """Exact McNemar over paired examples (scipy.stats.binomtest on the discordant pairs); p = 1 when no
    example is discordant."""
    if len(a_correct) != len(b_correct):
        raise ValueError(f"mcnemar: {len(a_correct)} and {len(b_correct)} examples: pair them one to one")
    only_a = sum(1 for a, b in zip(a_correct, b_correct, strict=True) if a and not b)
    only_b = sum(1 for a, b in zip(a_correct, b_correct, strict=True) if b and not a)
    n = only_a + only_b
    return McNemar(only_a, only_b, 1.0 if n == 0 else float(stats.binomtest(only_a, n, 0.5).pvalue))


def tost(diffs: Sequence[float], margin: float) -> float | None:
    """Two one-sided paired t-tests (TOST) that the mean difference lies within (−margin, +margin):
    scipy.stats.ttest_1samp against −margin (alternative 'greater') and +margin ('less'); p = the larger
    of the two. None below two differences or without variance (no t-test); nan for a non-finite one."""
    if not margin > 0:
        raise ValueError(f"tost: the margin must be > 0, not {margin}")
    if len(diffs) < 2:
        return None
    if not all(math.isfinite(d) for d in diffs):
        return math.nan
    if no_variance(list(diffs), max(map(abs, diffs))):
        return None
    lower = stats.ttest_1samp(diffs, -margin, alternative="greater").pvalue
    upper = stats.ttest_1samp(diffs, margin, alternative="less").pvalue
    return float(max(lower, upper))


def seeds_needed(
    diff: float, sd: float, alpha: float = ALPHA, power: float = 0.8, cap: int = SEEDS_CAP
) -> int | None:
    """The smallest number of seeds n >= 2 at which a two-sided paired t-test at `alpha` detects a mean
    difference `diff` with power >= `power`, given the paired differences' sd `sd`: under the alternative
    t follows a noncentral t (scipy.stats.nct) with n − 1 degrees of freedom and noncentrality
    |diff| / sd * sqrt(n). None when more than `cap` seeds would be needed (or diff is 0); 2 when sd is 0."""
    if diff == 0 or not math.isfinite(diff) or not math.isfinite(sd):
        return None
    if sd <= 0:
        return 2
    for n in range(2, cap + 1):
        df, nc = n - 1, abs(diff) / sd * math.sqrt(n)
        crit = stats.t.ppf(1 - alpha / 2, df)
        if stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc) >= power:
            return n
    return None


def seeds_text(n: int | None, cap: int = SEEDS_CAP) -> str:
    return f"> {cap}" if n is None else str(n)


def expected_max(scores: Sequence[float], n: int, higher_is_better: bool = True) -> float:
    """The expected best of n i.i.d. draws from the observed trials' scores (Dodge et al. 2019, "Show
    Your Work"), in closed form: sorted ascending v_1..v_N, E[max of n] = sum_i v_i ((i/N)^n −
    ((i − 1)/N)^n); the minimum's analogue where lower is better."""
    if n < 1 or not len(scores):
        raise ValueError(f"expected_max: needs n >= 1 and at least one score (n={n}, {len(scores)} scores)")
    v = np.sort(np.asarray(scores, dtype=float))
    if not higher_is_better:
        return -expected_max(-v, n)
    cdf = np.arange(1, len(v) + 1) / len(v)
    return float(np.sum(v * (cdf**n - (cdf - 1 / len(v)) ** n)))
