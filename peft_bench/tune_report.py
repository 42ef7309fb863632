"""The "Tuned comparison" section of a tuning study's report: the space and budget, each method's best
setting and search (best-so-far curve), and its final runs on test (mean with a 95% interval, a paired
t-test against LoRA, the change from the method's untuned default)."""

from __future__ import annotations

import math
from pathlib import Path

from peft_bench.report import interval, md_table
from peft_bench.results import RESULTS_FILE, read_results
from peft_bench.tasks import get_task


def finals(study, method: str, which: str) -> dict[int, dict]:
    """{seed: results} of the method's completed final runs of `which` (best or default)."""
    out = {}
    for path in sorted((study.dir / "final" / method).glob(f"{which}-s*/{RESULTS_FILE}")):
        r = read_results(path.parent)
        if r.get("status") == "completed":
            out[r["seed"]] = r
    return out


def paired(a: dict[int, float], b: dict[int, float]) -> str:
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return "-"
    x, y = [a[s] for s in seeds], [b[s] for s in seeds]
    diff = [u - v for u, v in zip(x, y, strict=True)]
    if all(d == diff[0] for d in diff):
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
    study, summary: dict, trials_by_method: dict[str, list[dict]], spaces: dict[str, dict]
) -> str:
    from peft_bench.checks import compose_job

    task = get_task(compose_job([*study.run_overrides(), f"method={study.methods[0]}"]).dataset.task)
    score, spec = task.score, task.spec
    cfg = study.cfg
    lines = [
        "## Tuned comparison",
        "",
        f"Each method searched on the validation split with the same budget: {cfg.trials} finished trials "
        f"(Optuna TPE, seed {cfg.sampler_seed}; "
        + (
            f"median pruner after {cfg.pruner_startup} trials, validation every "
            f"{cfg.eval_every or 'quarter of the'} {'steps' if cfg.eval_every else 'run'}"
            if cfg.prune
            else "no pruning"
        )
        + f"), selected by {task.select_label}; then the best setting"
        + (" and the untuned default" if cfg.defaults else "")
        + f" over seeds 1..{cfg.seeds}, evaluated on test. Storage: `{study.storage_url}` "
        f"(`optuna-dashboard {study.storage_url}` shows it in a browser).",
        "",
    ]
    tests = {
        m: {s: r[score] for s, r in finals(study, m, "best").items() if score in r} for m in study.methods
    }
    rows, curves = [], {}
    for method in study.methods:
        trials = trials_by_method[method]
        states = {
            s: sum(1 for t in trials if t["state"] == s) for s in ("complete", "pruned", "fail", "killed")
        }
        complete = [t for t in trials if t["state"] == "complete" and t["value"] is not None]
        best = (
            (max if task.higher_is_better else min)(complete, key=lambda t: t["value"]) if complete else None
        )
        running, curve = None, []
        for t in sorted(trials, key=lambda t: t["number"]):
            if t["state"] == "complete" and t["value"] is not None:
                running = t["value"] if running is None or task.better(t["value"], running) else running
            curve.append(running)
        curves[method] = curve
        compute = sum(t["compute_s"] or 0 for t in trials)
        stat = interval(list(tests[method].values()))
        default = {s: r[score] for s, r in finals(study, method, "default").items() if score in r}
        change = "-"
        if tests[method] and default:
            mean_best = sum(tests[method].values()) / len(tests[method])
            change = f"{mean_best - sum(default.values()) / len(default):+{spec}}"
        vs = paired(tests[method], tests["lora"]) if "lora" in tests and method != "lora" else "-"
        params = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in (best or {}).get("params", {}).items()
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
                if not tests[method]
                else (
                    f"{sum(tests[method].values()) / len(tests[method]):{spec}}"
                    if stat is None
                    else f"{stat[0]:{spec}} [{stat[2]:{spec}}, {stat[3]:{spec}}]"
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
        f"{score} mean [95% CI]",
        "vs LoRA: Δ (paired t-test)",
        "Δ vs untuned default",
    ]
    lines += md_table(header, rows)
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
