"""The statistics that decide a ranking (report.stats, report.significance) and the report's "Pairwise
verdicts" section: every expected figure is worked out by hand below (2-df t tails in closed form,
binomial tails by counting), or by a brute-force simulation, not by the code under test."""

from __future__ import annotations

import math
import re
from math import comb, sqrt

import numpy as np
import pytest
from scipy import stats

from peft_bench.report import interval, main, write_report
from peft_bench.report.significance import Pair, p_best, verdict, verdicts
from peft_bench.report.stats import (
    Bounded,
    bounded_interval,
    expected_max,
    holm,
    mcnemar,
    seeds_needed,
    seeds_text,
    tost,
)
from tests.test_report import result, write


def t2_tail(t: float) -> float:
    """P(T > t) for Student's t with 2 degrees of freedom, in closed form: (1 − t / sqrt(t² + 2)) / 2."""
    return (1 - t / sqrt(t * t + 2)) / 2


# --------------------------------------------------------------------------- bounded intervals


def test_a_seed_interval_near_1_never_leaves_0_1():
    # two seeds: Student's t runs past 1 (12.706 * 0.00707 / sqrt 2 = 0.0635 around 0.995); the bootstrap
    # says nothing rather than print a range it cannot back
    assert interval([0.99, 1.0])[3] > 1
    two = bounded_interval([0.99, 1.0], 0.0, 1.0)
    assert two == Bounded(2, 0.995) and not two.informative
    assert two.text(".4f") == "not informative (n=2)"
    # three seeds 0.98, 1.0, 1.0: a resample is all 0.98 with chance (1/3)^3 = 3.7% > 2.5%, all 1.0 with
    # (2/3)^3 = 30%: the percentile interval is [0.98, 1.0], within [0, 1] where t's is not
    assert interval([0.98, 1.0, 1.0])[3] > 1
    three = bounded_interval([0.98, 1.0, 1.0], 0.0, 1.0)
    assert (three.low, three.high) == pytest.approx((0.98, 1.0)) and 0.0 <= three.low <= three.high <= 1.0
    assert three.text(".4f") == "[0.9800, 1.0000]"
    # the range clips; the same values give the same interval (a seeded generator)
    assert bounded_interval([0.5, 0.7, 0.9], 0.0, 0.8).high == 0.8
    assert bounded_interval([0.1, 0.5, 0.2, 0.4]) == bounded_interval([0.1, 0.5, 0.2, 0.4])
    # no variance: the one value; a diverged figure: nan
    assert bounded_interval([0.9, 0.9, 0.9], 0.0, 1.0).text(".2f") == "[0.90, 0.90]"
    assert math.isnan(bounded_interval([0.9, math.inf, 0.8]).low)


# --------------------------------------------------------------------------- Holm, McNemar, TOST


def test_holm_adjusts_a_fixed_set_as_computed_by_hand():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> kept at 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # 0.5 x 2 capped at 1; then at least that
    assert holm([0.2]) == [0.2] and holm([]) == []


def test_mcnemar_is_the_exact_binomial_tail_of_the_discordant_pairs():
    # 100 examples: both right 50, only a 9, only b 2, both wrong 39; p = 2 P(X <= 2), X ~ Bin(11, 1/2)
    a = [True] * 50 + [True] * 9 + [False] * 2 + [False] * 39
    b = [True] * 50 + [False] * 9 + [True] * 2 + [False] * 39
    test = mcnemar(a, b)
    assert (test.only_a, test.only_b) == (9, 2)
    assert test.p == pytest.approx(2 * (comb(11, 0) + comb(11, 1) + comb(11, 2)) / 2**11)  # 0.0654
    assert mcnemar(b, a).p == pytest.approx(test.p)
    assert mcnemar([True, False], [True, False]).p == 1.0  # no discordant pair
    with pytest.raises(ValueError, match="one to one"):
        mcnemar([True], [True, False])


