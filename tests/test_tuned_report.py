"""The "Tuned comparison" section of a tuning study's report: a fake tune folder (final runs written as
train.run writes them) gives exactly the figures worked out here with scipy and statistics, not by the
code under test: each method's test mean and 95% t interval, the paired t-test against LoRA and against
the method's untuned default, and a paired difference without variance said as such."""

from __future__ import annotations

import math
import statistics
from types import SimpleNamespace

import pytest
from scipy import stats

from peft_bench.report import write_report
from peft_bench.report.budget import edge_warnings
from peft_bench.report.stats import expected_max
from peft_bench.report.tuned import tuned_section
from peft_bench.results import write_results
from peft_bench.tasks import task_of
from tests.test_report import result

METHODS = ["lora", "dora"]
BEST, DEFAULT = {"lr": 3e-3}, {"lr": 1e-3}
SEEDS = (1, 2, 3)
# test accuracy of the final runs at seeds 1, 2, 3
TEST_ACC = {
    ("lora", "best"): [0.80, 0.83, 0.84],
    ("lora", "default"): [0.78, 0.81, 0.82],  # best - default: 0.02 on every seed (up to float noise)
    ("dora", "best"): [0.82, 0.82, 0.87],
    ("dora", "default"): [0.79, 0.83, 0.80],
}


def final_run(method: str, which: str, seed: int) -> dict:
    """A final run's results.json: accuracy its primary metric, the method's lr that of `which`."""
    r = result(method, seed, TEST_ACC[method, which][seed - 1])
    r["config"]["dataset"]["metric"] = "acc"
    r["config"]["method"].update(BEST if which == "best" else DEFAULT)
    return r


@pytest.fixture
def study(tmp_path) -> SimpleNamespace:
    """A tune folder with every final run of two methods (best and default, seeds 1..3), and the study
    the report reads (its task, options, folder)."""
    for (method, which), _ in TEST_ACC.items():
        for seed in SEEDS:
            write_results(tmp_path / "final" / method / f"{which}-s{seed}", final_run(method, which, seed))
    cfg = SimpleNamespace(
        trials=3, seeds=len(SEEDS), sampler_seed=0, prune=False, eval_every=None, defaults=True
    )
    return SimpleNamespace(
        task=task_of(final_run("lora", "best", 1)),
        cfg=cfg,
        methods=METHODS,
        dir=tmp_path,
        storage_shown=f"sqlite:///{tmp_path / 'study.db'}",
    )


TRIALS = [
    {"number": 0, "state": "complete", "params": DEFAULT, "value": 0.80, "compute_s": 10.0, "steps": 4},
    {"number": 1, "state": "complete", "params": BEST, "value": 0.85, "compute_s": 12.0, "steps": 4},
    {"number": 2, "state": "pruned", "params": {"lr": 1e-2}, "value": None, "compute_s": 3.0, "steps": 1},
]
SPACE = {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}


def section(study, trials: dict[str, list[dict]] | None = None, best: dict[str, dict] | None = None) -> str:
    return tuned_section(
        study,
        trials or {m: TRIALS for m in METHODS},
        {m: SPACE for m in METHODS},
        best or {m: BEST for m in METHODS},
        {m: DEFAULT for m in METHODS},
    )


def cells(text: str, method: str) -> dict[str, str]:
    header = next(line for line in text.splitlines() if line.startswith("| Method |"))
    row = next(line for line in text.splitlines() if line.startswith(f"| {method} |"))
    split = [[c.strip() for c in line.strip("|").split("|")] for line in (header, row)]
    return dict(zip(*split, strict=True))


