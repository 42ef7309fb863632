"""The report's figures, one function each, written as PNG and SVG: score against trainable parameters
(with the Pareto front), adapter sparsity against rank, train time and peak memory, 4-bit base memory
against LoRA, training curves; and a tuning study's best validation score so far."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING

from peft_bench.report.runs import Setting, baseline_for, nested_values, read_curves
from peft_bench.report.stats import interval
from peft_bench.tasks import Task

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, chosen here rather than at import: importing the
    report must not pick a backend for the process that imports it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, png: Path, **savefig) -> None:
    """A figure as `png` and the SVG beside it (dpi 120), then closed: every figure of the report."""
    png.parent.mkdir(parents=True, exist_ok=True)
    for path in (png, png.with_suffix(".svg")):
        fig.savefig(path, **{"dpi": 120, **savefig})
    pyplot().close(fig)


@dataclass
class Figures:
    """A dataset's figures: where they go, a colour and a marker per method, the PNGs written."""

    dataset: str
    out: Path
    methods: list[str]
    written: list[str] = field(default_factory=list)
    colors: dict = field(init=False)
    markers: dict[str, str] = field(init=False)
    many: bool = field(init=False)  # the legend goes beside the axes, not over the points

    def __post_init__(self) -> None:
        # tab10 for a few methods, tab20 (and markers) for up to ~20
        palette = pyplot().get_cmap("tab10" if len(self.methods) <= 10 else "tab20")
        self.colors = {m: palette(i % palette.N) for i, m in enumerate(self.methods)}
        self.markers = {m: "osD^vPX<>p"[i % 10] for i, m in enumerate(self.methods)}
        self.many = len(self.methods) > 6

    def save(self, fig, name: str) -> None:
        fig.tight_layout()
        save_figure(fig, self.out / f"{self.dataset}_{name}.png")
        self.written.append(f"{self.dataset}_{name}.png")


def plots(dataset: str, settings: list[Setting], chosen: list[Setting], out: Path) -> list[str]:
    """Write the dataset's plots (PNG and SVG); returns the PNG file names written. `chosen`: each
    method's best setting."""
    figures = Figures(dataset, out, list(dict.fromkeys(s.method for s in settings)))
    score_vs_params(figures, settings)
    sparsity_vs_rank(figures, settings)
    time_memory(figures, chosen)
    qlora_vs_lora(figures, settings)
    score_vs_forgetting(figures, chosen)
    training_curves(figures, settings)
    return figures.written


def score_vs_forgetting(figures: Figures, chosen: list[Setting]) -> None:
    """Generation: each method's best setting, its test score against its forgetting (the rise of the
    reference text's loss), ± the seeds' std; nothing where no run measured forgetting."""
    points = [(s, nested_values(s, "forgetting.rise"), s.values(s.score)) for s in chosen]
    points = [(s, x, y) for s, x, y in points if x and y]
    if not points:
        return
    fig, ax = pyplot().subplots(figsize=(6, 4.5))
    for s, x, y in points:
        sx, sy = ((interval(v) or (0, 0))[1] for v in (x, y))
        ax.errorbar(
            fmean(x),
            fmean(y),
            xerr=sx or None,
            yerr=sy or None,
            fmt=figures.markers[s.method],
            color=figures.colors[s.method],
            label=s.method,
            capsize=3,
        )
    ax.axvline(0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("forgetting: rise of the reference text's loss (nats/token)")
    ax.set_ylabel(s.task.score_label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{figures.dataset}: what each method gained against what it forgot")
    figures.save(fig, "score_vs_forgetting")


def pareto_front(points: list[tuple[float, float]], task: Task) -> list[tuple[float, float]]:
    """The points no other beats with fewer parameters: (trainable parameters, score)."""
    front, best_y = [], -math.inf if task.higher_is_better else math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1] if task.higher_is_better else p[1])):
        if task.better(y, best_y):
            front.append((x, y))
            best_y = y
    return front


def score_vs_params(figures: Figures, settings: list[Setting]) -> None:
    """Each setting's mean test score (± its seeds' std) against its trainable parameters (log axis),
    with the Pareto front."""
    points = [
        (s.runs[0]["trainable_params"], s.mean(s.score), s) for s in settings if s.mean(s.score) is not None
    ]
    if not points:
        return
    task = settings[0].task
    fig, ax = pyplot().subplots(figsize=(9, 5) if figures.many else (7, 4.5))
    for m in figures.methods:
        pts = [(x, y, s) for x, y, s in points if s.method == m]
        errs = [interval(s.values(s.score)) for _, _, s in pts]
        ax.errorbar(
            [x for x, _, _ in pts],
            [y for _, y, _ in pts],
            yerr=[e[1] for e in errs] if all(errs) else None,
            fmt=figures.markers[m],
            color=figures.colors[m],
            label=m,
            capsize=3,
        )
    front = pareto_front([(x, y) for x, y, _ in points], task)
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
    ax.set_ylabel(task.score_label + ("" if task.higher_is_better else " (lower is better)"))
    ax.set_title(f"{figures.dataset}: {task.score_label} vs trainable parameters")
    if figures.many:
        columns = 1 + len(figures.methods) // 14
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=columns)
    else:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    figures.save(fig, "score_vs_params")


