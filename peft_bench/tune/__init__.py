"""A fair comparison in one command: each method tuned on the validation split with an equal budget,
then its best setting (and its untuned default) re-run over seeds and evaluated on test.

    python -m peft_bench.tune method=lora,dora,hira dataset=sst2 model=minilm tune.trials=16 tune.seeds=3
    python -m peft_bench.tune ... hydra/launcher=slurm_gpu tune.workers=8      # trials as SLURM jobs
    python -m peft_bench.tune method=lora,dora,vera dataset=cola,mrpc,rte,stsb tune.trials=16 tune.seeds=3

Every other override means what it does for a run (one value each; `method` and `dataset` may list
several).
The folder (tune.dir, default tune/<the command's overrides>) holds study.db (Optuna's storage, one
study per method; tune.storage=postgresql://... or journal:<file> for a cluster), trials/<method>/<n>/
and final/<method>/<best|default>-s<seed>/ (ordinary run folders), and report/. Re-running the same
command continues the same study: finished trials are never repeated, a trial whose process died is
marked failed and replaced, and each method ends with exactly tune.trials finished trials.

Several datasets: one study per dataset, each exactly the one-dataset command with
tune.dir=<folder>/<dataset> (its own storage, finals, report and resume), run one after another with the
same budget, every dataset and method checked before the first trial; then <folder>/report/report.md, the
tuned benchmark table (each method's best setting on each dataset, over the seeds) with a link to each
dataset's own report.

Search: Optuna's TPE sampler (seeded) over each method's `method.search` space (default: the learning
rate, log-uniform over a decade either side of the method's default); every trial trains the same
steps. Early stopping: the validation metric is reported every tune.eval_every training batches and
Optuna's median pruner stops trials that trail the others; pruned and failed trials are recorded and
never count as best (a diverged trial is a failed one, never the end of the study).
Watch a study in a browser: `optuna-dashboard sqlite:///<tune dir>/study.db` (pip install optuna-dashboard).
"""

from __future__ import annotations

import importlib

# the names other modules and tests use, each from its module; imported on first use, so that
# `python -m peft_bench.tune --help` answers before torch and Lightning load
NAMES = {
    "main": "command",
    "Study": "study",
    "parse": "study",
    "listed_datasets": "study",
    "TuneConfig": "study",
    "with_params": "search",
    "space": "search",
    "hide_password": "password",
    "password_out_of": "password",
    "STORAGE_PASSWORD": "password",
    "MASK": "password",
    "storage": "store",
    "CONNECT_TIMEOUT_S": "store",
    "STUDY_FILE": "store",
    "KILLED": "store",
    "Worker": "workers",
    "work": "workers",
    "run_final": "finals",
    "tune_one": "finals",
}
__all__ = sorted(NAMES)


def __getattr__(name: str):
    if name not in NAMES:
        raise AttributeError(f"module 'peft_bench.tune' has no attribute {name!r}")
    return getattr(importlib.import_module(f"peft_bench.tune.{NAMES[name]}"), name)
