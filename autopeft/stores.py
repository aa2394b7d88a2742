"""Database URLs of the two stores a search writes (the Optuna study, the MLflow tracking store).

One owner for what a ``sqlite:///`` URL means, for checking a URL before anything connects, and
for the retry both stores need when two processes open one new SQLite file at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

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
def sqlite_init_lock(url: str) -> Iterator[None]:
    """Serialise the first opening of a local SQLite store across processes.

    MLflow and Optuna create (and migrate) a new SQLite database on first use; two drivers doing it
    at once corrupt the migration. An exclusive lock file beside the database makes the second wait.
    Servers (PostgreSQL, MySQL, an MLflow server) handle their own concurrency.
    """
    db = sqlite_path(url)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
