"""python -m peft_bench.tune on the tiny model: an equal budget per method, finals over seeds on test,
a study that survives a SIGKILL, workers sharing one study (local processes, SLURM jobs) and a
PostgreSQL storage."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peft_bench.results import write_results
from tests.helpers import ROOT

TINY_TUNE = [
    "model=tiny",
    "dataset=demo",
    "logger=none",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "dataset.generator_size=400",
]
POSTGRES = "postgresql://peft_bench:peft_bench@127.0.0.1:5433/peft_bench"  # scripts/postgres.sh start


def tune(args: list[str], timeout: int = 900, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "peft_bench.tune", *args],
        cwd=kwargs.pop("cwd", ROOT),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def trials(folder: Path, method: str, storage: str | None = None) -> list:
    import optuna

    url = storage or f"sqlite:///{folder / 'study.db'}"
    name = json.loads((folder / "study.json").read_text())["studies"][method]  # a shared storage holds others
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def finished(ts) -> list:
    return [t for t in ts if t.state.name in ("COMPLETE", "PRUNED", "FAIL") and "killed" not in t.user_attrs]


@pytest.mark.slow  # 8 trials and 8 final runs of the tiny model: ~1.5 min
def test_two_methods_four_trials_two_seeds_then_the_report(tmp_path):
    out = tune(["method=lora,hira", *TINY_TUNE, "tune.trials=4", "tune.seeds=2", f"tune.dir={tmp_path}"])
    assert out.returncode == 0, out.stderr[-3000:]
    # no library's Python warning reaches the user (Optuna's heartbeat notices, at each ask)
    assert not re.search(r"\w+Warning: ", out.stderr), out.stderr[-3000:]
    for method in ("lora", "hira"):
        ts = trials(tmp_path, method)
        assert len(ts) == len(finished(ts)) == 4  # the equal budget, exactly
        for t in ts:  # every trial an ordinary run folder, validated only: the test split untouched
            r = json.loads((tmp_path / "trials" / method / str(t.number) / "results.json").read_text())
            assert not any(k.startswith("test_") for k in r), sorted(r)
            # a completed trial has its objective (demo's primary metric: accuracy); a pruned one stopped
            assert "val_acc" in r if t.state.name == "COMPLETE" else r["status"] == "pruned", sorted(r)
        for which in ("best", "default"):
            for seed in (1, 2):
                r = json.loads(
                    (tmp_path / "final" / method / f"{which}-s{seed}" / "results.json").read_text()
                )
                assert r["status"] == "completed" and r["seed"] == seed and "test_acc" in r
        best = json.loads((tmp_path / "final" / method / "best-s1" / "results.json").read_text())
        best_trial = max((t for t in ts if t.state.name == "COMPLETE"), key=lambda t: t.value)
        assert best["config"]["method"]["lr"] == pytest.approx(
            best_trial.params["lr"]
        )  # the best trial's setting
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Tuned comparison" in report and "| lora |" in report and "| hira |" in report
    assert (tmp_path / "report" / "tuned_best_so_far.png").is_file()
    again = tune(["method=lora,hira", *TINY_TUNE, "tune.trials=4", "tune.seeds=2", f"tune.dir={tmp_path}"])
    assert (
        again.returncode == 0 and len(trials(tmp_path, "lora")) == 4
    )  # the same command: nothing more to do
    # a final folder holding a run of another setting (copied there by hand, say) is not counted as the
    # best setting's: the report names it and the command says it could not run that final
    path = tmp_path / "final" / "lora" / "best-s2" / "results.json"
    r = json.loads(path.read_text())
    r["config"]["method"]["lr"] = 0.5
    del r["digest"]  # a real run of that setting carries its own digest (a hand edit: test_hostile test_14)
    write_results(path.parent, r)
    out = tune(["method=lora,hira", *TINY_TUNE, "tune.trials=4", "tune.seeds=2", f"tune.dir={tmp_path}"])
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "final lora best seed 2" in out.stderr and "another configuration" in out.stderr, out.stderr
    report = (tmp_path / "report" / "report.md").read_text()
    assert "lora best seed 2: trained another setting (lr=0.5, not" in report, report
    row = next(line for line in report.splitlines() if line.startswith("| lora |"))
    assert "(n=1)" in row, row  # seed 1 alone, and the change from the default on seed 1 alone


# one method, four trials long enough to be interrupted in the middle of one (1,000 batches; at 40
# batches a trial took 0.3 s on an idle machine, and the signal came after the study had ended)
FOUR_LONG_TRIALS = [
    "method=lora",
    *TINY_TUNE,
    "trainer.limit_train_batches=1000",
    "dataset.generator_size=20000",
    "tune.trials=4",
    "tune.seeds=1",
    "tune.defaults=false",
]


def signal_mid_trial(args: list[str], folder: Path, sig: int, after_s: float, out) -> subprocess.Popen:
    """`python -m peft_bench.tune ARGS` in a process group of its own, sent `sig` `after_s` seconds into
    its second trial (once trials/lora/1/results.json exists)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "peft_bench.tune", *args],
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    target = folder / "trials" / "lora" / "1" / "results.json"
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(after_s)
    os.killpg(proc.pid, sig)
    return proc