def test_tost_is_the_larger_of_two_one_sided_t_tests():
    # diffs 0.001, 0.003, 0.002: mean 0.002, sd 0.001, se 0.001 / sqrt 3; margin 0.01:
    # against +0.01, t = -0.008 / se = -8 sqrt 3; against -0.01, t = 12 sqrt 3: p = the first's tail
    p = tost([0.001, 0.003, 0.002], 0.01)
    assert p == pytest.approx(t2_tail(8 * sqrt(3)), rel=1e-6) and p < 0.05  # 0.0026: equivalent
    # mean 0.01, at the margin: t = 0 against +0.01, p = 1/2: not equivalent
    assert tost([0.005, 0.015, 0.010], 0.01) == pytest.approx(0.5)
    assert tost([0.01], 0.01) is None and tost([0.002, 0.002, 0.002], 0.01) is None  # one pair; no variance
    with pytest.raises(ValueError, match="margin"):
        tost([0.1, 0.2], 0)


def test_verdicts_on_constructed_pairs_equivalent_undecided_and_better():
    samples = {
        "a": {1: 0.801, 2: 0.803, 3: 0.802},
        "b": {1: 0.800, 2: 0.800, 3: 0.800},  # a - b: 0.001, 0.003, 0.002
        "c": {1: 0.795, 2: 0.785, 3: 0.790},  # b - c: 0.005, 0.015, 0.010
    }
    ab, ac, bc = verdicts({k: samples[k] for k in ("a", "b")}, 0.01, True) + verdicts(samples, 0.01, True)[1:]
    # a - b alone: paired t = 0.002 / (0.001 / sqrt 3) = 2 sqrt 3, p = 2 t2_tail = 0.0742, not < 0.05;
    # TOST 0.0026 < 0.05: equivalent within 0.01
    assert ab.p_holm == pytest.approx(2 * t2_tail(2 * sqrt(3)), rel=1e-6) and ab.verdict == "equivalent"
    # b - c: mean 0.01, sd 0.005: p = 0.0742 too, TOST at the margin 1/2: undecided, with the seeds a
    # paired t-test at 0.05 / 3 (three tested pairs) needs for 0.01 at sd 0.005
    assert (bc.a, bc.b, bc.n) == ("b", "c", 3) and bc.verdict == "undecided"
    assert bc.p_tost == pytest.approx(0.5) and bc.seeds_for == pytest.approx(0.01)
    assert bc.seeds_needed == seeds_needed(0.01, 0.005, 0.05 / 3)
    # a - c: 0.006, 0.018, 0.012: mean 0.012, sd 0.006, t = 2 sqrt 3 again; the three equal p-values x 3
    assert ac.p_holm == pytest.approx(3 * 2 * t2_tail(2 * sqrt(3)), rel=1e-6) and ac.verdict == "undecided"
    clear = Pair("x", "y", 3, -0.05, 0.001, Bounded(3, -0.05), p=0.0001, p_tost=0.99)
    assert verdict(clear, 0.0003, 0.01, higher_is_better=False).verdict == "better"  # lower perplexity
    assert verdict(clear, 0.0003, 0.01, higher_is_better=True).verdict == "worse"
    # an observed difference below the margin: the seeds for one margin, not for a difference of ~0
    tiny = Pair("x", "y", 3, 0.0001, 0.004, Bounded(3, 0.0001), p=0.9, p_tost=0.2)
    assert verdict(tiny, 0.9, 0.01, True).seeds_for == 0.01


# --------------------------------------------------------------------------- seeds, P(best), Dodge


