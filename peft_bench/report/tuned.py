"""The "Tuned comparison" section of a tuning study's report: the space and budget, each method's best
setting and search (best-so-far curve; expected best against the number of trials and best values at a
range's edge, from report.budget), and its final runs on test (mean with a 95% interval, a paired t-test
against LoRA and against the method's untuned default); and the report of a several-dataset command: the
tuned benchmark table and a link to each dataset's report."""

from __future__ import annotations

import math
from pathlib import Path

from peft_bench.report.budget import budget_section
from peft_bench.report.plots import best_so_far
from peft_bench.report.runs import Setting
from peft_bench.report.stats import interval, paired_test, paired_text
from peft_bench.report.tables import Row, benchmark_table, md_table, metric_of
from peft_bench.results import EDITED, RESULTS_FILE, digest_state, read_results


def same(a, b) -> bool:
    """Whether a run's setting value is the one asked for (floats up to their last digits)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and math.isclose(a, b, rel_tol=1e-9)
    return a == b


def finals(study, method: str, which: str, expected: dict) -> tuple[dict[int, dict], list[str]]:
    """{seed: results} of the method's final runs of `which` (best or default) that completed, at seeds
    1..tune.seeds, with the method settings `expected` (the best trial's values, or the defaults); and a
    line for each run folder left out, saying why (not completed, another setting, another seed)."""
    out, left_out = {}, []
    for seed in range(1, study.cfg.seeds + 1):
        folder = study.dir / "final" / method / f"{which}-s{seed}"
        try:
            r = read_results(folder)
        except (OSError, ValueError):
            left_out.append(f"{method} {which} seed {seed}: no readable {RESULTS_FILE}")
            continue
        got = r.get("config", {}).get("method", {})
        differ = [k for k, v in expected.items() if not same(got.get(k), v)]
        if r.get("status") != "completed":
            left_out.append(f"{method} {which} seed {seed}: {r.get('status')} ({r.get('error', '')[:120]})")
        elif digest_state(r) == "edited":
            left_out.append(f"{method} {which} seed {seed}: {EDITED}")
        elif differ or r.get("seed") != seed:
            what = [f"{k}={got.get(k)}, not {expected[k]}" for k in differ] or [f"seed {r.get('seed')}"]
            left_out.append(f"{method} {which} seed {seed}: trained another setting ({'; '.join(what)})")
        else:
            out[seed] = r
    return out, left_out


def describe_space(spec: dict[str, dict]) -> str:
    """A search space in words: `lr 1e-4..1e-2 (log); alpha {8, 16, 32}`."""
    parts = []
    for key, s in spec.items():
        if "choices" in s:
            parts.append(f"{key} {{{', '.join(str(c) for c in s['choices'])}}}")
        else:
            parts.append(f"{key} {s['low']:g}..{s['high']:g}" + (" (log)" if s["log"] else ""))
    return "; ".join(parts)


def final_scores(
    study, best_params: dict[str, dict | None], default_params: dict[str, dict]
) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]], list[str]]:
    """Each method's {seed: primary test figure} of its best setting's finals and (tune.defaults) of its
    default's, and the final runs left out."""
    score = study.task.score
    tests, defaults, left_out = {}, {}, []
    for m in study.methods:
        runs, out = finals(study, m, "best", best_params[m]) if best_params[m] is not None else ({}, [])
        tests[m], left_out = {s: r[score] for s, r in runs.items() if score in r}, left_out + out
        if study.cfg.defaults:
            runs, out = finals(study, m, "default", default_params[m])
            defaults[m], left_out = {s: r[score] for s, r in runs.items() if score in r}, left_out + out
    return tests, defaults, left_out


def best_curve(trials: list[dict], task) -> list[float | None]:
    """The best validation value so far after each trial, in trial order (None before one completed)."""
    running, curve = None, []
    for t in sorted(trials, key=lambda t: t["number"]):
        if t["state"] == "complete" and t["value"] is not None:
            running = t["value"] if running is None or task.better(t["value"], running) else running
        curve.append(running)
    return curve


def search_cells(trials: list[dict], space: dict, params: dict | None, spec: str) -> list[str]:
    """A method's search in the tuned table: its space, best parameters, the best trial's value (the trial
    the finals re-ran: Optuna's best, the first of equal values), its trials by state and their compute."""
    states = {s: sum(1 for t in trials if t["state"] == s) for s in ("complete", "pruned", "fail", "killed")}
    best = next(
        (
            t
            for t in sorted(trials, key=lambda t: t["number"])
            if t["state"] == "complete" and t["params"] == params
        ),
        None,
    )
    shown = ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in (params or {}).items()
    )
    return [
        describe_space(space),
        shown or "-",
        f"{best['value']:{spec}}" if best else "-",
        f"{states['complete']} / {states['pruned']} / {states['fail']}"
        + (f" (+{states['killed']} killed)" if states["killed"] else ""),
        f"{sum(t['compute_s'] or 0 for t in trials):.0f}",
    ]


def finals_cell(test: dict[int, float], spec: str, bounds: tuple[float, float] | None = None) -> str:
    """The finals' test mean [95% t interval, clipped to the metric's range `bounds`] (n seeds); the mean
    alone for one seed."""
    if not test:
        return "-"
    stat = interval(list(test.values()))
    if stat is None:
        return f"{sum(test.values()) / len(test):{spec}} (n={len(test)})"
    low, high = stat[2:]
    if bounds:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return f"{stat[0]:{spec}} [{low:{spec}}, {high:{spec}}] (n={len(test)})"


