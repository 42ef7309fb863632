"""Where a study is kept: the Optuna storage (SQLite by default, PostgreSQL or a journal file for a
cluster), each method's study in it, `study.json`, and a running trial's heartbeat. (`study` below is a
tune.study.Study, which imports this module.)"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator

import optuna
import sqlalchemy.exc
from filelock import FileLock, Timeout
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.engine import make_url

from peft_bench.errors import ConfigError, PeftBenchError
from peft_bench.io import atomic_write
from peft_bench.tune.password import hide_password
from peft_bench.tune.search import sampler

log = logging.getLogger("peft_bench")

KILLED = "killed"  # user attribute of a trial whose process died: marked failed, not counted, replaced
HEARTBEAT_S = 30  # a running trial's heartbeat in an RDB storage; a trial silent for HEARTBEAT_GRACE_S died
HEARTBEAT_GRACE_S = 120
CONNECT_TIMEOUT_S = 5  # a PostgreSQL server that does not answer fails the command in seconds, not minutes


def mark_stale(opt_study, trial) -> None:
    """The storage's heartbeat_stale_trial_callback: Optuna's fail_stale_trials has failed a trial whose
    heartbeat stopped (its process died, on any host, even before its run folder existed). It is marked
    killed in the study's user attributes (a finished trial's own can no longer be set), so it does not
    use the budget and a new trial takes its place."""
    opt_study.set_user_attr(f"{KILLED}:{trial.number}", "its heartbeat stopped (its process died); replaced")


def killed(opt_study, trials) -> dict[int, str]:
    """{trial number: why} of the trials whose process died (or a Ctrl-C stopped): not counted, replaced."""
    out = {t.number: t.user_attrs[KILLED] for t in trials if KILLED in t.user_attrs}
    for key, why in opt_study.user_attrs.items():
        if key.startswith(f"{KILLED}:"):
            out[int(key.split(":", 1)[1])] = why
    return out


def counted(opt_study) -> list:
    """The trials that use the budget: all but those whose process died (replaced by new ones)."""
    trials = opt_study.get_trials(deepcopy=False)
    dead = killed(opt_study, trials)
    return [t for t in trials if t.number not in dead]


def trial_id(store, opt_study, trial) -> int:
    return store.get_trial_id_from_study_id_trial_number(
        store.get_study_id_from_name(opt_study.study_name), trial.number
    )


def first_heartbeat(store, opt_study, trial) -> None:
    """A new trial's first heartbeat (fail_stale_trials ignores a trial that never had one)."""
    if isinstance(store, optuna.storages.RDBStorage):
        store.record_heartbeat(trial_id(store, opt_study, trial))


@contextlib.contextmanager
def heartbeat(store, opt_study, trial) -> Iterator[None]:
    """While a trial runs, its heartbeat in an RDB storage every HEARTBEAT_S seconds (Optuna's
    study.optimize does the same; this command asks and tells by hand, see workers.claim). A failed beat
    (a busy database, a dropped connection) is logged and the next one tried."""
    if not isinstance(store, optuna.storages.RDBStorage):  # a journal file has no heartbeat
        yield
        return
    beating, stop = trial_id(store, opt_study, trial), threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                store.record_heartbeat(beating)
            except Exception as e:  # noqa: BLE001  (the trial runs on; a later beat may get through)
                log.warning("trial #%d: its heartbeat was not recorded (%s)", trial.number, e)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def storage(study):
    url = study.storage_url
    if url.startswith("journal:"):
        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    if url.startswith("sqlite:"):
        study.dir.mkdir(parents=True, exist_ok=True)

    # a busy SQLite file makes a writer wait, not fail, while another worker commits
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else None
    if url.startswith("postgresql") and "connect_timeout" not in url:
        engine = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=HEARTBEAT_GRACE_S,
            heartbeat_stale_trial_callback=mark_stale,
        )
    except sqlalchemy.exc.OperationalError as e:
        raise PeftBenchError(unreachable(study, e)) from None


def unreachable(study, e: Exception) -> str:
    """One sentence for a storage that cannot be reached: where, why (the driver's words), what to check."""
    url = make_url(study.storage_url)
    lines = str(getattr(e, "orig", None) or e).splitlines() or [""]
    why = hide_password(lines[0].removeprefix("connection failed: ").strip())
    if url.get_backend_name() != "postgresql":
        return f"tune.storage={study.storage_shown}: cannot open the storage ({why})"
    return (
        f"tune.storage={study.storage_shown}: cannot connect to PostgreSQL at host "
        f"{url.host or 'localhost'}, port {url.port or 5432} ({why}): check that the server is running "
        "there and accepts TCP connections from this host (listen_addresses, pg_hba.conf), and the "
        f"credentials (user {url.username}, the password from PGPASSWORD or ~/.pgpass)"
    )


def open_study(study, method: str, task_higher_is_better: bool, store=None):
    cfg = study.cfg
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=cfg.prune_startup())
        if cfg.prune
        else optuna.pruners.NopPruner()
    )
    return optuna.create_study(
        storage=store or storage(study),
        study_name=f"{study.key}/{method}",
        sampler=sampler(cfg, 0),
        pruner=pruner,
        direction="maximize" if task_higher_is_better else "minimize",
        load_if_exists=True,
    )


STUDY_FILE = "study.json"  # in the tune folder: the storage (password hidden) and each method's study name


def create_studies(study) -> None:
    """Create the storage and every method's study once, before any worker starts (SQLite's schema
    set-up is not safe from two processes at once), and say in `study.json` where they are; under the
    folder's lock, so that of two commands started at once on one folder the second finds the first's
    study.json (and is refused if it is another study), as if started after it."""
    (study.dir / "locks").mkdir(parents=True, exist_ok=True)
    lock = FileLock(study.dir / "locks" / f"{STUDY_FILE}.lock", timeout=600)
    try:
        with lock:
            create_studies_locked(study)
    except Timeout:
        raise PeftBenchError(
            f"{lock.lock_file}: another tune command has held it for 10 minutes while creating its "
            "studies; is it stuck on its storage? Stop it, or give this one another tune.dir"
        ) from None


def create_studies_locked(study) -> None:
    shown = study.storage_shown
    names = {m: f"{study.key}/{m}" for m in study.methods}
    path = study.dir / STUDY_FILE
    if path.is_file():  # its trial folders are numbered per study: another study's would collide with them
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError):
            before = None
        if before != {"storage": shown, "studies": names}:
            raise ConfigError(
                [
                    f"tune.dir={study.dir} holds another study ({path} names "
                    f"{before.get('studies') if isinstance(before, dict) else 'an unreadable one'}, in "
                    f"{before.get('storage') if isinstance(before, dict) else '?'}): a study's options, "
                    "methods, run overrides and storage are fixed once it starts; give the same command, "
                    "or another tune.dir"
                ]
            )
    study.studies  # noqa: B018  (opened: created in the storage)
    atomic_write(study.dir / STUDY_FILE, json.dumps({"storage": shown, "studies": names}, indent=2) + "\n")