def test_seeds_needed_for_a_difference_of_one_sd_is_10_as_a_simulation_shows():
    assert seeds_needed(1.0, 1.0) == 10 and seeds_needed(2.0, 2.0) == 10  # d = diff / sd = 1
    # the power of a two-sided paired t-test at 0.05, simulated: d = 1 with 9 and 10 seeds
    rng = np.random.default_rng(0)
    power = {}
    for n in (9, 10):
        d = rng.normal(1.0, 1.0, (40_000, n))
        t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / sqrt(n))
        power[n] = float(np.mean(np.abs(t) > stats.t.ppf(0.975, n - 1)))
    assert power[9] < 0.78 < 0.79 < power[10] < 0.82  # 0.748 and 0.803 (G*Power: n = 10, 0.8031)
    assert seeds_needed(1.0, 0.0) == 2 and seeds_needed(0.0, 1.0) is None
    assert seeds_needed(1e-4, 1.0) is None and seeds_text(None) == "> 1000"  # past the cap


def test_p_best_and_rank_intervals_by_bootstrap_over_seeds():
    # a = 1.0, 0.0 and b = 0.5, 0.5 on seeds 1, 2, drawn together: (1, 1) a best, (2, 2) b best, (1, 2)
    # and (2, 1) a tie shared: P(a best) = 1/4 + 1/2 * 1/2 = 1/2; a's rank is 1 (3/4) or 2 (1/4): 1-2
    ranks = p_best({"a": {1: 1.0, 2: 0.0}, "b": {1: 0.5, 2: 0.5}}, higher_is_better=True)
    assert ranks["a"].p_best == pytest.approx(0.5, abs=0.04)
    assert ranks["a"].p_best + ranks["b"].p_best == pytest.approx(1.0)
    assert (ranks["a"].low, ranks["a"].high) == (1, 2)
    clear = p_best({"x": [0.9, 0.91, 0.92], "y": [0.5, 0.5, 0.6]}, True)  # lists: drawn on their own
    assert clear["x"].p_best == 1.0 and (clear["x"].low, clear["x"].high) == (1, 1)
    assert p_best({"x": [0.9, 0.91, 0.92], "y": [0.5, 0.5, 0.6]}, False)["y"].p_best == 1.0  # lower wins
    assert p_best({"a": {1: 1.0, 2: 0.0}, "b": {1: 0.5, 2: 0.5}}, True) == ranks  # seeded


def test_expected_max_closed_form_matches_brute_force():
    scores = [0.61, 0.70, 0.70, 0.74, 0.80, 0.52]
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 5, 8):
        draws = rng.choice(scores, size=(200_000, n))
        assert expected_max(scores, n) == pytest.approx(draws.max(axis=1).mean(), abs=1e-3)
        assert expected_max(scores, n, higher_is_better=False) == pytest.approx(
            draws.min(axis=1).mean(), abs=1e-3
        )
    # by hand: {1, 2}, n = 2: max is 2 unless both draws are 1 (1/4): 1.75; min 1.25
    assert expected_max([2, 1], 2) == pytest.approx(1.75)
    assert expected_max([2, 1], 2, higher_is_better=False) == pytest.approx(1.25)
    assert expected_max(scores, 1) == pytest.approx(np.mean(scores))
    with pytest.raises(ValueError):
        expected_max(scores, 0)


# --------------------------------------------------------------------------- the report's section

# test accuracy per seed 1, 2, 3 (the records' primary figure, test F1, is accuracy + 0.002)
LORA = (0.80, 0.82, 0.84)
HIRA = (0.76, 0.77, 0.78)  # lora - hira: 0.04, 0.05, 0.06
SPARSE = (0.764, 0.769, 0.774)  # lora - sparse: 0.036, 0.051, 0.066; hira - sparse: -0.004, 0.001, 0.006


@pytest.fixture
def three_methods(tmp_path):
    runs = {}
    for seed, lora, hira, sparse in zip((1, 2, 3), LORA, HIRA, SPARSE, strict=True):
        runs[f"lora-{seed}"] = result("lora", seed, lora)
        runs[f"hira-{seed}"] = result("hira", seed, hira)
        runs[f"sparse-{seed}"] = result("sparse_lora", seed, sparse, **{"sparsity_below_1e-3": 0.5})
    return write(tmp_path / "sweep", runs)


