"""A storage password never written or printed: one helper masks every URL that may hold one, and the
command line its workers and final runs are given carries it in the environment instead."""

from __future__ import annotations

import os
import re

# a password given in tune.storage's URL: main() moves it here, out of the command line that workers and
# final runs (local processes, submitit's pickled jobs) are given; Study.storage_url puts it back
STORAGE_PASSWORD = "PEFT_BENCH_STORAGE_PASSWORD"

MASK = "***"

URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):([^@\s]*)@")


def hide_password(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***: scheme://user:***@host/db. The one
    helper for everything the command writes or prints that may hold a storage URL (study.json, the
    report, its messages)."""
    return URL_PASSWORD.sub(rf"\1:{MASK}@", text)


def password_out_of(argv: list[str]) -> list[str]:
    """The command line with tune.storage's password masked, the password moved to the environment
    (STORAGE_PASSWORD), which this process's workers and final runs inherit: no command line (`ps`), pickled
    submitit job or log holds it. PGPASSWORD or ~/.pgpass keep it off the command line from the start."""
    out = []
    for arg in argv:
        found = URL_PASSWORD.search(arg) if arg.startswith("tune.storage=") else None
        if found and found.group(2) != MASK:
            os.environ[STORAGE_PASSWORD] = found.group(2)
            arg = hide_password(arg)
        out.append(arg)
    return out
