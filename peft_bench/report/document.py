"""The report folder: report.md put together from its sections (the benchmark table, each dataset's
tables and plots, the runs left out), runs.csv, and the sweep's W&B summary run."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from peft_bench.report.plots import plots
from peft_bench.report.ranks import ranks_section
from peft_bench.report.runs import NO_DIGEST, Setting, load_runs, settings_of
from peft_bench.report.tables import (
    baseline_text,
    benchmark_section,
    method_comparison,
    pairwise_verdicts,
    qlora_memory,
    runs_by_setting,
    seed_statistics,
)

FIRST_COLUMNS = ["run_dir", "status", "method", "dataset", "model", "rank", "seed"]


def default_out(dirs: list[Path]) -> Path:
    if len(dirs) == 1:
        return dirs[0] / "report"
    return Path("reports") / "+".join(d.resolve().name for d in dirs)[:120]


def write_report(
    dirs: list[Path],
    out: Path | None = None,
    wandb_mode: str = "auto",
    include_edited: bool = False,
    sections: Sequence[str] = (),
    margin: float | None = None,
) -> dict:
    """Write report.md, runs.csv and the plots into `out`; returns what was written and read.
    `include_edited`: count runs whose results.json changed after the run (marked ⚠) instead of leaving
    them out. `sections`: markdown sections that open the report, after its first paragraph (a tuning
    study's "Tuned comparison"). `margin`: the difference in the primary metric that the pairwise verdicts
    call negligible (TOST's equivalence margin); None: tables.default_margin (0.01 for a metric with a
    range, 1% of the mean figure for one without)."""
    out = out or default_out(dirs)
    out.mkdir(parents=True, exist_ok=True)
    runs, left_out = load_runs(dirs, include_edited)
    by_dataset = settings_of(runs)
    lines = [
        "# peft_bench report",
        "",
        f"Read from {', '.join(f'`{d}`' for d in dirs)}: {len(runs) + len(left_out)} "
        f"run folders, {len(runs)} completed runs in the tables, {len(left_out)} left out "
        "(listed at the end).",
        "",
        *[line for text in sections for line in (*text.rstrip("\n").split("\n"), "")],
        *benchmark_section(by_dataset),
        *ranks_section(by_dataset, out),
    ]
    images = ["ranks_cd.png"] if (out / "ranks_cd.png").is_file() else []
    for dataset, settings in by_dataset.items():
        text, written = dataset_section(dataset, settings, out, margin)
        lines += text
        images += written
    lines += closing_sections(runs, left_out)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    write_runs_csv(runs, out / "runs.csv")
    summary = {
        "out": out,
        "runs": len(runs),
        "left_out": left_out,
        "images": images,
        "settings": by_dataset,
        "wandb": None,
    }
    if wandb_mode == "on" or (
        wandb_mode == "auto"
        and any("Wandb" in str(r["config"].get("logger", {}).get("_target_", "")) for r in runs)
    ):
        summary["wandb"] = log_to_wandb(runs, out, images)
    return summary


def dataset_section(
    dataset: str, settings: list[Setting], out: Path, margin: float | None = None
) -> tuple[list[str], list[str]]:
    """A dataset's section of report.md: its task and models, the runs by setting, the method comparison,
    the seed statistics, the pairwise verdicts (equivalence `margin`), 4-bit base memory and the plots
    (written into `out`); and the plots' names."""
    task = settings[0].task
    models = sorted({s.config.get("model.name", "?") for s in settings})
    lines = [
        f"## {dataset}",
        "",
        f"Task: {task.label}; model{'s' if len(models) > 1 else ''}: {', '.join(models)}.",
    ]
    said = baseline_text(task, settings[0].runs[0])
    if said:
        lines[-1] += f" {said[0].upper()}{said[1:]}."
    lines += [
        "",
        "### Runs by setting",
        "",
        "Mean ± sample std over seeds where a setting ran several.",
        "",
        *runs_by_setting(settings),
    ]
    table, chosen = method_comparison(settings)
    memory_kinds = sorted({r.get("peak_memory_kind", "?") for s in settings for r in s.runs})
    lines += [
        "",
        "### Method comparison",
        "",
        "Each method's best setting, chosen on the validation split; "
        f"test figures of that setting. Peak memory: {', '.join(memory_kinds)}.",
        "",
        *table,
    ]
    lines += seed_statistics(settings)
    lines += pairwise_verdicts(settings, margin)
    lines += qlora_memory(settings)
    written = plots(dataset, settings, chosen, out)
    if written:
        lines += ["", "### Plots", "", *[f"![{name}]({name})" for name in written]]
    lines.append("")
    return lines, written


def closing_sections(runs: list[dict], left_out: list[tuple[Path, str]]) -> list[str]:
    """The end of report.md: the warnings of runs in the tables, the records without a digest, and every
    run left out of the tables with its reason."""
    lines = []
    warned_runs = [(r["_dir"], w) for r in runs for w in r.get("warnings", [])]
    if warned_runs:
        lines += [
            "## Warnings",
            "",
            "Runs in the tables (marked ⚠) whose figures need care:",
            "",
            *[f"- `{d}`: {w}" for d, w in warned_runs],
            "",
        ]
    older = [r["_dir"] for r in runs if r.get("_trust") == "none"]
    if older:
        lines += ["## Notes", "", *[f"- `{d}`: {NO_DIGEST}" for d in older], ""]
    lines += ["## Runs left out of the tables", ""]
    lines += [f"- `{d}`: {why}" for d, why in left_out] or ["None: every run completed."]
    return lines


def csv_cell(value):
    """A value as runs.csv writes it: a list as JSON (one cell), NaN as `nan` (an empty cell is a field
    the run lacks)."""
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def write_runs_csv(runs: list[dict], path: Path) -> None:
    """One row per run: its folder, then every field (nested ones as a.b, config as config.*, lists as
    JSON), those that name the run first, the others sorted. Each record is normalized on its own and kept
    as objects, so a field some runs lack stays as written (rank 8, not 8.0) in the others."""
    records = [{"run_dir": r["_dir"], **{k: v for k, v in r.items() if not k.startswith("_")}} for r in runs]
    frames = [pd.json_normalize(r, sep=".").map(csv_cell).astype(object) for r in records]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    columns = FIRST_COLUMNS + sorted(set(table.columns) - set(FIRST_COLUMNS))
    table.reindex(columns=columns).to_csv(path, index=False, lineterminator="\r\n")


def log_to_wandb(runs: list[dict], out: Path, images: list[str]) -> str:
    """One W&B run for the sweep (same project and group as its jobs): the runs table and the plots."""
    import wandb  # only when a report logs to W&B: its client is slow to import

    logger = next(
        (
            r["config"]["logger"]
            for r in runs
            if "Wandb" in str(r["config"].get("logger", {}).get("_target_"))
        ),
        {},
    )
    group = logger.get("group") or out.parent.name
    with open(out / "runs.csv") as f:
        rows = list(csv.reader(f))
    run = wandb.init(
        project=logger.get("project", "peft_bench"),
        entity=logger.get("entity"),
        group=group,
        name=f"report-{group}",
        job_type="report",
        dir=str(out),
        reinit="finish_previous",
        mode="offline" if logger.get("offline") else None,
    )
    run.log(
        {
            "runs": wandb.Table(columns=rows[0], data=rows[1:]),
            **{name.removesuffix(".png"): wandb.Image(str(out / name)) for name in images},
        }
    )
    run.save(str(out / "report.md"), base_path=str(out), policy="now")
    run_id = run.id
    run.finish()
    return run_id
