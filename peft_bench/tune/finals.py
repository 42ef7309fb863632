"""After the search: each method's best setting (and its untuned default) over the seeds on test, the
tuned report, and the one-dataset and several-dataset commands that run search, finals and report."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna

from peft_bench.env import setup_process
from peft_bench.errors import DivergedError, PeftBenchError
from peft_bench.report import write_report
from peft_bench.report.budget import edge_warnings
from peft_bench.report.tuned import datasets_report, finals, tuned_section
from peft_bench.results import read_results
from peft_bench.train import run
from peft_bench.tune.password import hide_password
from peft_bench.tune.search import method_value, with_params
from peft_bench.tune.store import STUDY_FILE, counted, create_studies, killed
from peft_bench.tune.study import DatasetStudy, Study, parse, parse_datasets
from peft_bench.tune.workers import (
    launcher_config,
    start_workers,
    study_job,
    submitit_executor,
    validation,
    wait_for,
)

log = logging.getLogger("peft_bench")


def unfinished(study: Study) -> list[str]:
    """Trials still running (an earlier command's orphaned workers, a SLURM job still going) or budgets not
    spent: the finals must wait, or they would test a best setting that a later trial may beat."""
    out = []
    for method in study.methods:
        trials = counted(study.studies[method])
        running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
        for t in running:
            who = t.user_attrs.get("worker", {})
            out.append(
                f"{method} trial #{t.number} is still running (pid {who.get('pid')} on {who.get('host')})"
            )
        if len(trials) < study.cfg.trials:
            out.append(f"{method} has {len(trials)} of {study.cfg.trials} trials")
    return out


def best_params(opt_study) -> dict | None:
    complete = [
        t for t in opt_study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE
    ]
    return opt_study.best_trial.params if complete else None


def final_runs(study: Study) -> list[tuple[str, str, int, dict]]:
    """(method, which: best | default, seed, params) of every final run."""

    out = []
    for method in study.methods:
        best = best_params(study.studies[method])
        if best is None:
            continue  # main() says so, with the trials' errors
        for seed in range(1, study.cfg.seeds + 1):
            out.append((method, "best", seed, best))
            if study.cfg.defaults:
                out.append((method, "default", seed, {}))
    return out


def without_a_best(study: Study) -> list[str]:
    """A sentence for each method none of whose trials completed (so it has no final runs), with the
    first failed trial's error: an error that fails every trial must not pass for a result."""

    out = []
    for method in study.methods:
        opt_study = study.studies[method]
        if best_params(opt_study) is not None:
            continue
        errors = [
            t.user_attrs["error"] for t in opt_study.get_trials(deepcopy=False) if "error" in t.user_attrs
        ]
        why = f"; the first trial's error: {errors[0]}" if errors else " (every trial was pruned or killed)"
        out.append(f"method {method}: no trial completed, so it has no final runs{why}")
    return out


def run_final(study: Study | list[str], method: str, which: str, seed: int, params: dict) -> str | None:
    """One final run: the method's best (or default) setting at this seed, evaluated on test. Returns
    why it did not complete (its results.json says so too), or None. A SLURM job is given the command
    line (and parses it), a local final the Study."""
    if isinstance(study, list):  # a SLURM job: a process of its own, set up as every entry point
        setup_process(check_hub=False)
        study = parse(study)
    try:
        run(
            study_job(
                study,
                [*study.run_overrides(), *with_params(method, params), f"seed={seed}", validation(study)],
                study.dir / "final" / method / f"{which}-s{seed}",
            )
        )
    except (PeftBenchError, DivergedError) as e:  # its results.json says why; the report lists it
        log.error("final %s %s seed %d: %s", method, which, seed, e)
        return f"final {method} {which} seed {seed}: {e}"
    return None


def run_finals(study: Study, argv: list[str]) -> list[str]:
    """Each method's best setting (and its default) over the seeds, evaluated on test: ordinary runs in
    final/<method>/<best|default>-s<seed>, as jobs of the launcher when there is one (a re-run skips the
    completed ones). Returns why each final that did not complete did not."""
    waiting = unfinished(study)
    if waiting:
        raise PeftBenchError(
            f"the search is not finished: {'; '.join(waiting)}. The finals start only on a finished "
            "search; run the same command again once those trials are done (a dead one is replaced)"
        )
    finals = final_runs(study)
    launcher = launcher_config(study)
    if launcher is None:
        return [e for e in (run_final(study, *final) for final in finals) if e]
    executor = submitit_executor(study, launcher)
    jobs = [executor.submit(run_final, argv, *final) for final in finals]
    wait_for(jobs, "final run")
    return [e for e in (job.result() for job in jobs) if e]


def trial_rows(study, method: str) -> list[dict]:
    """Each trial of the method: number, state, params, value, and its run's compute time."""
    opt_study = study.studies[method]
    trials = opt_study.get_trials(deepcopy=False)
    dead, rows = killed(opt_study, trials), []
    for t in trials:
        run_dir = study.dir / "trials" / method / str(t.number)
        try:
            r = read_results(run_dir)
        except (OSError, ValueError):
            r = {}
        rows.append(
            {
                "number": t.number,
                "state": "killed" if t.number in dead else t.state.name.lower(),
                "params": t.params,
                "value": t.value,
                "compute_s": r.get("train_compute_s"),
                "steps": r.get("optimizer_steps"),
            }
        )
    return rows


def write_tuned_report(study: Study) -> Path:
    """The usual report of the final runs, with a "Tuned comparison" section, the best-so-far plot and the
    budget curve; a console warning for each best value at the edge of its search range."""
    configs, spaces = study.method_configs, study.spaces
    best = {m: best_params(study.studies[m]) for m in study.methods}
    section = tuned_section(
        study,
        {m: trial_rows(study, m) for m in study.methods},
        spaces,
        best,
        {m: {k: method_value(configs[m], k) for k in spaces[m]} for m in study.methods},
    )
    out = study.dir / "report"
    write_report([study.dir / "final"], out, sections=[section])
    for line in edge_warnings(spaces, best):
        log.warning("%s", line)
    return out / "report.md"


def tune_one(study: Study, argv: list[str]) -> Path:
    """One dataset's study: search, finals, report. Returns the report; PeftBenchError naming every method
    without a best setting and every final that did not complete, after the report is written."""
    study.dir.mkdir(parents=True, exist_ok=True)
    log.info(
        "tuning %s: %d trials each, %d seeds; folder %s",
        ",".join(study.methods),
        study.cfg.trials,
        study.cfg.seeds,
        study.dir,
    )
    create_studies(study)
    start_workers(study, argv)
    failed = run_finals(study, argv)
    report = write_tuned_report(study)
    failed = [*without_a_best(study), *failed]
    if failed:
        raise PeftBenchError(
            f"{len(failed)} problem(s), the report ({report}) lists what did complete: " + " | ".join(failed)
        )
    return report


def tune_datasets(argv: list[str], datasets: list[str]) -> Path:
    """Every (method, dataset) pair with the same budget: each dataset's study in turn (every one checked
    first), then one report of them all. A dataset whose study fails does not stop the others; the
    command then fails naming each, after the combined report of what completed is written."""
    root, studies = parse_datasets(argv, datasets)
    root.mkdir(parents=True, exist_ok=True)
    failed = []
    for i, one in enumerate(studies, 1):
        log.info("dataset %d of %d: %s", i, len(studies), one.dataset)
        try:
            tune_one(one.study, one.argv)
        except PeftBenchError as e:
            log.error("dataset %s: %s", one.dataset, hide_password(str(e)))
            failed.append(f"dataset={one.dataset}: {e}")
    report = write_datasets_report(root, studies)
    if failed:
        raise PeftBenchError(
            f"{len(failed)} of {len(studies)} datasets with problems, the combined report ({report}) lists "
            "what did complete: " + " | ".join(failed)
        )
    return report


def write_datasets_report(root: Path, studies: list[DatasetStudy]) -> Path:
    """`<folder>/report/report.md`: the tuned benchmark table (each method's best finals on each dataset)
    and a link to each dataset's own tuned report."""
    finals_of, left_out = {}, []
    for one in studies:
        study = one.study
        finals_of[one.dataset] = {}
        if not (study.dir / STUDY_FILE).is_file():  # its study never started (the storage refused, ...)
            left_out.append(f"{one.dataset}: its study did not start")
            continue
        for m in study.methods:
            best = best_params(study.studies[m])
            if best is None:
                left_out.append(f"{one.dataset} {m}: no trial completed, so no final runs")
                continue
            runs, out = finals(study, m, "best", best)
            finals_of[one.dataset][m] = runs
            left_out += [f"{one.dataset} {line}" for line in out]
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    report = out / "report.md"
    report.write_text(datasets_report(root, studies, finals_of, left_out))
    return report
