"""Cross-process locks around the study and tracking stores.

``sqlite_init_lock``: MLflow and Optuna create (and migrate) a new SQLite database on first use;
two drivers doing it at once corrupt the migration. An exclusive lock file beside the database
makes the second wait.

``study_lock``: drivers cooperating on one study take it around "count the trials, ask one more",
so together they never ask more than the study's target (see ``study.ask_within_target``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if the holder dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sqlite_path(url: str) -> Path | None:
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


@contextlib.contextmanager
def sqlite_init_lock(url: str) -> Iterator[None]:
    db = _sqlite_path(url)
    if db is None:
        yield  # servers (PostgreSQL, MySQL, an MLflow server) handle their own concurrency
        return
    with _file_lock(db.with_name(db.name + ".lock")):
        yield


@contextlib.contextmanager
def study_lock(storage: Any, study_name: str) -> Iterator[None]:
    """Exclusive across every driver of ``study_name`` in the Optuna RDB ``storage``.

    SQLite (one host): a lock file beside the database. PostgreSQL (any host): a transaction-level
    advisory lock, which does not block Optuna's own writes on its other connections (a row lock
    on the study would: Optuna locks that row to number a new trial) and which the server drops
    when a dead driver's connection closes. Other backends get no lock: two drivers there may
    still add one trial at the target.
    """
    db = _sqlite_path(storage.url)
    if db is not None:
        with _file_lock(db.with_name(f"{db.name}.{_key(study_name) & 0xFFFFFFFF:08x}.ask.lock")):
            yield
        return
    if storage.engine.dialect.name != "postgresql":
        yield
        return
    import sqlalchemy

    with storage.engine.begin() as conn:  # the lock ends with this transaction
        conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _key(study_name)})
        yield


def _key(study_name: str) -> int:
    # A stable signed 64-bit key (PostgreSQL's bigint) per study; Python's hash() is salted per process.
    return int.from_bytes(hashlib.sha256(f"autopeft-ask:{study_name}".encode()).digest()[:8], "big", signed=True)