def section(md: str) -> list[str]:
    lines = md.split("\n")
    start = lines.index("### Pairwise verdicts")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("#"))
    return lines[start:end]


def test_the_report_has_the_hand_computed_verdicts_of_three_methods(three_methods, tmp_path):
    md = (write_report([three_methods], tmp_path / "report")["out"] / "report.md").read_text()
    assert md.index("### Seed statistics") < md.index("### Pairwise verdicts")
    lines = section(md)
    # lora - hira: mean 0.05, sd 0.01, t = 5 sqrt 3, p = 2 t2_tail = 0.01307, the smallest of 3: x 3 = 0.0392
    # -> better; TOST: against +0.01, t = 0.04 / (0.01 / sqrt 3) = 6.93, p = 1 - t2_tail = 0.990
    p1 = 2 * t2_tail(5 * sqrt(3))
    assert f"{3 * p1:.3g}" == "0.0392" and f"{1 - t2_tail(4 * sqrt(3)):.3g}" == "0.99"
    assert (
        "| lora rank=8 | hira rank=8 | 3 | +0.0500 | [+0.0400, +0.0600] | 0.0392 | 0.99 | better | - |"
        in lines
    )
    # lora - sparse: mean 0.051, sd 0.015, t = 0.051 sqrt 3 / 0.015, p = 0.02764, second: x 2 = 0.0553, not
    # < 0.05; TOST p = 1 - t2_tail(0.041 sqrt 3 / 0.015) = 0.979: undecided; seeds for 0.051 at 0.05 / 3
    p2 = 2 * t2_tail(0.051 * sqrt(3) / 0.015)
    assert f"{2 * p2:.3g}" == "0.0553" and f"{1 - t2_tail(0.041 * sqrt(3) / 0.015):.3g}" == "0.979"
    needed = seeds_needed(0.051, 0.015, 0.05 / 3)
    assert needed == 4
    assert (
        "| lora rank=8 | sparse_lora rank=8 | 3 | +0.0510 | [+0.0360, +0.0660] | 0.0553 | 0.979 | undecided "
        "| 4 (Δ 0.0510) |"
    ) in lines
    # hira - sparse: mean 0.001, sd 0.005: p = 2 t2_tail(0.001 sqrt 3 / 0.005) = 0.762 (x 1, and at least
    # 0.0553); TOST: against +0.01, t = -0.009 sqrt 3 / 0.005, p = 0.0447 < 0.05: equivalent
    assert f"{2 * t2_tail(0.001 * sqrt(3) / 0.005):.3g}" == "0.762"
    assert f"{t2_tail(0.009 * sqrt(3) / 0.005):.3g}" == "0.0447"
    assert (
        "| hira rank=8 | sparse_lora rank=8 | 3 | +0.0010 | [-0.0040, +0.0060] | 0.762 | 0.0447 | equivalent "
        "| - |"
    ) in lines
    # P(best): lora beats both on every seed, so in every resample; hira - sparse per seed -4, 1, 6 (x 1e-3)
    # has a positive resampled mean in 17 of 27 draws: hira and sparse are 2nd or 3rd
    assert "| lora rank=8 | 3 | 0.8220 | 1.00 | 1 |" in lines
    assert "| hira rank=8 | 3 | 0.7720 | 0.00 | 2–3 |" in lines
    assert "| sparse_lora rank=8 | 3 | 0.7710 | 0.00 | 2–3 |" in lines
    assert any("|Δ| < 0.0100 (the margin, `--margin`)" in line for line in lines)
    # the seed statistics: a percentile bootstrap interval, at 3 seeds the seeds' range
    assert "| lora | rank=8 | 3 | 1, 2, 3 | 0.8220 ± 0.0200 | [0.8020, 0.8420] | - |" in md
    assert "| hira | rank=8 | 3 | 1, 2, 3 | 0.7720 ± 0.0100 | [0.7620, 0.7820] |" in md


