"""The "Tuned comparison" section of a tuning study's report: the space and budget, each method's best
setting and search (best-so-far curve), and its final runs on test (mean with a 95% interval, a paired
t-test against LoRA, the change from the method's untuned default); and the report of a several-dataset
command: the tuned benchmark table and a link to each dataset's report."""

from __future__ import annotations

import math
from pathlib import Path

from peft_bench.report import Row, Setting, benchmark_table, interval, md_table, metric_of
from peft_bench.results import EDITED, RESULTS_FILE, digest_state, read_results


def same(a, b) -> bool:
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


def paired(a: dict[int, float], b: dict[int, float]) -> str:
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return "-"
    x, y = [a[s] for s in seeds], [b[s] for s in seeds]
    diff = [u - v for u, v in zip(x, y, strict=True)]
    if max(diff) - min(diff) <= 1e-9 * max(1.0, *map(abs, x), *map(abs, y)):  # float noise is no variance
        return f"{diff[0]:+.4f} (n={len(seeds)}, no variance)"
    res = stats.ttest_rel(x, y)
    mark = " *" if res.pvalue < 0.05 else ""
    return f"{sum(diff) / len(diff):+.4f} (t={res.statistic:.2f}, p={res.pvalue:.3g}, n={len(seeds)}){mark}"


def describe_space(spec: dict[str, dict]) -> str:
    """A search space in words: `lr 1e-4..1e-2 (log); alpha {8, 16, 32}`."""
    parts = []
    for key, s in spec.items():
        if "choices" in s:
            parts.append(f"{key} {{{', '.join(str(c) for c in s['choices'])}}}")
        else:
            parts.append(f"{key} {s['low']:g}..{s['high']:g}" + (" (log)" if s["log"] else ""))
    return "; ".join(parts)


def tuned_section(
    study,
    summary: dict,
    trials_by_method: dict[str, list[dict]],
    spaces: dict[str, dict],
    best_params: dict[str, dict | None],
    default_params: dict[str, dict],
) -> str:
    """`best_params`: each method's best trial's values (None: no trial completed), as its finals ran;
    `default_params`: the method's own values of the same keys (its untuned default)."""

    task = study.task  # composed once per study
    score, spec = task.score, task.spec
    cfg = study.cfg
    lines = [
        "## Tuned comparison",
        "",
        f"Each method searched on the validation split with the same budget: {cfg.trials} finished trials "
        f"(Optuna TPE, seed {cfg.sampler_seed}; "
        + (
            f"median pruner after {cfg.prune_startup()} trials, validation every "
            f"{cfg.eval_every or 'quarter of an'} {'training batches' if cfg.eval_every else 'epoch'}"
            if cfg.prune
            else "no pruning"
        )
        + f"), selected by {task.select_label}; then the best setting"
        + (" and the untuned default" if cfg.defaults else "")
        + f" over seeds 1..{cfg.seeds}, evaluated on test. Storage: `{study.storage_shown}` "
        f"(`optuna-dashboard {study.storage_shown}` shows it in a browser).",
        "",
    ]
    tests, defaults, left_out = {}, {}, []
    for m in study.methods:
        runs, out = finals(study, m, "best", best_params[m]) if best_params[m] is not None else ({}, [])
        tests[m], left_out = {s: r[score] for s, r in runs.items() if score in r}, left_out + out
        if cfg.defaults:
            runs, out = finals(study, m, "default", default_params[m])
            defaults[m], left_out = {s: r[score] for s, r in runs.items() if score in r}, left_out + out
    rows, curves = [], {}
    for method in study.methods:
        trials = trials_by_method[method]
        states = {
            s: sum(1 for t in trials if t["state"] == s) for s in ("complete", "pruned", "fail", "killed")
        }
        # the trial the finals re-ran (Optuna's best trial; the first of equal values)
        best = next(
            (
                t
                for t in sorted(trials, key=lambda t: t["number"])
                if t["state"] == "complete" and t["params"] == best_params[method]
            ),
            None,
        )
        running, curve = None, []
        for t in sorted(trials, key=lambda t: t["number"]):
            if t["state"] == "complete" and t["value"] is not None:
                running = t["value"] if running is None or task.better(t["value"], running) else running
            curve.append(running)
        curves[method] = curve
        compute = sum(t["compute_s"] or 0 for t in trials)
        test = tests[method]
        stat = interval(list(test.values()))
        change = "-"
        common = sorted(set(test) & set(defaults.get(method, {})))
        if common:  # the same seeds on both sides
            delta = sum(test[s] - defaults[method][s] for s in common) / len(common)
            change = f"{delta:+{spec}} (n={len(common)})"
        vs = paired(test, tests["lora"]) if "lora" in tests and method != "lora" else "-"
        params = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in (best_params[method] or {}).items()
        )
        rows.append(
            [
                method,
                describe_space(spaces[method]),
                params or "-",
                f"{best['value']:{spec}}" if best else "-",
                f"{states['complete']} / {states['pruned']} / {states['fail']}"
                + (f" (+{states['killed']} killed)" if states["killed"] else ""),
                f"{compute:.0f}",
                "-"
                if not test
                else (
                    f"{sum(test.values()) / len(test):{spec}} (n={len(test)})"
                    if stat is None
                    else f"{stat[0]:{spec}} [{stat[2]:{spec}}, {stat[3]:{spec}}] (n={len(test)})"
                ),
                vs,
                change,
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
        "Δ vs untuned default (same seeds)",
    ]
    lines += md_table(header, rows)
    if not task.higher_is_better:
        lines += ["", f"{score}: lower is better, so a negative Δ is an improvement."]
    if left_out:
        lines += ["", "Final runs not counted above:", "", *[f"- {line}" for line in left_out]]
    image = plot_curves(curves, task, study.dir / "report")
    if image:
        lines += ["", f"![best so far]({image})"]
    return "\n".join(lines) + "\n"


def plot_curves(curves: dict[str, list], task, out: Path) -> str | None:
    """Each method's best validation score so far against the trial number."""
    if not any(v is not None for c in curves.values() for v in c):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, curve in curves.items():
        points = [(i, v) for i, v in enumerate(curve) if v is not None and math.isfinite(v)]
        if points:
            ax.step([p[0] for p in points], [p[1] for p in points], where="post", label=method)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"best {task.select_by} so far")
    ax.legend()
    fig.tight_layout()
    name = "tuned_best_so_far.png"
    fig.savefig(out / name, dpi=120)
    fig.savefig(out / name.replace(".png", ".svg"))
    plt.close(fig)
    return name


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
