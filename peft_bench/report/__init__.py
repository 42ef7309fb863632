"""Compare the runs of one or more sweeps: tables, seed statistics and plots.

    python -m peft_bench.report DIR [DIR ...] [--out FOLDER] [--wandb auto|on|off] [--include-edited]
                                [--margin DIFF]
    peft-bench report DIR [DIR ...]

Reads every results.json under the given run or sweep folders and writes into FOLDER (default
DIR/report for one DIR, reports/<names> for several):
  report.md   over two or more datasets, first the benchmark table PEFT papers print (GLUE's: a row per
              setting, each dataset's metrics ×100, GLUE's average, the trivial predictor's row); then
              per dataset: the runs by setting (mean ± std over seeds), the method comparison (each
              method's best setting by validation score), seed statistics with a paired test against
              LoRA, the pairwise verdicts (better, worse, equivalent within --margin, or undecided with
              the seeds it would take; P(best) per setting), 4-bit base memory, the plots; and every run
              left out of the tables, with its reason;
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
import math
import sys
from pathlib import Path

from peft_bench.io import filesystem_refusal
from peft_bench.report.document import default_out, write_report, write_runs_csv
from peft_bench.report.runs import BASELINE, Setting, load_runs, setting_config, settings_of
from peft_bench.report.stats import ALPHA, Paired, interval, paired_test, paired_text
from peft_bench.report.tables import Row, baseline_text, benchmark_table, md_table, metric_of

__all__ = [
    "ALPHA",
    "BASELINE",
    "Paired",
    "Row",
    "Setting",
    "baseline_text",
    "benchmark_table",
    "default_out",
    "interval",
    "load_runs",
    "main",
    "md_table",
    "metric_of",
    "paired_test",
    "paired_text",
    "setting_config",
    "settings_of",
    "write_report",
    "write_runs_csv",
]


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
    parser.add_argument(
        "--margin",
        type=float,
        help="the difference in each dataset's primary test metric that counts as negligible: two settings "
        "within it are 'equivalent' (TOST) in the pairwise verdicts (default: 0.01, one point, for a metric "
        "with a range; 1%% of the mean figure for one without, as perplexity)",
    )
    args = parser.parse_args(argv)
    if args.margin is not None and not 0 < args.margin < math.inf:
        parser.error(f"--margin {args.margin}: give a difference > 0 in the primary metric (0.01: one point)")
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        parser.error(f"no such folder: {', '.join(missing)}")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file: give a folder (report.md, runs.csv and plots go in it)")
    try:
        s = write_report(
            args.dirs, args.out, args.wandb, include_edited=args.include_edited, margin=args.margin
        )
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