def paired_by_hand(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """(mean difference, t, two-sided p) of a paired t-test, from the differences' mean and sample std."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    t = statistics.mean(d) / (statistics.stdev(d) / math.sqrt(len(d)))
    return statistics.mean(d), t, 2 * stats.t.sf(abs(t), len(d) - 1)


def test_the_tuned_section_has_the_hand_computed_means_intervals_and_paired_tests(study):
    text = section(study)
    dora, lora = cells(text, "dora"), cells(text, "lora")
    assert dora["Best val_acc"] == "0.8500" and dora["Complete / pruned / failed"] == "2 / 1 / 0"
    assert dora["Trial compute (s)"] == "25" and dora["Best params"] == "lr=0.003"

    # test mean and 95% Student-t interval over seeds 1..3: dora 0.82, 0.82, 0.87 -> mean 0.8367,
    # s 0.0289, half width t(0.975, 2) * s / sqrt(3) = 4.3027 * 0.0289 / 1.7321 = 0.0717
    for method, row in (("dora", dora), ("lora", lora)):
        x = TEST_ACC[method, "best"]
        low, high = stats.t.interval(0.95, len(x) - 1, loc=statistics.mean(x), scale=stats.sem(x))
        assert (
            row["test_acc mean [95% CI] (n seeds)"]
            == f"{statistics.mean(x):.4f} [{low:.4f}, {high:.4f}] (n=3)"
        )
    assert dora["test_acc mean [95% CI] (n seeds)"] == "0.8367 [0.7650, 0.9084] (n=3)"

    # dora - lora on each seed: +0.02, -0.01, +0.03: mean +0.0133, s 0.0208, t = 1.11, p = 0.383
    delta, t, p = paired_by_hand(TEST_ACC["dora", "best"], TEST_ACC["lora", "best"])
    scipy_says = stats.ttest_rel(TEST_ACC["dora", "best"], TEST_ACC["lora", "best"])
    assert (t, p) == pytest.approx((scipy_says.statistic, scipy_says.pvalue))
    assert (round(t, 2), round(p, 3)) == (1.11, 0.383)
    assert dora["vs LoRA: Δ = method − LoRA (paired t-test)"] == f"{delta:+.4f} (t={t:.2f}, p={p:.3g}, n=3)"
    assert lora["vs LoRA: Δ = method − LoRA (paired t-test)"] == "-"

    # dora best - default on each seed: +0.03, -0.01, +0.07: mean +0.03, s 0.04, t = 1.30, p = 0.324
    delta, t, p = paired_by_hand(TEST_ACC["dora", "best"], TEST_ACC["dora", "default"])
    assert (round(delta, 4), round(t, 2), round(p, 3)) == (0.03, 1.3, 0.324)
    change = "Δ vs untuned default (paired t-test, same seeds)"
    assert dora[change] == f"{delta:+.4f} (t={t:.2f}, p={p:.3g}, n=3)"
    # lora best - default: 0.02 on every seed, up to float noise: no variance, so no t and no p
    assert lora[change] == "+0.0200 (n=3, no variance)"


def test_a_seed_missing_on_one_side_is_left_out_of_the_pairing(study):
    (study.dir / "final" / "dora" / "default-s3" / "results.json").unlink()
    text = section(study)
    dora = cells(text, "dora")
    # seeds 1 and 2: +0.03, -0.01: mean +0.01, s 0.0283, t = 0.50, p = 0.705
    delta, t, p = paired_by_hand(TEST_ACC["dora", "best"][:2], TEST_ACC["dora", "default"][:2])
    assert (round(t, 2), round(p, 3)) == (0.5, 0.705)
    assert (
        dora["Δ vs untuned default (paired t-test, same seeds)"]
        == f"{delta:+.4f} (t={t:.2f}, p={p:.3g}, n=2)"
    )
    assert "- dora default seed 3: no readable results.json" in text


def test_the_tuned_section_opens_the_report_of_the_final_runs(study):
    text = section(study)
    out = write_report([study.dir / "final"], study.dir / "report", wandb_mode="off", sections=[text])
    md = (study.dir / "report" / "report.md").read_text()
    assert md.startswith("# peft_bench report\n\nRead from ")
    assert text.strip() in md and md.index("## Tuned comparison") < md.index("## sst2")
    assert out["runs"] == 12 and (study.dir / "report" / "tuned_best_so_far.png").is_file()
    assert (study.dir / "report" / "tuned_budget.png").is_file() and "](tuned_budget.png)" in md


def test_a_non_finite_figure_is_nan_in_the_statistics_not_an_error():
    import math

    from peft_bench.report.stats import interval, mean_std, paired_test

    mean, std = mean_std([float("nan"), 1.0])
    assert math.isnan(mean) and math.isnan(std)
    assert all(math.isnan(v) for v in interval([float("inf"), 1.0, 2.0]))
    test = paired_test({1: float("inf"), 2: 0.5}, {1: 0.4, 2: 0.3})
    assert test.n == 2 and math.isnan(test.t) and not test.significant


def test_a_run_from_before_a_key_existed_is_the_same_setting():
    """Sparse LoRA runs written before method.pruning.start_fraction/end_fraction existed and after:
    one setting (their seeds pooled), as skip and resume take them; a LoRA run gains no pruning keys."""
    from peft_bench.report.runs import setting_config

    new = {
        "method": {
            "name": "sparse_lora",
            "pruning": {"target": 0.5, "start_fraction": 0.1, "end_fraction": 0.7},
        }
    }
    old = {"method": {"name": "sparse_lora", "pruning": {"target": 0.5}}}
    assert setting_config({"config": old}) == setting_config({"config": new})
    other = {"method": {"name": "sparse_lora", "pruning": {"target": 0.5, "start_fraction": 0.2}}}
    assert setting_config({"config": other}) != setting_config({"config": new})
    assert not any("pruning" in k for k in setting_config({"config": {"method": {"name": "lora"}}}))


# --------------------------------------------------------------------------- is the budget enough?


def budget_rows(text: str) -> dict[str, dict[str, str]]:
    """{method: {column: cell}} of the table under "### Is the budget enough?"."""
    lines = text.splitlines()
    start = lines.index("### Is the budget enough?")
    table = [line for line in lines[start:] if line.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[1:]]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def test_the_budget_table_is_the_expected_best_of_n_completed_trials(study):
    text = section(study)
    rows = budget_rows(text)
    # the budget N = tune.trials = 3: n = 1, 2 (half, rounded up), 3; over the completed values 0.80 and
    # 0.85 only (the pruned trial is left out): n = 2: 0.80 (1/2)^2 + 0.85 (1 - (1/2)^2) = 0.8375
    assert expected_max([0.80, 0.85], 2) == pytest.approx(0.8375)
    for m in METHODS:
        assert rows[m]["Completed trials"] == "2"
        for n in (1, 2, 3):
            assert rows[m][f"E[best val_acc], n={n}"] == f"{expected_max([0.80, 0.85], n):.4f}"
    assert rows["dora"]["E[best val_acc], n=1"] == "0.8250"
    assert (study.dir / "report" / "tuned_budget.png").is_file()
    assert "![expected best val_acc against the number of trials](tuned_budget.png)" in text
    assert "If the lines cross, the ranking depends on the budget." in text
    assert "Only completed trials count: pruned, failed and killed ones are left out" in text
    # same trials for both methods: the lines coincide, they do not cross; best lr 3e-3 is mid-range
    assert "The lines cross" not in text and "⚠" not in text
    print(text)


def test_lines_that_cross_are_named(study):
    # lora: 0.80, 0.81 -> n=1 0.805, n=3 0.80/8 + 0.81 7/8 = 0.80875; dora: 0.70, 0.90 -> n=1 0.80,
    # n=3 0.70/8 + 0.90 7/8 = 0.875: lora ahead after one trial, dora after three
    values = {"lora": (0.80, 0.81), "dora": (0.70, 0.90)}
    trials = {m: [{**t, "value": v} for t, v in zip(TRIALS[:2], values[m], strict=True)] for m in METHODS}
    rows = budget_rows(text := section(study, trials))
    hand = {("lora", 1): 0.805, ("dora", 1): 0.80, ("lora", 3): 0.80875, ("dora", 3): 0.875}
    for (m, n), value in hand.items():
        assert expected_max(values[m], n) == pytest.approx(value)
        assert rows[m][f"E[best val_acc], n={n}"] == f"{expected_max(values[m], n):.4f}"
    assert "The lines cross (lora and dora): their ranking depends on the budget." in text


def test_a_best_lr_at_the_low_bound_of_its_log_range_is_warned(study):
    # dora's best lr 1.1e-4: log10 position (log 1.1e-4 - log 1e-4) / (log 1e-2 - log 1e-4) = 0.041/2 = 2%
    text = section(study, best={"lora": BEST, "dora": {"lr": 1.1e-4}})
    warned = [line for line in text.splitlines() if "⚠" in line]
    assert warned == [
        "- ⚠ dora: the best lr=0.00011 lies at the low bound of its range 0.0001..0.01 (log) (within 5% of "
        "its width on the log scale): the best may lie beyond it; move the range and tune again"
    ]
    # lora's 3e-3 sits at (log 30) / 2 = 74% of the log range: no warning; nor for a choice
    assert edge_warnings({"lora": SPACE}, {"lora": BEST}) == []
    assert edge_warnings({"m": {"r": {"choices": [4, 8]}}}, {"m": {"r": 4}}) == []
    # a linear range: 0.195 of 0..0.2 is within 5% of the width (0.01) of the high bound; 0.18 is not
    linear = {"m": {"dropout": {"low": 0.0, "high": 0.2, "log": False}}}
    assert (
        "at the high bound of its range 0..0.2 (within 5% of its width)"
        in edge_warnings(linear, {"m": {"dropout": 0.195}})[0]
    )
    assert edge_warnings(linear, {"m": {"dropout": 0.18}}) == [] and edge_warnings(linear, {"m": None}) == []


def test_writing_the_tuned_report_warns_on_the_console_of_a_best_at_the_edge(study, caplog):
    import optuna

    from peft_bench.tune.finals import write_tuned_report

    def opt_study(lr: float):
        s = optuna.create_study(direction="maximize")
        dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
        s.add_trial(optuna.trial.create_trial(params={"lr": lr}, distributions=dist, value=0.85))
        return s

    study.studies = {"lora": opt_study(3e-3), "dora": opt_study(9.5e-3)}
    study.spaces = {m: SPACE for m in METHODS}
    study.method_configs = {m: SimpleNamespace(lr=1e-3) for m in METHODS}
    with caplog.at_level("WARNING", logger="peft_bench"):
        report = write_tuned_report(study)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "⚠" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("⚠ dora: the best lr=0.0095 lies at the high bound")
    assert warned[0] in report.read_text() and (study.dir / "report" / "tuned_budget.png").is_file()