def test_margin_comes_from_the_cli_and_write_report(three_methods, tmp_path, capsys):
    main([str(three_methods), "--out", str(tmp_path / "r"), "--margin", "0.002"])
    lines = section((tmp_path / "r" / "report.md").read_text())
    # hira - sparse within 0.002: TOST against +0.002, t = -0.001 sqrt 3 / 0.005, p = 0.38: undecided; |Δ|
    # 0.001 is under the margin: the seeds for one margin, 0.002
    assert any("|Δ| < 0.0020" in line for line in lines)
    row = next(line for line in lines if line.startswith("| hira rank=8 | sparse_lora rank=8 |"))
    assert f"| {t2_tail(0.001 * sqrt(3) / 0.005):.3g} | undecided |" in row
    assert row.endswith(f"| {seeds_needed(0.002, 0.005, 0.05 / 3)} (Δ 0.0020) |")
    for bad in ("0", "-0.01", "nan"):
        with pytest.raises(SystemExit):
            main([str(three_methods), "--out", str(tmp_path / "bad"), "--margin", bad])
        assert "--margin" in capsys.readouterr().err


def test_two_seeds_near_1_print_no_interval_outside_the_metrics_range(tmp_path):
    # the `make demo` case: two seeds, test accuracy near 1, where t's interval ran to 1.14
    runs = {}
    for seed, (a, b) in enumerate(((0.97, 0.96), (0.995, 0.99)), start=1):
        runs[f"r2-{seed}"] = result("lora", seed, a, rank=2)
        runs[f"r4-{seed}"] = result("lora", seed, b, rank=4)
    md = (write_report([write(tmp_path / "s", runs)], tmp_path / "report")["out"] / "report.md").read_text()
    assert "| lora | rank=2 | 2 | 1, 2 | 0.9845 ± 0.0177 | not informative (n=2) | - |" in md
    assert "| lora | rank=4 | 2 | 1, 2 | 0.9770 ± 0.0212 | not informative (n=2) | - |" in md
    lines = section(md)
    assert any(
        line.startswith("| lora rank=2 | lora rank=4 | 2 | +0.0075 | not informative (n=2) |")
        for line in lines
    )
    for low, high in re.findall(r"\[([-+]?\d\.\d+), ([-+]?\d\.\d+)\]", md):
        assert -1.0 <= float(low) <= float(high) <= 1.0


def test_the_default_margin_is_one_point_or_1_percent_of_an_unbounded_metric():
    from types import SimpleNamespace

    from peft_bench.report.tables import default_margin
    from peft_bench.tasks import METRICS

    def setting(key: str, figures: list[float]):
        task = SimpleNamespace(score=f"test_{key}", metric=METRICS[key])
        return SimpleNamespace(task=task, score=task.score, values=lambda k: figures)

    assert default_margin([setting("acc", [0.8, 0.9])]) == 0.01
    assert default_margin([setting("mcc", [0.3, 0.5])]) == 0.01  # one point ×100, as the tables print it
    # perplexity 24 and 26 (and a diverged inf, left out): 1% of 25
    assert default_margin([setting("ppl", [24.0, 26.0, math.inf])]) == pytest.approx(0.25)


def test_p_best_shares_a_tie_of_equal_counts_computed_as_different_floats():
    """Two settings with the same correct answers over two seeds (1,129 of 1,384), split differently: the
    resamples with both seeds are a tie, so each is best in half the resamples (not one in three quarters)."""
    import numpy as np

    def acc(correct: int) -> float:  # as results.json holds it: torchmetrics' float32
        return float(np.float32(correct / 692))

    runs = {"lora": {1: acc(556), 2: acc(573)}, "oft": {1: acc(559), 2: acc(570)}}
    ranks = p_best(runs, higher_is_better=True)
    assert ranks["lora"].p_best == pytest.approx(0.5, abs=0.05), ranks
    assert ranks["oft"].p_best == pytest.approx(0.5, abs=0.05), ranks