def sparsity_vs_rank(figures: Figures, settings: list[Setting]) -> None:
    """The measured adapter sparsity (|w| < 1e-3) against rank, where some setting has exact zeros."""
    sparse = [s for s in settings if s.rank is not None and s.mean("sparsity_below_1e-3") is not None]
    if not any(s.mean("sparsity_exact_zero") for s in sparse):
        return
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for key in dict.fromkeys((s.method, s.label) for s in sparse):
        group = sorted((s for s in sparse if (s.method, s.label) == key), key=lambda s: s.rank)
        ax.plot(
            [s.rank for s in group],
            [s.mean("sparsity_below_1e-3") for s in group],
            "o-",
            color=figures.colors[key[0]],
            label=" ".join(x for x in key if x),
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rank")
    ax.set_ylabel("adapter weights with |w| < 1e-3")
    ax.set_ylim(0, 1)
    ax.set_title(f"{figures.dataset}: adapter sparsity vs rank")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    figures.save(fig, "sparsity_vs_rank")


def time_memory(figures: Figures, chosen: list[Setting]) -> None:
    """Train time and peak memory of each method's best setting (± the seeds' std)."""
    fig, axes = pyplot().subplots(1, 2, figsize=(9, 4))
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
            color=[figures.colors[s.method] for s in chosen],
            capsize=3,
        )
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=30)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{figures.dataset}: cost of each method's best setting")
    figures.save(fig, "time_memory")


def qlora_vs_lora(figures: Figures, settings: list[Setting]) -> None:
    """QLoRA against LoRA at the same rank: the quantized linear weights, and each pair's peak memory."""
    pairs = [(s, baseline_for(s, settings)) for s in settings if "quantization" in s.runs[0]]
    pairs = [(q, b) for q, b in pairs if b is not None]
    if not pairs:
        return
    fig, axes = pyplot().subplots(1, 2, figsize=(9, 4))
    q, _ = pairs[0]
    info = q.runs[0]["quantization"]
    axes[0].bar(
        ["fp32 (LoRA)", "NF4 (QLoRA)"],
        [info["quantized_linear_weight_bytes_fp32"] / 2**20, info["quantized_linear_weight_bytes"] / 2**20],
        color=[figures.colors.get("lora", "C0"), figures.colors[q.method]],
    )
    axes[0].set_ylabel("linear-layer weights (MiB)")
    axes[1].bar(
        [f"{x.method} r={x.rank}" for pair in pairs for x in pair],
        [x.mean("peak_memory_bytes") / 2**20 for pair in pairs for x in pair],
        color=[figures.colors[x.method] for pair in pairs for x in pair],
    )
    axes[1].set_ylabel("peak memory (MiB)")
    axes[1].tick_params(axis="x", rotation=30)
    fig.suptitle(f"{figures.dataset}: 4-bit base memory against LoRA")
    figures.save(fig, "qlora_vs_lora")


def setting_colors(n: int) -> list:
    """n colours, one per setting: tab10 for a few, tab20 for up to 20, else n evenly spaced along turbo."""
    plt = pyplot()
    if n <= 20:
        palette = plt.get_cmap("tab10" if n <= 10 else "tab20")
        return [palette(i) for i in range(n)]
    return [plt.get_cmap("turbo")(i / (n - 1)) for i in range(n)]


def training_curves(figures: Figures, settings: list[Setting]) -> Figure | None:
    """The logged training loss and validation score of the first seed of each setting (logger=csv),
    each setting in its own colour (the validation points with its method's marker), each panel with
    a legend (one beside the validation panel for many settings); returns the Figure, None if no
    setting logged a curve."""
    val_key = settings[0].task.curve_metric
    curves = [(s, read_curves(Path(s.runs[0]["_dir"]), val_key)) for s in settings]
    curves = [(s, c) for s, c in curves if c["train"]]
    if not curves:
        return None
    many = len(curves) > 6
    fig, axes = pyplot().subplots(1, 2, figsize=(13, 4.5) if many else (10, 4))
    for (s, c), color in zip(curves, setting_colors(len(curves)), strict=True):
        name = " ".join(x for x in (s.method, f"r={s.rank}" if s.rank is not None else "", s.label) if x)
        axes[0].plot(*zip(*c["train"], strict=True), color=color, alpha=0.8, lw=1, label=name)
        if c[val_key]:
            marker = figures.markers[s.method]
            axes[1].plot(*zip(*c[val_key], strict=True), marker=marker, color=color, lw=1, label=name)
    axes[1].set_xlim(axes[0].get_xlim())
    axes[0].set_xlabel("optimizer step")
    axes[0].set_ylabel("training loss (logged steps)")
    axes[1].set_xlabel("optimizer step")
    axes[1].set_ylabel(val_key.replace("/", " "))
    for ax in axes:
        ax.grid(alpha=0.3)
    if many:  # one legend of every setting, beside the validation panel: the colours are the same in both
        handles, names = axes[0].get_legend_handles_labels()
        columns = 1 + len(curves) // 20
        axes[1].legend(handles, names, fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=columns)
    else:
        axes[0].legend(fontsize=7)
        if axes[1].lines:
            axes[1].legend(fontsize=7)
    fig.suptitle(f"{figures.dataset}: training curves (first seed of each setting)")
    figures.save(fig, "training_curves")
    return fig


def best_so_far(curves: dict[str, list[float | None]], task: Task, out: Path) -> str | None:
    """A tuning study's figure: each method's best validation score so far against the trial number;
    returns the PNG's name, None where no trial completed."""
    if not any(v is not None for c in curves.values() for v in c):
        return None
    plt = pyplot()
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
    save_figure(fig, out / name)
    return name
