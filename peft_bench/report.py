"""Compare the runs of one or more sweeps: tables, seed statistics and plots.

    python -m peft_bench.report DIR [DIR ...] [--out FOLDER] [--wandb auto|on|off] [--include-edited]
    peft-bench report DIR [DIR ...]

Reads every results.json under the given run or sweep folders and writes into FOLDER (default
DIR/report for one DIR, reports/<names> for several):
  report.md   over two or more datasets, first the benchmark table PEFT papers print (GLUE's: a row per
              setting, each dataset's metrics ×100, GLUE's average, the trivial predictor's row); then
              per dataset: the runs by setting (mean ± std over seeds), the method comparison (each
              method's best setting by validation score), seed statistics with a paired test against
              LoRA, 4-bit base memory, the plots; and every run left out of the tables, with its reason;
  runs.csv    one row per run, every field (nested ones as a.b, config as config.*, lists as JSON);
  *.png/svg   score vs trainable parameters (log axis, Pareto front), sparsity vs rank, train time
              and peak memory per method, 4-bit base memory against LoRA, training curves.
A setting is a run's configuration without its seed and the keys that shape no figure (paths, logging:
resolvers.KEY_ROLES), so
`seed=1,2,3 -m` gives three runs of one setting. A results.json changed after its run wrote it (its
digest does not match) is left out, named, unless --include-edited counts it (marked ⚠).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from peft_bench.io import filesystem_refusal
from peft_bench.resolvers import setting_identity
from peft_bench.results import EDITED, RESULTS_FILE, collect, digest_state, flatten, unfinished_reason
from peft_bench.tasks import METRICS, Metric, Task, column, task_of

SHORT = {"method.r": "rank", "method.pruning.target": "sparsity"}
REQUIRED = ("method", "dataset", "model", "seed", "trainable_params", "total_params", "train_time_s")
BASELINE = "lora"
ALPHA = 0.05


@dataclass
class Setting:
    dataset: str
    method: str
    config: dict  # flattened, the keys that define a setting (resolvers.setting_identity)
    runs: list[dict] = field(default_factory=list)
    label: str = ""  # the keys that tell it apart from the other settings of its dataset

    @property
    def task(self) -> Task:
        return task_of(self.runs[0])

    @property
    def score(self) -> str:  # the primary test metric
        return self.task.score

    @property
    def select_by(self) -> str:  # how the best setting of a method is chosen: validation only
        return self.task.select_by

    @property
    def rank(self):
        return self.config.get("method.r")

    @property
    def seeds(self) -> list[int]:
        return [r["seed"] for r in self.runs]

    def values(self, key: str) -> list[float]:
        return [float(r[key]) for r in self.runs if isinstance(r.get(key), int | float)]

    def mean(self, key: str) -> float | None:
        v = self.values(key)
        return sum(v) / len(v) if v else None


# ---------------------------------------------------------------------------------------- reading


NO_DIGEST = "no digest (written by an older peft_bench): counted as it is"


def load_runs(dirs: list[Path], include_edited: bool = False) -> tuple[list[dict], list[tuple[Path, str]]]:
    """(completed runs, [(folder, why it is left out)] for the unreadable, partial, failed, running,
    stale (killed), edited and duplicate runs). A run of the same setting and seed as one already read
    (the same sweep twice, `rank=4,4`) is left out as a duplicate: seeds are counted once each. A record
    whose digest does not match (changed after its run wrote it) is left out unless `include_edited`;
    then it is counted with a warning."""
    good, left_out, seen = [], [], {}
    for root in dirs:
        if not root.is_dir():
            left_out.append((root, "no such folder"))
            continue
        for run_dir, r in collect(root):
            if (why := unfinished_reason(r)) is not None:
                left_out.append((run_dir, why))
            elif (trust := digest_state(r)) == "edited" and not include_edited:
                left_out.append((run_dir, f"{EDITED} (--include-edited counts it)"))
            elif missing := [k for k in (*REQUIRED, "config") if k not in r] + no_val_scores(r):
                left_out.append((run_dir, f"partial {RESULTS_FILE}: no {', '.join(missing)}"))
            else:
                marks = [f"{EDITED}; counted (--include-edited)"] if trust == "edited" else []
                warnings = [*r.get("warnings", []), *marks]
                r = {**r, "warnings": warnings, "_trust": trust, "_dir": str(run_dir)}
                key = (setting_key(r), r["seed"])
                if key not in seen:
                    seen[key] = r
                    good.append(r)
                    continue
                kept = seen[key]
                if has_test(r) and not has_test(kept):  # the same run once evaluated with test=false:
                    i = next(i for i, g in enumerate(good) if g is kept)  # keep the one with test figures
                    good[i] = seen[key] = r
                    kept, r = r, kept
                left_out.append(
                    (Path(r["_dir"]), f"duplicate of {kept['_dir']} (same setting and seed): counted once")
                )
    return good, left_out


def no_val_scores(r: dict) -> list[str]:
    """[] if the record has a validation figure of its task (val_f1 or val_acc, val_pearson or
    val_spearman, val_ppl), else what it lacks in words."""
    keys = task_of(r).val_scores
    return [] if any(k in r for k in keys) else [" or ".join(keys)]


def has_test(r: dict) -> bool:
    """Whether a run has test figures (one with test=false, as a tuning trial, has validation only)."""
    return isinstance(r.get(task_of(r).score), int | float)


def setting_config(r: dict) -> dict:
    """A run's configuration without its seed, paths and logging; with the tokenized data's cache key
    (the data's content and layout and the tokenizer: the files' paths are left out, their bytes are not)."""
    cfg = setting_identity(flatten(r["config"], lists_as_json=True))
    if isinstance(r.get("data"), dict) and r["data"].get("cache_key"):
        cfg["data.cache_key"] = r["data"]["cache_key"]
    # what trainer.precision=null and accelerator=auto became on the machine that ran it: a bf16 GPU
    # run and an fp32 CPU run of one config are two settings
    if r.get("precision"):
        cfg["resolved.precision"] = r["precision"]
    if r.get("device"):
        cfg["resolved.device"] = str(r["device"]).split(":")[0]
    return cfg


def setting_key(r: dict) -> str:
    return json.dumps([r["dataset"], setting_config(r)], sort_keys=True, default=str)


def settings_of(runs: list[dict]) -> dict[str, list[Setting]]:
    """Runs grouped into settings (same configuration but the seed), per dataset, labelled."""
    by_dataset: dict[str, dict[str, Setting]] = defaultdict(dict)
    for r in runs:
        cfg = setting_config(r)
        key = json.dumps(cfg, sort_keys=True, default=str)
        s = by_dataset[r["dataset"]].setdefault(key, Setting(r["dataset"], r["method"], cfg))
        s.runs.append(r)
    out = {}
    for dataset, group in sorted(by_dataset.items()):
        settings = list(group.values())
        label_settings(settings)
        settings.sort(
            key=lambda s: (s.method != BASELINE, s.method, s.rank if s.rank is not None else -1, s.label)
        )
        for s in settings:
            s.runs.sort(key=lambda r: r["seed"])
        out[dataset] = settings
    return out


def label_settings(settings: list[Setting]) -> None:
    """Label each setting by the config keys that vary across its dataset's settings, skipping a key
    whose value follows from the keys already taken (method.name decides method._target_, rank decides
    lora.r, ...)."""
    everywhere = set.intersection(*(set(s.config) for s in settings))
    groups = ("method.name", "method.", "model.name", "dataset.", "model.", "trainer.")

    def order(k: str):  # the method's own keys first; keys some runs lack (older schemas) last
        return (
            k not in everywhere and not k.startswith("method."),
            next((i for i, g in enumerate(groups) if k.startswith(g)), len(groups)),
            k.count("."),
            k,
        )

    keys = sorted({k for s in settings for k in s.config}, key=order)
    taken: list[str] = []
    for key in keys:
        if len({json.dumps(s.config.get(key), default=str) for s in settings}) < 2:
            continue
        implied: dict = {}
        if all(
            implied.setdefault(tuple(str(s.config.get(t)) for t in taken), s.config.get(key))
            == s.config.get(key)
            for s in settings
        ):
            continue
        taken.append(key)
    for s in settings:
        s.label = " ".join(
            f"{SHORT.get(k, k)}={s.config[k]}"
            for k in taken
            if k not in ("method.name", "method.r") and k in s.config
        )


# ------------------------------------------------------------------------------------ statistics


def interval(values: list[float], level: float = 0.95) -> tuple[float, float, float, float] | None:
    """(mean, sample std, low, high) of a t interval over seeds; None below two values."""
    from scipy import stats

    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def baseline_for(s: Setting, settings: list[Setting]) -> Setting | None:
    """The LoRA setting a method is compared with: same model, the same rank if there is one, else the
    best LoRA setting by validation score."""
    if s.method == BASELINE:
        return None
    lora = [
        b
        for b in settings
        if b.method == BASELINE and b.config.get("model.name") == s.config.get("model.name")
    ]
    same_rank = [b for b in lora if s.rank is not None and b.rank == s.rank]
    return best(same_rank or lora)


def best(settings: list[Setting]) -> Setting | None:
    if not settings:
        return None
    sign = -1 if settings[0].task.higher_is_better else 1  # highest F1 or lowest perplexity
    return min(
        settings,
        key=lambda s: sign * (s.mean(s.select_by) if s.mean(s.select_by) is not None else math.inf * sign),
    )


def paired_test(s: Setting, base: Setting) -> dict | None:
    """Two-sided paired t-test of the primary test metric over the seeds both settings ran."""
    from scipy import stats

    mine = {r["seed"]: r.get(s.score) for r in s.runs}
    theirs = {r["seed"]: r.get(base.score) for r in base.runs}
    seeds = sorted(k for k in mine if k in theirs and mine[k] is not None and theirs[k] is not None)
    if len(seeds) < 2:
        return None
    a, b = [mine[k] for k in seeds], [theirs[k] for k in seeds]
    diff = [x - y for x, y in zip(a, b, strict=True)]
    if all(d == diff[0] for d in diff):  # zero variance: t is undefined
        t, p = (math.inf if diff[0] else math.nan), (0.0 if diff[0] else 1.0)
    else:
        res = stats.ttest_rel(a, b)
        t, p = float(res.statistic), float(res.pvalue)
    return {"n": len(seeds), "delta": sum(diff) / len(diff), "t": t, "p": p, "significant": p < ALPHA}


# ---------------------------------------------------------------------------------------- tables


def fmt(values: list[float], spec: str) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], spec)
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{format(mean, spec)} ± {format(std, spec)}"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *["| " + " | ".join(row) + " |" for row in rows],
    ]


def params(s: Setting) -> tuple[str, str]:
    r = s.runs[0]
    return (
        f"{r['trainable_params']:,} / {r['total_params']:,}",
        f"{r['trainable_params'] / r['total_params']:.3%}",
    )


def runs_by_setting(settings: list[Setting]) -> list[str]:
    task = settings[0].task
    scores = [(column(k), k, task.spec) for k in (*task.val_scores, *task.test_scores)]
    header = [
        "Method",
        "Rank",
        "Setting",
        "Seeds",
        "Trainable Params / Total",
        "Ratio",
        *[h for h, _, _ in scores],
        "Sparsity (<1e-3)",
        "Train Time (s)",
    ]
    rows = [
        [
            s.method + warned(s),
            str(s.rank) if s.rank is not None else "-",
            s.label or "-",
            str(len(s.runs)),
            *params(s),
            *[fmt(s.values(k), spec) for _, k, spec in scores],
            fmt(s.values("sparsity_below_1e-3"), ".3f"),
            fmt(s.values("train_time_s"), ".1f"),
        ]
        for s in settings
    ]
    return md_table(header, rows)


def warned(s: Setting) -> str:
    """A mark on a setting whose runs carry warnings (single-class split, ...): listed under Warnings."""
    return " ⚠" if any(r.get("warnings") for r in s.runs) else ""


def pruning_change(s: Setting) -> str:
    """Test score before -> after one-shot pruning (mean over seeds), where a run pruned after training."""
    before = [r["before_pruning"][s.score] for r in s.runs if s.score in r.get("before_pruning", {})]
    if not before:
        return "-"
    after = [r[s.score] for r in s.runs if "before_pruning" in r]
    spec = s.task.spec
    return f"{format(sum(before) / len(before), spec)} → {format(sum(after) / len(after), spec)}"


def method_comparison(settings: list[Setting]) -> tuple[list[str], list[Setting]]:
    task = settings[0].task
    chosen = [best([s for s in settings if s.method == m]) for m in dict.fromkeys(s.method for s in settings)]
    scores = [(column(k), k, task.spec) for k in task.comparison_scores]
    header = [
        "Method",
        f"Best setting (by {task.select_label})",
        "Seeds",
        *[h for h, _, _ in scores],
        "Trainable Params",
        "Train Time (s)",
        "Time / Epoch (s)",
        "Peak Memory (MiB)",
        "Latency (ms/example)",
        "Merged Latency",
        "Sparsity (<1e-3)",
        "Test Before → After Pruning",
    ]
    rows = []
    for s in chosen:
        setting = " ".join(x for x in (f"rank={s.rank}" if s.rank is not None else "", s.label) if x) or "-"
        rows.append(
            [
                s.method + warned(s),
                setting,
                str(len(s.runs)),
                *[fmt(s.values(k), spec) for _, k, spec in scores],
                f"{s.runs[0]['trainable_params']:,}",
                fmt(s.values("train_time_s"), ".1f"),
                fmt(s.values("mean_time_per_epoch_s"), ".1f"),
                fmt([v / 2**20 for v in s.values("peak_memory_bytes")], ".0f"),
                fmt(s.values("inference_latency_ms_per_example"), ".3f"),
                fmt(s.values("inference_latency_merged_ms_per_example"), ".3f"),
                fmt(s.values("sparsity_below_1e-3"), ".3f"),
                pruning_change(s),
            ]
        )
    return md_table(header, rows), chosen


def seed_statistics(settings: list[Setting]) -> list[str]:
    if not any(len(s.runs) >= 2 for s in settings):
        return []
    task = settings[0].task
    score, spec = task.score_label, task.spec
    rows = []
    for s in settings:
        stats = interval(s.values(s.score))
        base = baseline_for(s, settings)
        test = paired_test(s, base) if base is not None else None
        vs = (
            "-"
            if test is None
            else (
                f"{test['delta']:+{spec}} (t={test['t']:.2f}, p={test['p']:.3g}, n={test['n']})"
                + (" *" if test["significant"] else "")
            )
        )
        rows.append(
            [
                s.method,
                " ".join(x for x in (f"rank={s.rank}" if s.rank is not None else "", s.label) if x) or "-",
                str(len(s.runs)),
                ", ".join(map(str, s.seeds)),
                "-" if stats is None else f"{stats[0]:{spec}} ± {stats[1]:{spec}}",
                "-" if stats is None else f"[{stats[2]:{spec}}, {stats[3]:{spec}}]",
                vs,
            ]
        )
    header = [
        "Method",
        "Setting",
        "n",
        "Seeds",
        f"Mean ± Std ({score})",
        "95% Interval",
        "vs LoRA: Δ (paired t-test)",
    ]
    note = (
        "Mean ± sample standard deviation over seeds; 95% interval: Student's t with n−1 degrees of "
        "freedom. "
        f"vs LoRA: {score} minus that of the LoRA setting of the same model and rank (else the best LoRA "
        f"by validation), over the seeds both ran; two-sided paired t-test (scipy.stats.ttest_rel), "
        f"* where p < {ALPHA}. With 3–5 seeds only large, consistent differences reach significance."
    )
    return ["", "### Seed statistics", "", note, "", *md_table(header, rows)]


def qlora_memory(settings: list[Setting]) -> list[str]:
    rows = []
    for s in settings:
        if "quantization" not in s.runs[0]:  # the figures of a 4-bit base
            continue
        q = s.runs[0]["quantization"]
        base = baseline_for(s, settings)
        peak, base_peak = s.mean("peak_memory_bytes"), base.mean("peak_memory_bytes") if base else None
        rows.append(
            [
                f"rank={s.rank}" if s.rank is not None else "-",
                f"{q['quantized_linear_weight_bytes'] / 2**20:.1f} / "
                f"{q['quantized_linear_weight_bytes_fp32'] / 2**20:.1f}",
                f"{q['quantized_linear_weight_ratio']:.3f}×",
                f"{q['base_weight_bytes'] / 2**20:.1f} / {q['base_weight_bytes_fp32'] / 2**20:.1f}",
                f"{q['base_weight_ratio']:.3f}×",
                "-" if peak is None else f"{peak / 2**20:.0f}",
                "-" if base_peak is None else f"{base_peak / 2**20:.0f}",
                "-" if not (peak and base_peak) else f"{peak / base_peak:.2f}×",
            ]
        )
    if not rows:
        return []
    kind = {r.get("peak_memory_kind") for s in settings for r in s.runs} - {None}
    header = [
        "QLoRA",
        "Quantized Linear Weights (MiB, NF4 / fp32)",
        "Ratio",
        "All Weights (MiB / fp32)",
        "Ratio",
        "Peak Memory (MiB)",
        "LoRA Peak Memory (MiB)",
        "QLoRA / LoRA",
    ]
    return [
        "",
        "### 4-bit base memory",
        "",
        f"Peak memory is {', '.join(sorted(kind))} (on a CPU that includes the "
        "Python process and libraries, so weight savings show less than on a GPU).",
        "",
        *md_table(header, rows),
    ]


# --------------------------------------------------------------------------- the benchmark (GLUE) table

SCALE = 100  # a benchmark table prints a score in [0, 1] (or [-1, 1]) as PEFT papers do: 0.897 as 89.7


@dataclass
class Row:
    """A row of the benchmark table: one setting of a method, and its setting on each dataset."""

    method: str
    config: dict  # the setting's keys without its dataset's own
    cells: dict[str, Setting] = field(default_factory=dict)  # dataset -> its setting there
    label: str = ""  # set by label_settings

    @property
    def rank(self):
        return self.config.get("method.r")


def metric_of(key: str) -> Metric:
    """The metric of a score key: test_mismatched_acc -> acc."""
    return METRICS[key.rsplit("_", 1)[-1]]


def benchmark_datasets(by_dataset: dict[str, list[Setting]]) -> list[str]:
    """The datasets a benchmark table can show: those whose table metrics (task.table_scores) all have a
    range, printed ×100 (accuracy, F1, MCC, correlations); not perplexity or MSE."""
    return [
        d
        for d, settings in by_dataset.items()
        if all(metric_of(k).bounded for k in settings[0].task.table_scores)
    ]


def benchmark_rows(by_dataset: dict[str, list[Setting]], datasets: list[str]) -> list[Row]:
    """The settings of the datasets as the table's rows. A row is a setting without the keys that are its
    dataset's own (dataset.*, the data's cache key), so `-m method=lora,dora dataset=cola,mrpc` gives two
    rows of two cells; a dataset key that varies between one dataset's settings (dataset.max_train_examples=
    300,600) tells rows apart."""

    def own(k: str) -> bool:
        return k.startswith(("dataset.", "data."))

    varying = {
        k
        for d in datasets
        for k in set().union(*(s.config for s in by_dataset[d]))
        if own(k)
        and k != "data.cache_key"
        and len({json.dumps(s.config.get(k), default=str) for s in by_dataset[d]}) > 1
    }
    rows: dict[str, Row] = {}
    for d in datasets:
        for s in by_dataset[d]:
            cfg = {k: v for k, v in s.config.items() if not own(k) or k in varying}
            rows.setdefault(json.dumps(cfg, sort_keys=True, default=str), Row(s.method, cfg)).cells[d] = s
    out = list(rows.values())
    label_settings(out)
    out.sort(key=lambda r: (r.method != BASELINE, r.method, r.rank if r.rank is not None else -1, r.label))
    return out


def collapsed(s: Setting, key: str) -> bool:
    """Whether a run of the setting warns that its predictions on the split of `key` (test,
    test_mismatched) collapsed: (nearly) all one class, or nearly constant (tasks' collapse_warning)."""
    said = f"predictions on {key.rsplit('_', 1)[0]} are "
    return any(w.startswith(said) for r in s.runs for w in r.get("warnings", []))


def row_average(row: Row, datasets: list[str], tasks: dict[str, Task]) -> list[float]:
    """The row's average as GLUE computes it (×100): a dataset's score is the mean of its table scores,
    the average the mean of the datasets' scores. Per seed when every score has the same seeds (so the
    cell has a spread), else one value from the means; [] when the row lacks a dataset."""
    if any(d not in row.cells for d in datasets):
        return []
    by_seed = {
        (d, k): {r["seed"]: float(r[k]) for r in row.cells[d].runs if isinstance(r.get(k), int | float)}
        for d in datasets
        for k in tasks[d].table_scores
    }
    if not all(by_seed.values()):
        return []
    seeds = set.intersection(*(set(v) for v in by_seed.values()))

    def average(value) -> float:
        scores = [
            sum(value(d, k) for k in tasks[d].table_scores) / len(tasks[d].table_scores) for d in datasets
        ]
        return SCALE * sum(scores) / len(scores)

    if all(set(v) == seeds for v in by_seed.values()):
        return [average(lambda d, k, seed=seed: by_seed[d, k][seed]) for seed in sorted(seeds)]
    return [average(lambda d, k: sum(by_seed[d, k].values()) / len(by_seed[d, k]))]


def benchmark_cell(values: list[float], intervals: bool, bounds: tuple[float, float] | None = None) -> str:
    """Mean ± sample std (×100, one decimal), with a 95% t interval where asked and there are two seeds,
    clipped to the metric's range `bounds` (×100; with 2 or 3 seeds the t interval runs far past it)."""
    text = fmt(values, ".1f")
    stats = interval(values) if intervals else None
    if not stats:
        return text
    low, high = stats[2:]
    if bounds:
        low, high = max(low, SCALE * bounds[0]), min(high, SCALE * bounds[1])
    return f"{text} [{low:.1f}, {high:.1f}]"


def bold_best(cells: list[tuple[str, float | None]], higher_is_better: bool | None) -> list[str]:
    """The cells' texts, the best mean (as printed, one decimal) in bold where two or more compete; None: no
    direction, no bold."""
    means = [round(m, 1) for _, m in cells if m is not None]
    if len(means) < 2 or higher_is_better is None:
        return [text for text, _ in cells]
    top = max(means) if higher_is_better else min(means)
    return [f"**{text}**" if m is not None and round(m, 1) == top else text for text, m in cells]


def benchmark_table(
    rows: list[Row], datasets: list[str], tasks: dict[str, Task], intervals: bool = False
) -> list[str]:
    """The table PEFT papers print: one row per setting (method), its trainable parameters, each dataset's
    table scores (task.table_scores: MRPC F1 and accuracy, MNLI matched and mismatched, ...) ×100 as mean
    ± std over seeds (with a 95% t interval where `intervals`), the average as GLUE computes it, the best
    of each column in bold; under them the trivial predictor's row (results.json's `baseline`), and the
    notes: seeds per cell, how the average is computed, ⚠ (collapsed predictions)."""
    columns = [(d, k) for d in datasets for k in tasks[d].table_scores]
    header = [
        "Method",
        "Trainable Params",
        *[f"{d} {column(k).removeprefix('Test ')}" for d, k in columns],
        "Avg.",
    ]
    grid, counts, warned_cells = [], set(), 0
    for d, k in columns:
        cells = []
        for row in rows:
            s = row.cells.get(d)
            values = [SCALE * v for v in s.values(k)] if s else []
            if not values:
                cells.append(("-", None))
                continue
            counts.add(len(values))
            mark = " ⚠" if collapsed(s, k) else ""
            warned_cells += bool(mark)
            cell = benchmark_cell(values, intervals, metric_of(k).bounded)
            cells.append((cell + mark, sum(values) / len(values)))
        grid.append(bold_best(cells, metric_of(k).higher_is_better))
    averages = [row_average(row, datasets, tasks) for row in rows]
    ranges = [metric_of(k).bounded for _, k in columns]
    span = (min(b[0] for b in ranges), max(b[1] for b in ranges))  # an average of scores in those ranges
    directions = {metric_of(k).higher_is_better for _, k in columns}
    grid.append(
        bold_best(
            [(benchmark_cell(a, intervals, span), sum(a) / len(a)) if a else ("-", None) for a in averages],
            directions.pop() if len(directions) == 1 else None,
        )
    )
    # a rank in the name where a method has rows of several ranks
    ranked = {
        m for m in {row.method for row in rows} if len({row.rank for row in rows if row.method == m}) > 1
    }
    body, ranged = [], False
    for i, row in enumerate(rows):
        name = " ".join(
            x
            for x in (
                row.method,
                f"rank={row.rank}" if row.method in ranked else "",
                row.label,
            )
            if x
        )
        trainable = sorted({r["trainable_params"] for s in row.cells.values() for r in s.runs})
        ranged |= len(trainable) > 1
        body.append(
            [
                name,
                f"{trainable[0]:,}" if len(trainable) == 1 else f"{trainable[0]:,}–{trainable[-1]:,}",
                *[col[i] for col in grid],
            ]
        )
    body.append(baseline_row(rows, columns, datasets, tasks))
    n = f"{min(counts)}" if len(counts) == 1 else f"{min(counts)} to {max(counts)}" if counts else "no"
    lacking = sum(1 for a in averages if not a)
    notes = [
        f"Test figures ×{SCALE}: mean ± sample std over seeds, {n} seed{'s' * (counts != {1})} per cell"
        + (" [95% Student-t interval, clipped to the metric's range]" if intervals else "")
        + ", the best of each column in bold. Avg.: each dataset's score is the mean of its columns, the "
        "average the mean of the datasets' scores (as GLUE computes it; per seed, where every column of the "
        "row has the same seeds)"
        + (
            f", only for rows that have every dataset ({lacking} row{'s' * (lacking > 1)} lack some: -)."
            if lacking
            else "."
        )
        + (
            " Trainable Params: the lowest to the highest over the datasets (a head's size follows the "
            "dataset's labels)."
            if ranged
            else ""
        ),
        f"{baseline_name(tasks)}: the trivial predictor, always the training split's "
        f"{' or its '.join(baseline_kinds(tasks))} (each run's `baseline`).",
    ]
    if warned_cells:
        notes.append(
            "⚠: predictions of at least one seed on that test split are (nearly) all one class or nearly "
            "constant (the runs' warnings say so): a collapsed model's figure; compare it with the baseline "
            "row."
        )
    return [*md_table(header, body), *[line for note in notes for line in ("", note)]]


def baseline_kinds(tasks: dict[str, Task]) -> list[str]:
    """What the trivial predictor answers (tasks' baselines): the majority class, or the mean label."""
    return list(dict.fromkeys("majority class" if t.has_classes else "mean label" for t in tasks.values()))


def baseline_name(tasks: dict[str, Task]) -> str:
    return " / ".join(baseline_kinds(tasks)).capitalize()


def baseline_row(rows: list[Row], columns: list[tuple[str, str]], datasets, tasks) -> list[str]:
    """The trivial predictor's figures (×100; the mean over the runs of a dataset, which share their data
    in a sweep), and their average; - where no run has one (records from before `baseline`)."""
    means = {}
    for d, k in columns:
        v = [
            float(r["baseline"][k])
            for row in rows
            if d in row.cells
            for r in row.cells[d].runs
            if isinstance((r.get("baseline") or {}).get(k), int | float)
        ]
        means[d, k] = SCALE * sum(v) / len(v) if v else None
    cells = ["-" if means[c] is None else f"{means[c]:.1f}" for c in columns]
    if all(v is not None for v in means.values()):
        scores = [
            sum(means[d, k] for k in tasks[d].table_scores) / len(tasks[d].table_scores) for d in datasets
        ]
        cells.append(f"{sum(scores) / len(scores):.1f}")
    else:
        cells.append("-")
    return [baseline_name(tasks), "0", *cells]


def benchmark_section(by_dataset: dict[str, list[Setting]]) -> list[str]:
    """The report's opening table, when its runs cover two or more datasets that one can show."""
    datasets = benchmark_datasets(by_dataset)
    if len(datasets) < 2:
        return []
    tasks = {d: by_dataset[d][0].task for d in datasets}
    lines = [
        "## Benchmark table",
        "",
        "Every method on every dataset, each with the metrics its benchmark reports (the GLUE table of "
        "PEFT papers); a row is a setting, the same on each dataset. Per dataset, its own section below.",
        "",
        *benchmark_table(benchmark_rows(by_dataset, datasets), datasets, tasks),
    ]
    left = [d for d in by_dataset if d not in datasets]
    if left:
        lines += [
            "",
            f"Not in the table: {', '.join(left)} (a metric without a range, as perplexity, is not shown "
            f"×{SCALE} beside the others).",
        ]
    return [*lines, ""]


def baseline_text(task: Task, r: dict, split: str = "test") -> str | None:
    """The trivial predictor's figures on a split, from results.json's `baseline`: `majority class
    baseline: test MCC 0.0000 (Acc 0.6910, F1 0.8170)`; for an older record without one, the majority
    class's share of the split's labels (data.label_counts); None where neither."""
    base = r.get("baseline") or {}
    keys = [f"{split}_{k}" for k in task.columns if isinstance(base.get(f"{split}_{k}"), int | float)]
    if keys and keys[0] == f"{split}_{task.key}":
        others = [f"{metric_of(k).header} {base[k]:{task.spec}}" for k in keys[1:]]
        return (
            f"{'majority class' if task.has_classes else 'mean label'} baseline: {split} "
            f"{task.metric.header} {base[keys[0]]:{task.spec}}"
            + (f" ({', '.join(others)})" if others else "")
        )
    counts = (r.get("data") or {}).get("label_counts", {}).get(split)
    if counts and task.has_classes:
        share = max(counts.values()) / sum(counts.values())
        return f"Chance (majority class) on the {split} split: accuracy {share:.4f}"
    return None


# ----------------------------------------------------------------------------------------- plots


def plots(dataset: str, settings: list[Setting], chosen: list[Setting], out: Path) -> list[str]:
    """Write the dataset's plots (PNG and SVG); returns the PNG file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    methods = list(dict.fromkeys(s.method for s in settings))
    # a colour and a marker per method: tab10 for a few methods, tab20 (and markers) for up to ~20
    palette = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    colors = {m: palette(i % palette.N) for i, m in enumerate(methods)}
    markers = {m: "osD^vPX<>p"[i % 10] for i, m in enumerate(methods)}
    many = len(methods) > 6  # the legend goes beside the axes, not over the points
    task = settings[0].task
    score_name = task.score_label

    def save(fig, name: str) -> None:
        fig.tight_layout()
        for ext in ("png", "svg"):
            fig.savefig(out / f"{dataset}_{name}.{ext}", dpi=120)
        plt.close(fig)
        written.append(f"{dataset}_{name}.png")

    # score vs trainable parameters, with the Pareto front (fewer parameters, better score)
    points = [
        (s.runs[0]["trainable_params"], s.mean(s.score), s) for s in settings if s.mean(s.score) is not None
    ]
    if points:
        fig, ax = plt.subplots(figsize=(9, 5) if many else (7, 4.5))
        for m in methods:
            pts = [(x, y, s) for x, y, s in points if s.method == m]
            errs = [interval(s.values(s.score)) for _, _, s in pts]
            ax.errorbar(
                [x for x, _, _ in pts],
                [y for _, y, _ in pts],
                yerr=[e[1] for e in errs] if all(errs) else None,
                fmt=markers[m],
                color=colors[m],
                label=m,
                capsize=3,
            )
        front, best_y = [], -math.inf if task.higher_is_better else math.inf
        for x, y, _ in sorted(points, key=lambda p: (p[0], -p[1] if task.higher_is_better else p[1])):
            if task.better(y, best_y):
                front.append((x, y))
                best_y = y
        ax.step(
            [x for x, _ in front],
            [y for _, y in front],
            where="post",
            color="grey",
            ls="--",
            lw=1,
            label="Pareto front",
        )
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log)")
        ax.set_ylabel(score_name + ("" if task.higher_is_better else " (lower is better)"))
        ax.set_title(f"{dataset}: {score_name} vs trainable parameters")
        if many:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + len(methods) // 14)
        else:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        save(fig, "score_vs_params")

    # measured adapter sparsity vs rank
    sparse = [s for s in settings if s.rank is not None and s.mean("sparsity_below_1e-3") is not None]
    if any(s.mean("sparsity_exact_zero") for s in sparse):
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in dict.fromkeys((s.method, s.label) for s in sparse):
            group = sorted((s for s in sparse if (s.method, s.label) == key), key=lambda s: s.rank)
            ax.plot(
                [s.rank for s in group],
                [s.mean("sparsity_below_1e-3") for s in group],
                "o-",
                color=colors[key[0]],
                label=" ".join(x for x in key if x),
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rank")
        ax.set_ylabel("adapter weights with |w| < 1e-3")
        ax.set_ylim(0, 1)
        ax.set_title(f"{dataset}: adapter sparsity vs rank")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        save(fig, "sparsity_vs_rank")

    # train time and peak memory of each method's best setting
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, key, scale, label in (
        (axes[0], "train_time_s", 1, "train time (s)"),
        (axes[1], "peak_memory_bytes", 2**20, "peak memory (MiB)"),
    ):
        means = [(s.mean(key) or 0) / scale for s in chosen]
        stds = [(interval(s.values(key)) or (0, 0))[1] / scale for s in chosen]
        ax.bar(
            [s.method for s in chosen],
            means,
            yerr=stds if any(stds) else None,
            color=[colors[s.method] for s in chosen],
            capsize=3,
        )
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=30)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{dataset}: cost of each method's best setting")
    save(fig, "time_memory")

    # QLoRA against LoRA at the same rank: quantized weights and peak memory
    pairs = [(s, baseline_for(s, settings)) for s in settings if "quantization" in s.runs[0]]
    pairs = [(q, b) for q, b in pairs if b is not None]
    if pairs:
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
        q, b = pairs[0]
        info = q.runs[0]["quantization"]
        axes[0].bar(
            ["fp32 (LoRA)", "NF4 (QLoRA)"],
            [
                info["quantized_linear_weight_bytes_fp32"] / 2**20,
                info["quantized_linear_weight_bytes"] / 2**20,
            ],
            color=[colors.get("lora", "C0"), colors[q.method]],
        )
        axes[0].set_ylabel("linear-layer weights (MiB)")
        labels = [f"{x.method} r={x.rank}" for pair in pairs for x in pair]
        axes[1].bar(
            labels,
            [x.mean("peak_memory_bytes") / 2**20 for pair in pairs for x in pair],
            color=[colors[x.method] for pair in pairs for x in pair],
        )
        axes[1].set_ylabel("peak memory (MiB)")
        axes[1].tick_params(axis="x", rotation=30)
        fig.suptitle(f"{dataset}: 4-bit base memory against LoRA")
        save(fig, "qlora_vs_lora")

    # training curves: the logged training loss and validation score of the first seed of each setting
    val_key = task.curve_metric
    curves = [(s, read_curves(Path(s.runs[0]["_dir"]), val_key)) for s in settings]
    curves = [(s, c) for s, c in curves if c["train"]]
    if curves:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for s, c in curves:
            name = " ".join(x for x in (s.method, f"r={s.rank}" if s.rank is not None else "", s.label) if x)
            axes[0].plot(*zip(*c["train"], strict=True), color=colors[s.method], alpha=0.8, lw=1, label=name)
            if c[val_key]:
                axes[1].plot(*zip(*c[val_key], strict=True), "o-", color=colors[s.method], lw=1, label=name)
        axes[1].set_xlim(axes[0].get_xlim())
        axes[0].set_xlabel("optimizer step")
        axes[0].set_ylabel("training loss (logged steps)")
        axes[1].set_xlabel("optimizer step")
        axes[1].set_ylabel(val_key.replace("/", " "))
        for ax in axes:
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{dataset}: training curves (first seed of each setting)")
        save(fig, "training_curves")
    return written


def read_curves(run_dir: Path, val_key: str) -> dict[str, list[tuple[float, float]]]:
    """(step, value) series from the run's CSV log (logger=csv): train loss per logged step, and the
    validation metric `val_key` (the task's curve_metric, e.g. val/mcc) at each validation."""
    out: dict[str, list] = {"train": [], val_key: []}
    for path in sorted(run_dir.glob("csv/**/metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                step = float(row["step"]) if row.get("step") else None
                if step is None:
                    continue
                if row.get("train/loss_step"):
                    out["train"].append((step, float(row["train/loss_step"])))
                if row.get(val_key):
                    out[val_key].append((step, float(row[val_key])))
    v = out[val_key]  # the evaluation after fit repeats the last validation a step later
    out[val_key] = [p for i, p in enumerate(v) if i == 0 or p[0] - v[i - 1][0] > 1]
    return out


# ------------------------------------------------------------------------------------ the report


def write_runs_csv(runs: list[dict], path: Path) -> None:
    rows = [
        {
            "run_dir": r["_dir"],
            **{
                k: v
                for k, v in flatten({k: v for k, v in r.items() if k[0] != "_"}, lists_as_json=True).items()
                if v is None or isinstance(v, str | int | float | bool)
            },
        }
        for r in runs
    ]
    first = ["run_dir", "status", "method", "dataset", "model", "rank", "seed"]
    columns = first + sorted({k for row in rows for k in row} - set(first))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def default_out(dirs: list[Path]) -> Path:
    if len(dirs) == 1:
        return dirs[0] / "report"
    return Path("reports") / "+".join(d.resolve().name for d in dirs)[:120]


def write_report(
    dirs: list[Path], out: Path | None = None, wandb_mode: str = "auto", include_edited: bool = False
) -> dict:
    """Write report.md, runs.csv and the plots into `out`; returns what was written and read.
    `include_edited`: count runs whose results.json changed after the run (marked ⚠) instead of
    leaving them out."""
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
        *benchmark_section(by_dataset),
    ]
    images: list[str] = []
    for dataset, settings in by_dataset.items():
        task = settings[0].task
        models = sorted({s.config.get("model.name", "?") for s in settings})
        lines += [
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
        lines += [
            "",
            "### Method comparison",
            "",
            "Each method's best setting, chosen on the validation split; "
            "test figures of that setting. Peak memory: "
            + ", ".join(sorted({r.get("peak_memory_kind", "?") for s in settings for r in s.runs}))
            + ".",
            "",
            *table,
        ]
        lines += seed_statistics(settings)
        lines += qlora_memory(settings)
        written = plots(dataset, settings, chosen, out)
        images += written
        if written:
            lines += ["", "### Plots", "", *[f"![{name}]({name})" for name in written]]
        lines.append("")
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


def log_to_wandb(runs: list[dict], out: Path, images: list[str]) -> str:
    """One W&B run for the sweep (same project and group as its jobs): the runs table and the plots."""
    import wandb

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m peft_bench.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep folders (results.json below them)")
    parser.add_argument("--out", type=Path, help="folder to write (default: DIR/report, or reports/<names>)")
    parser.add_argument(
        "--wandb",
        choices=["auto", "on", "off"],
        default="auto",
        help="log the table and plots to one W&B run (auto: when the runs logged to W&B)",
    )
    parser.add_argument(
        "--include-edited",
        action="store_true",
        help="count runs whose results.json was changed after the run (its digest does not match), "
        "marked ⚠, instead of leaving them out",
    )
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        parser.error(f"no such folder: {', '.join(missing)}")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file: give a folder (report.md, runs.csv and plots go in it)")
    try:
        s = write_report(args.dirs, args.out, args.wandb, include_edited=args.include_edited)
    except OSError as e:  # a read-only or full disk: one sentence
        out = args.out or default_out(args.dirs)
        if (refusal := filesystem_refusal(e, out, started=False, elsewhere="--out")) is None:
            raise
        print(f"peft_bench.report: error: {refusal}", file=sys.stderr)
        sys.exit(2)
    if s["runs"] == 0:
        print(f"peft_bench.report: no completed run under {', '.join(map(str, args.dirs))}", file=sys.stderr)
    for d, why in s["left_out"]:
        print(f"peft_bench.report: left out {d}: {why}", file=sys.stderr)
    print(
        f"report: {s['out'] / 'report.md'} ({s['runs']} runs, {len(s['left_out'])} left out, "
        f"{len(s['images'])} plots{', W&B run ' + s['wandb'] if s['wandb'] else ''})"
    )
    if s["runs"] == 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
