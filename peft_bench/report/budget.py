"""Is a tuning study's budget enough? Each method's expected best validation value against the number of
trials (Dodge et al. 2019, "Show Your Work", in closed form over its completed trials' values: a curve,
`tuned_budget.png`, and a table at n = 1, N/2, N), and a warning for each searched range whose bound the
best value sits at (the range should move)."""

from __future__ import annotations

import math
from pathlib import Path

from peft_bench.report.plots import pyplot, save_figure
from peft_bench.report.stats import expected_max
from peft_bench.report.tables import md_table
from peft_bench.tasks import Task

EDGE = 0.05  # a best value within this fraction of its range's width of a bound is at the edge


def completed_values(trials: list[dict]) -> list[float]:
    """The finite validation values of the completed trials (pruned, failed and killed ones have none
    that is comparable: a pruned trial stopped early)."""
    return [
        t["value"]
        for t in trials
        if t["state"] == "complete" and t["value"] is not None and math.isfinite(t["value"])
    ]


def budget_curves(trials_by_method: dict[str, list[dict]], budget: int, task: Task) -> dict[str, list[float]]:
    """{method: [expected best value of n trials for n = 1..budget]}, [] for a method none of whose trials
    completed."""
    out = {}
    for m, trials in trials_by_method.items():
        values = completed_values(trials)
        out[m] = (
            [expected_max(values, n, task.higher_is_better) for n in range(1, budget + 1)] if values else []
        )
    return out


def budget_points(budget: int) -> list[int]:
    """The table's numbers of trials: 1, half the budget (rounded up), the budget."""
    return sorted({1, (budget + 1) // 2, budget})


def budget_plot(curves: dict[str, list[float]], task: Task, out: Path) -> str | None:
    """Every method's expected best validation value against the number of trials, on one axis; returns
    the PNG's name, None where no method has a curve."""
    if not any(curves.values()):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, curve in curves.items():
        if curve:
            n = range(1, len(curve) + 1)
            ax.plot(n, curve, marker="o" if len(curve) <= 24 else None, markersize=3, label=method)
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_xlabel("number of trials n")
    ax.set_ylabel(f"expected best {task.select_by}")
    ax.set_title("expected best of n trials (completed trials)")
    ax.legend()
    fig.tight_layout()
    name = "tuned_budget.png"
    save_figure(fig, out / name)
    return name


def crossings(curves: dict[str, list[float]]) -> list[tuple[str, str]]:
    """The pairs of methods whose curves cross: one is ahead at some n and behind at another."""
    methods = [m for m, c in curves.items() if c]
    out = []
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            pairs = zip(curves[a], curves[b], strict=True)
            signs = {x > y for x, y in pairs if not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)}
            if len(signs) == 2:
                out.append((a, b))
    return out


def budget_table(
    curves: dict[str, list[float]], counts: dict[str, int], budget: int, task: Task
) -> list[str]:
    """Each method's completed trials and its expected best value at n = 1, N/2, N."""
    points = budget_points(budget)
    header = ["Method", "Completed trials", *[f"E[best {task.select_by}], n={n}" for n in points]]
    rows = [
        [m, str(counts[m]), *[f"{curve[n - 1]:{task.spec}}" if curve else "-" for n in points]]
        for m, curve in curves.items()
    ]
    return md_table(header, rows)


def edge_warnings(
    spaces: dict[str, dict], best_params: dict[str, dict | None], edge: float = EDGE
) -> list[str]:
    """A line for each method's searched numeric range {low, high, log} whose best value lies within
    `edge` of the range's width (on the log scale for a log range) of a bound."""
    out = []
    for m, space in spaces.items():
        best = best_params.get(m) or {}
        for key, spec in space.items():
            v = best.get(key)
            if "low" not in spec or isinstance(v, bool) or not isinstance(v, int | float):
                continue
            low, high, log = spec["low"], spec["high"], spec.get("log", False)
            if log and min(low, high, v) <= 0:
                continue
            f = math.log if log else float
            width = f(high) - f(low)
            if width <= 0:
                continue
            where = (f(v) - f(low)) / width
            bound = "low" if where <= edge else "high" if where >= 1 - edge else None
            if bound:
                out.append(
                    f"⚠ {m}: the best {key}={v:.3g} lies at the {bound} bound of its range {low:g}..{high:g}"
                    + (" (log)" if log else "")
                    + f" (within {edge:.0%} of its width{' on the log scale' if log else ''}): the best may "
                    "lie beyond it; move the range and tune again"
                )
    return out


def budget_section(
    trials_by_method: dict[str, list[dict]],
    budget: int,
    task: Task,
    out: Path,
    spaces: dict[str, dict],
    best_params: dict[str, dict | None],
) -> list[str]:
    """The tuned section's "Is the budget enough?" lines: the curve (written into `out`), how to read
    it, the table at n = 1, N/2, N, and the edge warnings."""
    curves = budget_curves(trials_by_method, budget, task)
    counts = {m: len(completed_values(t)) for m, t in trials_by_method.items()}
    lines = ["### Is the budget enough?", ""]
    image = budget_plot(curves, task, out)
    if image:
        lines += [f"![expected best {task.select_by} against the number of trials]({image})", ""]
    better = "higher" if task.higher_is_better else "lower"
    lines += [
        f"Each method's expected best {task.select_by} ({better} is better) after n trials, n = 1..{budget} "
        '(the budget): the closed form of Dodge et al. 2019 ("Show Your Work") over its completed trials\' '
        "values v_1 <= ... <= v_K, E[best of n] = sum_i v_i ((i/K)^n - ((i-1)/K)^n), the expected best of "
        "n trials drawn with replacement from those observed. Only completed trials count: pruned, failed "
        "and killed ones are left out (a pruned trial's value is from a shorter training), so the curve is "
        "that of a method's completed trials. A line still improving at n = N says more trials would likely "
        "help; one flat well before N says the budget was enough for it. If the lines cross, the ranking "
        "depends on the budget.",
        "",
        *budget_table(curves, counts, budget, task),
    ]
    crossed = crossings(curves)
    if crossed:
        pairs = ", ".join(f"{a} and {b}" for a, b in crossed)
        lines += ["", f"The lines cross ({pairs}): their ranking depends on the budget."]
    warnings = edge_warnings(spaces, best_params)
    if warnings:
        lines += ["", *[f"- {w}" for w in warnings]]
    return lines