def intro(study) -> list[str]:
    """The section's heading and how the comparison was made: the budget, the sampler, the finals."""
    task, cfg = study.task, study.cfg
    pruning = (
        f"median pruner after {cfg.prune_startup()} trials, validation every "
        f"{cfg.eval_every or 'quarter of an'} {'training batches' if cfg.eval_every else 'epoch'}"
        if cfg.prune
        else "no pruning"
    )
    return [
        "## Tuned comparison",
        "",
        f"Each method searched on the validation split with the same budget: {cfg.trials} finished trials "
        f"(Optuna TPE, seed {cfg.sampler_seed}; {pruning}), selected by {task.select_label}; then the best "
        f"setting{' and the untuned default' if cfg.defaults else ''} over seeds 1..{cfg.seeds}, evaluated "
        f"on test. Storage: `{study.storage_shown}` (`optuna-dashboard {study.storage_shown}` shows it in a "
        "browser).",
        "",
    ]


def tuned_section(
    study,
    trials_by_method: dict[str, list[dict]],
    spaces: dict[str, dict],
    best_params: dict[str, dict | None],
    default_params: dict[str, dict],
) -> str:
    """The "Tuned comparison" section (markdown), its best-so-far plot and its budget curve (written into
    the study's report folder), and a warning for each best value at the edge of its range. `best_params`:
    each method's best trial's values (None: no trial completed), as its finals ran; `default_params`: the
    method's own values of the same keys (its untuned default)."""
    task = study.task  # composed once per study
    score, spec = task.score, task.spec
    tests, defaults, left_out = final_scores(study, best_params, default_params)
    rows = []
    for m in study.methods:
        lora = tests.get("lora") if m != "lora" else None
        rows.append(
            [
                m,
                *search_cells(trials_by_method[m], spaces[m], best_params[m], spec),
                finals_cell(tests[m], spec, metric_of(score).bounded),
                paired_text(paired_test(tests[m], lora) if lora is not None else None, spec),
                paired_text(paired_test(tests[m], defaults.get(m, {}), min_pairs=1), spec),
            ]
        )
    header = [
        "Method",
        "Space",
        "Best params",
        f"Best {task.select_by}",
        "Complete / pruned / failed",
        "Trial compute (s)",
        f"{score} mean [95% CI] (n seeds)",
        "vs LoRA: Δ = method − LoRA (paired t-test)",
        "Δ vs untuned default (paired t-test, same seeds)",
    ]
    lines = [*intro(study), *md_table(header, rows)]
    if not task.higher_is_better:
        lines += ["", f"{score}: lower is better, so a negative Δ is an improvement."]
    if left_out:
        lines += ["", "Final runs not counted above:", "", *[f"- {line}" for line in left_out]]
    curves = {m: best_curve(trials_by_method[m], task) for m in study.methods}
    image = best_so_far(curves, task, study.dir / "report")
    if image:
        lines += ["", f"![best so far]({image})"]
    budget = budget_section(
        trials_by_method, study.cfg.trials, task, study.dir / "report", spaces, best_params
    )
    lines += ["", *budget]
    return "\n".join(lines) + "\n"


def datasets_report(
    root: Path, studies: list, finals_of: dict[str, dict[str, dict[int, dict]]], left_out
) -> str:
    """The report of a several-dataset tuning command: the tuned benchmark table (each method's best setting
    on each dataset, its final runs' test figures ×100 as mean ± std [95% t interval] over the seeds, GLUE's
    average, the trivial predictor's row) and a link to each dataset's own tuned report. `finals_of`:
    {dataset: {method: {seed: results}}} of the best settings' completed finals; `left_out`: lines."""
    datasets = [one.dataset for one in studies]
    tasks = {one.dataset: one.study.task for one in studies}
    cfg = studies[0].study.cfg
    methods = list(dict.fromkeys(m for one in studies for m in one.study.methods))
    shown = [d for d in datasets if all(metric_of(k).bounded for k in tasks[d].table_scores)]
    rows = []
    for m in methods:
        row = Row(m, {})
        for d in shown:
            runs = finals_of.get(d, {}).get(m) or {}
            if runs:
                row.cells[d] = Setting(d, m, {}, runs=[runs[s] for s in sorted(runs)])
        rows.append(row)
    objectives = "; ".join(f"{d}: {tasks[d].select_label}" for d in datasets)
    lines = [
        f"# Tuned benchmark: {', '.join(methods)} on {', '.join(datasets)}",
        "",
        f"Every (method, dataset) pair tuned with the same budget: {cfg.trials} finished trials on the "
        f"validation split (Optuna TPE, seed {cfg.sampler_seed}), each dataset's study selecting by its own "
        f"primary metric ({objectives}); then each pair's best setting over seeds 1..{cfg.seeds}, scored on "
        f"test once. Each dataset's study is the one-dataset command's, in `{root}/<dataset>/`.",
        "",
        "## Tuned benchmark table",
        "",
    ]
    if shown:
        lines += [
            "Each cell: the best setting's final runs on that dataset (`<dataset>/final/<method>/"
            "best-s<seed>`); the datasets in the command's order.",
            "",
            *benchmark_table(rows, shown, {d: tasks[d] for d in shown}, intervals=True),
        ]
    left = [d for d in datasets if d not in shown]
    if left:
        lines += ["", f"Not in the table: {', '.join(left)} (a metric without a range, as perplexity)."]
    lines += ["", "## Each dataset's study", ""]
    lines += [
        f"- [{d}](../{d}/report/report.md): its search (space, best parameters, trials, best-so-far plot), "
        + ("its finals against the untuned defaults, " if cfg.defaults else "")
        + "the usual tables of its final runs, their warnings"
        for d in datasets
    ]
    if left_out:
        lines += ["", "## Final runs not counted", "", *[f"- {line}" for line in left_out]]
    return "\n".join(lines) + "\n"