@pytest.mark.slow  # a study killed with SIGKILL during a trial, then the same command: ~1.5 min
def test_a_killed_study_resumes_with_exactly_its_budget_and_repeats_no_trial(tmp_path):
    args = [
        *FOUR_LONG_TRIALS,
        f"tune.dir={tmp_path}",
    ]
    proc = signal_mid_trial(args, tmp_path, signal.SIGKILL, after_s=1.0, out=subprocess.DEVNULL)
    proc.wait(timeout=60)
    first = (tmp_path / "trials" / "lora" / "0" / "results.json").stat().st_mtime_ns
    out = tune(args)
    assert out.returncode == 0, out.stderr[-3000:]
    ts = trials(tmp_path, "lora")
    assert len(finished(ts)) == 4  # exactly the budget
    killed = [t for t in ts if "killed" in t.user_attrs]
    assert [t.number for t in killed] == [1] and killed[0].state.name == "FAIL"
    assert (tmp_path / "trials" / "lora" / "0" / "results.json").stat().st_mtime_ns == first  # not run again
    # the new process's sampler does not restart trial 0's stream: the replacement draws a new value
    assert len({t.params["lr"] for t in ts}) == len(ts), [t.params for t in ts]


@pytest.mark.slow  # two worker processes, 6 trials: ~1 min
def test_two_local_workers_share_one_study(tmp_path):
    out = tune(
        [
            "method=lora",
            *TINY_TUNE,
            "tune.trials=6",
            "tune.seeds=1",
            "tune.defaults=false",
            "tune.workers=2",
            f"tune.dir={tmp_path}",
        ]
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ts = trials(tmp_path, "lora")
    assert len(ts) == len(finished(ts)) == 6
    assert len({t.user_attrs["worker"]["pid"] for t in ts}) == 2  # both pulled trials from the one study
    assert len({t.params["lr"] for t in ts}) == 6, [t.params for t in ts]  # no two workers draw alike


def postgres_ready() -> str | None:
    try:
        import sqlalchemy

        sqlalchemy.create_engine(POSTGRES).connect().close()
        return None
    except Exception as e:  # noqa: BLE001
        return f"no PostgreSQL at {POSTGRES} ({type(e).__name__}); run scripts/postgres.sh start"


@pytest.mark.slow  # a study of 2 trials and its final run: ~30 s
@pytest.mark.postgres
@pytest.mark.skipif(postgres_ready() is not None, reason=str(postgres_ready()))
def test_a_postgresql_storage_holds_the_study(tmp_path):
    out = tune(
        [
            "method=lora",
            *TINY_TUNE,
            "tune.trials=2",
            "tune.seeds=1",
            "tune.defaults=false",
            f"tune.storage={POSTGRES}",
            f"tune.dir={tmp_path}",
            f"tune.sampler_seed={os.getpid()}",
        ]
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert not (tmp_path / "study.db").exists()
    assert "peft_bench:***@" in (tmp_path / "study.json").read_text()  # the password is not written down
    assert len(finished(trials(tmp_path, "lora", POSTGRES))) == 2


@pytest.mark.slow  # two SLURM jobs as workers: ~30 s, more in the queue
@pytest.mark.slurm
def test_two_workers_as_slurm_jobs(tmp_path):
    from tests.test_slurm import slurm_ready

    if slurm_ready() is not None:
        pytest.skip(slurm_ready())
    out = tune(
        [
            "method=lora",
            *TINY_TUNE,
            "tune.trials=4",
            "tune.seeds=1",
            "tune.defaults=false",
            "tune.workers=2",
            "hydra/launcher=slurm_cpu",
            f"tune.dir={tmp_path}",
        ],
        timeout=1200,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ts = trials(tmp_path, "lora")
    assert len(finished(ts)) == 4
    assert len({t.user_attrs["worker"]["pid"] for t in ts}) == 2
    assert len(list((tmp_path / "workers").iterdir())) >= 2  # submitit's job folders


def test_bad_tune_options_are_one_message():
    out = tune(["method=lora,lora", "model=tiny", "tune.trials=0", "tune.triels=3"], timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    for problem in (
        "tune.triels: no such tune option",
        "tune.trials=0: must be >= 1",
        "a method is listed twice",
    ):
        assert problem in out.stderr, out.stderr


def test_bad_values_and_searches_are_one_message():
    cases = [
        (
            ["tune.pruner_startup=-1", "tune.startup_trials=-1", "tune.sampler_seed=-1"],
            [
                "tune.pruner_startup=-1: must be >= 0",
                "tune.startup_trials=-1: must be >= 0, or null",
                "tune.sampler_seed=-1: must be in [0, 2**32)",
            ],
        ),
        (["method=lroa"], ["method=lroa:"]),
        (["method.search={lr:{choices:[]}}"], ["method.search.lr.choices=[]: give a non-empty list"]),
        (["method.search={lr:{choices:5}}"], ["method.search.lr.choices=5: give a non-empty list"]),
        (["method.search={lr:[a,b]}"], ["method.search.lr="]),
        (["method.search=5"], ["method.search=5: give a mapping"]),
    ]
    for args, said in cases:
        out = tune(["model=tiny", "dataset=demo", *args], timeout=300)
        assert out.returncode == 2 and "Traceback" not in out.stderr, (args, out.stderr[-2000:])
        for sentence in said:
            assert sentence in out.stderr, (args, out.stderr)


def test_a_sampled_value_reaches_the_run_as_itself():
    """None is null (not the string 'None'), a string stays a string, a float is exact."""
    from peft_bench.checks import compose_job
    from peft_bench.tune import with_params

    cfg = compose_job(
        [
            "model=tiny",
            "dataset=demo",
            *with_params("lora", {"base_quantization": None, "lr": 0.0012520653814999472}),
        ]
    )
    assert cfg.method.base_quantization is None and cfg.method.lr == 0.0012520653814999472
    cfg = compose_job(["model=tiny", "dataset=demo", *with_params("lora", {"init": "pissa_niter_4"})])
    assert cfg.method.init == "pissa_niter_4"


def test_an_error_in_every_trial_fails_the_command_naming_it(tmp_path):
    """An error that fails every trial (here: validation every 10,000 batches of a 4-batch epoch) leaves
    no best setting: the command says so, with the trials' error, and exits non-zero."""
    out = tune(
        [
            "method=lora",
            *TINY_TUNE,
            "tune.trials=2",
            "tune.seeds=1",
            "tune.eval_every=10000",
            f"tune.dir={tmp_path}",
        ],
        timeout=600,
    )
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "method lora: no trial completed" in out.stderr and "10000" in out.stderr, out.stderr[-3000:]
    assert len(finished(trials(tmp_path, "lora"))) == 2


@pytest.mark.slow  # a study of 1 trial and 1 final run, then 3 more commands in its folder: ~1 min
def test_a_folder_holds_one_study_and_the_finals_wait_for_running_trials(tmp_path):
    import optuna
    import psutil

    from peft_bench.io import process_identity

    # the default folder, tune/<the command>: its name holds '=' and ',' (as run folders' names do)
    out = tune(
        ["method=lora", *TINY_TUNE, "tune.seeds=1", "tune.defaults=false", "tune.trials=1"], cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (folder,) = (tmp_path / "tune").iterdir()
    assert "=" in folder.name and (folder / "final" / "lora" / "best-s1" / "results.json").is_file()
    tmp_path = folder
    args = ["method=lora", *TINY_TUNE, "tune.seeds=1", "tune.defaults=false", f"tune.dir={tmp_path}"]
    before = sorted(p.stat().st_mtime_ns for p in tmp_path.rglob("results.json"))
    # another command in the same folder: its trial folders would collide with this study's
    other = tune([*args, "tune.trials=2"], timeout=300)
    assert other.returncode == 2 and "holds another study" in other.stderr, other.stderr[-3000:]
    assert sorted(p.stat().st_mtime_ns for p in tmp_path.rglob("results.json")) == before  # untouched
    # a trial still running (an earlier command's worker that goes on): the finals must wait for it
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        name = json.loads((tmp_path / "study.json").read_text())["studies"]["lora"]
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'study.db'}")
        running = study.ask()
        me = process_identity()
        running.set_user_attr(
            "worker",
            {**me, "pid": sleeper.pid, "process_started_at": psutil.Process(sleeper.pid).create_time()},
        )
        out = tune([*args, "tune.trials=1"], timeout=300)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
        assert f"lora trial #{running.number} is still running (pid {sleeper.pid}" in out.stderr, out.stderr
    finally:
        sleeper.kill()
        sleeper.wait()
    out = tune([*args, "tune.trials=1"], timeout=300)  # its process gone: marked killed, nothing to redo
    assert out.returncode == 0, out.stderr[-3000:]
    ts = trials(tmp_path, "lora")
    assert len(finished(ts)) == 1 and ts[running.number].user_attrs.get("killed")


# ---------------------------------------------------------------------------------- trust (issue 20)

# scripts/postgres.sh start creates this role with a password that no other name holds
SECRET = "Zx7-hush-91q"
POSTGRES_PW = f"postgresql://peft_bench_pw:{SECRET}@127.0.0.1:5433/peft_bench_pw"


def test_a_storage_password_is_masked_by_one_helper(monkeypatch):
    from peft_bench.tune import STORAGE_PASSWORD, Study, TuneConfig, hide_password, password_out_of

    url = "postgresql+psycopg://tuner:p%40ss:w0rd@db.example.org:5432/studies"
    assert hide_password(url) == "postgresql+psycopg://tuner:***@db.example.org:5432/studies"
    said = f"could not open {url} (nor mysql://root:toor@h/db); sqlite:////a/b:c.db stays"
    assert hide_password(said) == (
        "could not open postgresql+psycopg://tuner:***@db.example.org:5432/studies "
        "(nor mysql://root:***@h/db); sqlite:////a/b:c.db stays"
    )
    for plain in ("postgresql://tuner@h:5432/db", "postgresql://h:5432/db", "journal:/x/y.log"):
        assert hide_password(plain) == plain  # nothing to hide: untouched (PGPASSWORD, ~/.pgpass)
    # the command line its workers and finals get holds no password; the environment carries it back
    monkeypatch.delenv(STORAGE_PASSWORD, raising=False)
    argv = password_out_of(["method=lora", f"tune.storage={url}"])
    assert argv == ["method=lora", f"tune.storage={hide_password(url)}"]
    study = Study([], ["lora"], TuneConfig(storage=argv[1].split("=", 1)[1]), Path("/tmp/x"), "k")
    assert study.storage_url == url and study.storage_shown == hide_password(url)


def test_an_unreachable_postgresql_storage_is_one_sentence_and_fails_fast(tmp_path):
    started = time.time()
    out = tune(
        [
            "method=lora",
            "model=tiny",
            "dataset=demo",
            "tune.storage=postgresql://tuner:hunter2x@127.0.0.1:1/studies",
            f"tune.dir={tmp_path}",
        ],
        timeout=300,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert time.time() - started < 60
    for said in (
        "tune.storage=postgresql://tuner:***@127.0.0.1:1/studies: cannot connect to PostgreSQL at host "
        "127.0.0.1, port 1 (",
        "Connection refused",
        "pg_hba.conf",
        "PGPASSWORD or ~/.pgpass",
    ):
        assert said in out.stderr, out.stderr[-3000:]
    assert "hunter2x" not in out.stdout + out.stderr
    assert "hunter2x" not in "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())


def test_an_invalid_value_in_a_search_is_refused_before_any_trial():
    """Each choice and each bound is checked as the run it would give (check_config's rules), every
    method's problems at once, naming the value and the valid range."""
    from peft_bench.errors import ConfigError
    from peft_bench.tune import parse

    with pytest.raises(ConfigError) as e:
        parse(
            [
                "method=lora,hira",
                "model=tiny",
                "dataset=demo",
                "method.search={r:{choices:[0,4]},dropout:{choices:[0.1,1.5]},lr:{low:0,high:0.1}}",
            ]
        )
    problems = e.value.problems
    for method in ("lora", "hira"):
        for said in (
            f"method={method}: method.search.r: the choice 0 is invalid: method.r=0",
            "the adapter rank (rank=, or method.r=) must be >= 1",
            f"method={method}: method.search.dropout: the choice 1.5 is invalid: method.dropout=1.5: "
            "must be in [0, 1)",
            f"method={method}: method.search.lr: low=0 on a log scale; a log-uniform range needs low > 0",
        ):
            assert any(said in p for p in problems if p.startswith(f"method={method}")), (said, problems)
    assert len(problems) == 6, problems
    with pytest.raises(ConfigError) as e:  # a bound of the wrong type for the key
        parse(["method=lora", "model=tiny", "dataset=demo", "method.search={r:{low:0.5,high:4.0,log:false}}"])
    assert "method.search.r: the low 0.5 is invalid" in str(e.value), str(e.value)
    parse(["method=lora", "model=tiny", "dataset=demo", "method.search={r:{choices:[2,4]},lr:[1e-4,1e-2]}"])


@pytest.mark.slow  # two tiny studies (two workers, then PGPASSWORD) against the local PostgreSQL: ~1 min
@pytest.mark.postgres
@pytest.mark.skipif(postgres_ready() is not None, reason=str(postgres_ready()))
def test_no_storage_password_is_written_or_printed(tmp_path):
    """A password in tune.storage's URL reaches the storage (from two worker processes too) and is found
    in no file of the tune folder and nowhere on the console; PGPASSWORD without one in the URL works."""
    base = ["method=lora", *TINY_TUNE, "tune.seeds=1", "tune.defaults=false"]
    seed = os.getpid()  # the studies' names in the shared database: this test's own
    out = tune(
        [
            *base,
            "tune.trials=2",
            "tune.workers=2",
            f"tune.storage={POSTGRES_PW}",
            f"tune.dir={tmp_path / 'url'}",
            f"tune.sampler_seed={seed}",
        ]
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(finished(trials(tmp_path / "url", "lora", POSTGRES_PW))) == 2
    assert "peft_bench_pw:***@" in (tmp_path / "url" / "report" / "report.md").read_text()
    plain = POSTGRES_PW.replace(f":{SECRET}@", "@")
    env = {k: v for k, v in os.environ.items() if k != "PEFT_BENCH_STORAGE_PASSWORD"}
    again = tune(
        [
            *base,
            "tune.trials=1",
            f"tune.storage={plain}",
            f"tune.dir={tmp_path / 'env'}",
            f"tune.sampler_seed={seed + 1}",
        ],
        env={**env, "PGPASSWORD": SECRET},
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(finished(trials(tmp_path / "env", "lora", POSTGRES_PW))) == 1
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" or p.name == "results.json" for p in files)
    holding = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert holding == [], holding  # reports, study.json, results.json, logs, checkpoints, pickles
    assert SECRET not in out.stdout + out.stderr + again.stdout + again.stderr


@pytest.mark.slow  # two different commands at once on one folder, one trial and one final run: ~1 min
def test_two_different_commands_started_at_once_on_one_folder(tmp_path):
    folder = tmp_path / "tune"
    base = ["method=lora", *TINY_TUNE, "tune.seeds=1", "tune.defaults=false", f"tune.dir={folder}"]
    logs = [tmp_path / f"out{n}.txt" for n in (1, 2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "peft_bench.tune", *base, f"tune.trials={n}"],
            cwd=ROOT,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        for n, log in zip((1, 2), logs, strict=True)
    ]
    codes = sorted(p.wait(timeout=900) for p in procs)
    said = [log.read_text() for log in logs]
    assert codes == [0, 2], said
    refused = next(s for s in said if "holds another study" in s)
    assert "Traceback" not in refused and "IntegrityError" not in refused, refused[-3000:]
    names = json.loads((folder / "study.json").read_text())["studies"]
    assert len(finished(trials(folder, "lora"))) in (1, 2) and list(names) == ["lora"]


@pytest.mark.slow  # a study interrupted with SIGINT during its second trial: ~1 min
def test_ctrl_c_stops_the_command_and_starts_no_other_trial(tmp_path):
    folder = tmp_path / "tune"
    args = [
        *FOUR_LONG_TRIALS,
        f"tune.dir={folder}",
    ]
    console = tmp_path / "console.txt"
    # SIGINT to the process group: what Ctrl-C in a terminal sends
    proc = signal_mid_trial(args, folder, signal.SIGINT, after_s=3.0, out=console.open("w"))
    target = folder / "trials" / "lora" / "1" / "results.json"
    code = proc.wait(timeout=120)
    said = console.read_text()
    assert code == 130, said[-3000:]
    assert "Traceback" not in said and "interrupted (Ctrl-C)" in said, said[-3000:]
    assert json.loads(target.read_text())["status"] == "interrupted"
    assert not (folder / "trials" / "lora" / "2").exists() and not (folder / "final").exists()
    ts = trials(folder, "lora")
    assert [t.number for t in ts] == [0, 1] and ts[0].state.name in ("COMPLETE", "PRUNED")
    assert ts[1].state.name == "FAIL" and "interrupted" in ts[1].user_attrs.get("killed", "")


def test_a_postgresql_server_that_does_not_answer_fails_within_the_connect_timeout(tmp_path):
    """A host that takes the TCP connection and never answers (a firewall, a hung server) is the same
    one sentence after tune.CONNECT_TIMEOUT_S seconds, not the OS's minutes."""
    import socket

    from peft_bench.errors import PeftBenchError
    from peft_bench.tune import CONNECT_TIMEOUT_S, Study, TuneConfig, storage

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel accepts the connection; nobody ever speaks
        port = silent.getsockname()[1]
        url = f"postgresql://tuner:hunter2x@127.0.0.1:{port}/studies"
        study = Study([], ["lora"], TuneConfig(storage=url), tmp_path, "k")
        started = time.time()
        with pytest.raises(PeftBenchError) as e:
            storage(study)
        took = time.time() - started
    assert took < CONNECT_TIMEOUT_S + 5, took
    said = str(e.value)
    assert f"tuner:***@127.0.0.1:{port}/studies: cannot connect to PostgreSQL at host 127.0.0.1" in said
    assert "timeout" in said and "hunter2x" not in said, said


# ---------------------------------------- several datasets: one study each, one benchmark table


def two_glue_files(folder: Path) -> str:
    """A CoLA-shaped and an STS-B-shaped file, `<folder>/cola.jsonl` and `stsb.jsonl`: the data_files
    override that names each dataset's own (`${dataset.name}`, resolved in each study's runs)."""
    words = ["cat", "dog", "river", "market", "piano", "winter", "garden", "engine"]
    rows = {
        "cola": [
            {"sentence": f"the {words[i % 8]} saw {words[i * 3 % 8]} {i}", "label": i % 3 % 2}
            for i in range(200)
        ],
        "stsb": [
            {
                "sentence1": f"the {words[i % 8]} saw {words[i * 3 % 8]} {i}",
                "sentence2": f"a {words[i * 5 % 8]} near {words[(i + 2) % 8]}",
                "label": round(i * 0.37 % 5.0, 2),
            }
            for i in range(200)
        ],
    }
    for name, records in rows.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return f"dataset.data_files={{train:'{folder}/${{dataset.name}}.jsonl'}}"


TWO_DATASETS = [
    "model=tiny",
    "logger=none",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "dataset=cola,stsb",
]


def test_every_dataset_and_method_is_checked_before_anything_trains(tmp_path):
    """A problem of each dataset, and one that every dataset shares (said once), in one message."""
    out = tune(
        [
            "method=lora,lroa",
            *TWO_DATASETS,
            "dataset.data_files={train:'/nonexistent/${dataset.name}.jsonl'}",
            f"tune.dir={tmp_path / 't'}",
        ],
        timeout=300,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    said = out.stderr
    assert said.count("method=lroa:") == 1, said  # an unknown method: the same on every dataset
    assert "dataset=cola: method=lora: dataset.data_files: no such file: /nonexistent/cola.jsonl" in said
    assert "dataset=stsb: method=lora: dataset.data_files: no such file: /nonexistent/stsb.jsonl" in said
    assert not (tmp_path / "t").exists()  # nothing was written


@pytest.mark.slow  # two datasets x two methods x 2 trials, then 4 final runs, of the tiny model: ~1 min
def test_two_datasets_are_two_studies_and_one_tuned_benchmark_table(tmp_path):
    from peft_bench.report import interval

    args = [
        "method=lora,ia3",
        *TWO_DATASETS,
        two_glue_files(tmp_path),
        "tune.trials=2",
        "tune.seeds=2",
        "tune.defaults=false",
        f"tune.dir={tmp_path / 't'}",
    ]
    out = tune(args)
    assert out.returncode == 0, out.stderr[-3000:]
    root = tmp_path / "t"
    for dataset in ("cola", "stsb"):  # each dataset's folder: what the one-dataset command writes
        folder = root / dataset
        assert {p.name for p in folder.iterdir()} >= {"study.db", "study.json", "trials", "final", "report"}
        for method in ("lora", "ia3"):
            assert len(finished(trials(folder, method))) == 2  # the same budget for every pair
            r = json.loads((folder / "final" / method / "best-s1" / "results.json").read_text())
            assert r["dataset"] == dataset and r["status"] == "completed"
        assert "## Tuned comparison" in (folder / "report" / "report.md").read_text()
    report = (root / "report" / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| Method"))
    assert header == "| Method | Trainable Params | cola MCC | stsb Pearson | stsb Spearman | Avg. |"
    assert "[cola](../cola/report/report.md)" in report and "[stsb](../stsb/report/report.md)" in report
    # a cell: the best setting's two final runs, ×100, mean ± std [95% t interval, within the metric's range]
    finals = [
        json.loads((root / "stsb" / "final" / "lora" / f"best-s{s}" / "results.json").read_text())
        for s in (1, 2)
    ]
    mean, sd, low, high = interval([100 * r["test_spearman"] for r in finals])
    low, high = max(low, -100.0), min(high, 100.0)  # clipped to a correlation's range
    row = next(line for line in report.splitlines() if line.startswith("| lora |"))
    assert f"{mean:.1f} ± {sd:.1f} [{low:.1f}, {high:.1f}]" in row, row
    assert "| Majority class / mean label | 0 |" in report
    again = tune(args)  # the same command: every study resumes, nothing more to do
    assert again.returncode == 0 and len(trials(root / "cola", "lora")) == 2, again.stderr[-3000:]


def test_a_trial_whose_heartbeat_stopped_on_another_host_is_replaced(tmp_path, monkeypatch):
    """A trial on another host that died before its run folder existed (no pid to look at, no lock to
    try): Optuna's heartbeat says so after its grace period, and it is marked killed, not counted."""
    import optuna

    from peft_bench.tune import store as where
    from peft_bench.tune.store import create_studies
    from peft_bench.tune.study import parse
    from peft_bench.tune.workers import claim

    monkeypatch.setattr(where, "HEARTBEAT_GRACE_S", 1)
    study = parse(["method=lora", *TINY_TUNE, "tune.trials=2", f"tune.dir={tmp_path}"])
    create_studies(study)
    opt = study.studies["lora"]
    far = opt.ask()
    far.set_user_attr("worker", {"host": "another-host", "pid": 1, "process_started_at": 0.0})
    study_id = study.store.get_study_id_from_name(opt.study_name)
    study.store.record_heartbeat(study.store.get_trial_id_from_study_id_trial_number(study_id, far.number))
    mine = claim(study, "lora", opt)  # the far trial is alive: it counts, one more fits the budget
    assert mine is not None and opt.trials[far.number].state.name == "RUNNING"
    opt.tell(mine, 0.5)
    assert claim(study, "lora", opt) is None  # the budget (2) is spent while the far trial lives
    time.sleep(2.5)  # its heartbeat stopped: past the grace period
    again = claim(study, "lora", opt)
    ts = trials(tmp_path, "lora")
    assert ts[far.number].state.name == "FAIL"
    assert "heartbeat" in opt.user_attrs[f"killed:{far.number}"]  # not counted: a finished trial is sealed
    assert again is not None and again.number == 2  # a new trial takes its place
    assert not isinstance(study.store, optuna.storages.JournalStorage)


def test_help_is_fast_and_cfg_shows_the_study_without_opening_it(tmp_path):
    """--help answers before torch loads (the options from the schema); --cfg prints the options, folder,
    storage (password hidden) and search spaces, and touches nothing."""
    started = time.time()
    out = tune(["--help"], timeout=60)
    assert out.returncode == 0 and "tune.trials=16" in out.stdout and "tune.defaults=True" in out.stdout
    assert time.time() - started < 10, "peft-bench tune --help loads more than it needs"
    folder = tmp_path / "t"
    out = tune(
        [
            "--cfg",
            "method=lora,hira",
            "model=tiny",
            "dataset=demo",
            "tune.trials=4",
            "tune.storage=postgresql://u:hunter2x@h/db",
            f"tune.dir={folder}",
        ],
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "trials: 4" in out.stdout and "storage: postgresql://u:***@h/db" in out.stdout, out.stdout
    assert "lora:" in out.stdout and "hira:" in out.stdout and "hunter2x" not in out.stdout + out.stderr
    assert not folder.exists()


def test_the_tune_group_file_is_chosen_with_tune_and_a_missing_one_is_named():
    from peft_bench.tune.study import parse, tune_options

    chosen = tune_options(["tune=default", "tune.trials=5"])
    assert chosen.problems == [] and chosen.cfg.trials == 5 and chosen.cfg.seeds == 3
    problems = tune_options(["tune=nope"]).problems
    assert len(problems) == 1 and "tune=nope: no such file" in problems[0] and "default" in problems[0]
    # values Hydra's parser cannot take as one value are the text as typed; +/~ is one sentence
    odd = tune_options(["tune.storage=postgresql://u@h/db?connect_timeout=10", "tune.dir=/x/a=b,c"])
    assert odd.problems == [] and odd.cfg.dir == "/x/a=b,c" and odd.cfg.storage.endswith("timeout=10")
    assert tune_options(["+tune.trials=4"]).problems == [
        "+tune.trials=4: a tune option takes no + or ~ (give tune.trials=4)"
    ]
    # naming the default file is the same study as naming none
    args = ["method=lora", "model=tiny", "dataset=demo"]
    assert parse([*args, "tune=default"]).key == parse(args).key


def test_a_search_over_a_peft_config_field_checks_it_against_peft():
    """method.search over config.<field> of a method=peft option: each value reaches the trial's run
    (`++`, the field need not be in the YAML), and a field PEFT's config class lacks, or one on a
    method without a PEFT config, is one sentence before any trial."""
    from peft_bench.checks import compose_job
    from peft_bench.errors import ConfigError
    from peft_bench.tune import parse, with_params

    cfg = compose_job(["model=tiny", "dataset=demo", *with_params("oft", {"config.module_dropout": 0.1})])
    assert cfg.method.config == {"oft_block_size": 32, "r": 0, "module_dropout": 0.1}
    parse(["method=oft", *TINY_TUNE[:2], "method.search={config.oft_block_size:{choices:[16,32]}}"])
    with pytest.raises(ConfigError) as e:
        parse(["method=oft", *TINY_TUNE[:2], "method.search={config.no_such_field:{choices:[1,2]}}"])
    assert "method.search.config.no_such_field: the choice 1 is invalid" in str(e.value), str(e.value)
    assert "OFTConfig has no field ['no_such_field']" in str(e.value), str(e.value)
    with pytest.raises(ConfigError, match="has no key 'config.r'"):
        parse(["method=lora", *TINY_TUNE[:2], "method.search={config.r:{choices:[2,4]}}"])


@pytest.mark.slow  # 2 trials and 1 final run of the tiny model: ~40 s
def test_a_study_tunes_a_peft_config_field(tmp_path):
    out = tune(
        [
            "method=oft",
            *TINY_TUNE,
            "tune.trials=2",
            "tune.seeds=1",
            "tune.defaults=false",
            "method.search={config.oft_block_size:{choices:[16,32]}}",
            f"tune.dir={tmp_path}",
        ]
    )
    assert out.returncode == 0, out.stderr[-3000:]
    done = [t for t in trials(tmp_path, "oft") if t.state.name == "COMPLETE"]
    assert done and {t.params["config.oft_block_size"] for t in done} <= {16, 32}
    finals = [json.loads(p.read_text()) for p in tmp_path.rglob("results.json") if "final" in str(p)]
    assert finals and all(f["config"]["method"]["config"]["oft_block_size"] in (16, 32) for f in finals)
