"""Database URLs of the two stores a search writes (the Optuna study, the MLflow tracking store).

One owner for what a ``sqlite:///`` URL means, for checking a URL before anything connects, for
the retry both stores need when two processes open one new SQLite file at once, and for the
cross-process locks around them:

- ``sqlite_init_lock``: MLflow and Optuna create (and migrate) a new SQLite database on first use;
  two drivers doing it at once corrupt the migration, so the second waits;
- ``study_lock``: drivers cooperating on one study take it around "count the trials, ask one
  more", so together they never ask more than the study's target (``study.ask_within_target``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from autopeft.errors import ConfigError

SQLITE = "sqlite:///"
T = TypeVar("T")


def sqlite_path(url: str) -> Path | None:
    """The database file of a local SQLite URL (``sqlite:///rel`` or ``sqlite:////abs``); None otherwise."""
    return Path(url[len(SQLITE):]) if url.startswith(SQLITE) else None


def sqlite_url(path: str | Path) -> str:
    """The URL of a SQLite file, made absolute: trials and servers run in other directories."""
    return SQLITE + str(Path(path).resolve())


def absolute(url: str) -> str:
    """``url`` with a relative SQLite path made absolute; other URLs unchanged."""
    path = sqlite_path(url)
    return sqlite_url(path) if path is not None and not path.is_absolute() else url


def check_database_url(url: str, flag: str) -> None:
    """A URL SQLAlchemy can parse, whose database driver is installed; ConfigError naming ``flag`` otherwise."""
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        parsed.get_dialect()  # imports the driver: a typo'd scheme or missing package fails here
    except sqlalchemy.exc.NoSuchModuleError:  # (a subclass of ArgumentError: test it first)
        raise ConfigError(f"{flag} {url!r}: unknown database kind {url.split(':', 1)[0]!r}; use sqlite:///path.db, "
                          f"postgresql+psycopg2://... or mysql+pymysql://...") from None
    except sqlalchemy.exc.ArgumentError:
        raise ConfigError(f"{flag} {url!r} is not a database URL; use sqlite:///path/to/file.db or "
                          f"postgresql+psycopg2://user:password@host/db") from None
    except ImportError as exc:
        raise ConfigError(f"{flag} {url!r} needs a database driver that is not installed ({exc.name}); "
                          f"pip install it (PostgreSQL: pip install 'autopeft[cluster]')") from None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if the holder dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def sqlite_init_lock(url: str) -> Iterator[None]:
    """Serialise the first opening of a local SQLite store across processes (servers — PostgreSQL,
    MySQL, an MLflow server — handle their own concurrency)."""
    db = sqlite_path(url)
    if db is None:
        yield
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
    url = getattr(storage, "url", None)  # an in-memory study (tests, benchmarks) is one process's alone
    db = sqlite_path(url) if url else None
    if db is not None:
        with _file_lock(db.with_name(f"{db.name}.{_key(study_name) & 0xFFFFFFFF:08x}.ask.lock")):
            yield
        return
    if url is None or storage.engine.dialect.name != "postgresql":
        yield
        return
    import sqlalchemy

    with storage.engine.begin() as conn:  # the lock ends with this transaction
        conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _key(study_name)})
        yield


def _key(study_name: str) -> int:
    # A stable signed 64-bit key (PostgreSQL's bigint) per study; Python's hash() is salted per process.
    return int.from_bytes(hashlib.sha256(f"autopeft-ask:{study_name}".encode()).digest()[:8], "big", signed=True)


def open_with_retry(url: str, opener: Callable[[], T], retry_on: tuple[type[BaseException], ...],
                    attempts: int = 5, backoff_s: float = 0.5) -> T:
    """``opener()`` under the SQLite init lock, retried: a process that opened a new SQLite file
    while another was creating its tables fails once, then succeeds when the tables exist."""
    for attempt in range(attempts):
        try:
            with sqlite_init_lock(url):
                return opener()
        except retry_on:
            if attempt == attempts - 1:
                raise
            time.sleep(backoff_s * (attempt + 1))
    raise AssertionError("unreachable")
