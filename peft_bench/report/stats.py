"""The report's statistics over seeds, in one place: a sample's mean and standard deviation, its Student-t
interval, the paired t-test of two settings over the seeds both ran, and what counts as no variance."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats

ALPHA = 0.05  # the paired tests' significance level (a * in the tables)
NOISE = 1e-9  # relative to the figures' size: a spread this small is float noise, not variance


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
