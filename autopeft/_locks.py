"""Serialise the first opening of a local SQLite store across processes.

MLflow and Optuna create (and migrate) a new SQLite database on first use; two drivers doing it at
once corrupt the migration. An exclusive lock file beside the database makes the second wait.
"""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def sqlite_init_lock(url: str) -> Iterator[None]:
    if not url.startswith("sqlite:///"):
        yield  # servers (PostgreSQL, MySQL, an MLflow server) handle their own concurrency
        return
    db = Path(url[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
