"""The Optuna study behind a search: its persistent record, shared by every process working on it.

A search's study holds its settings (so ``--resume NAME`` needs nothing else), a trial target
(``num_samples``), and per trial the driver process that asked for it. That is what lets a
search survive its driver: trials left RUNNING by a dead driver are marked interrupted (FAIL with
a user attribute) and asked again; trials of a live driver — a second process cooperating on the
same study — are left alone.
"""

from __future__ import annotations

import datetime
import os
import socket
from typing import Any, Iterable, Iterator

import optuna
import psutil
from optuna.trial import FrozenTrial, TrialState

from autopeft.errors import ConfigError
from autopeft.stores import open_with_retry, sqlite_path

SETTINGS_ATTR = "autopeft_settings"
OWNER_ATTR = "autopeft_owner"
INTERRUPTED_ATTR = "autopeft_interrupted"
REFUSED_ATTR = "autopeft_refused"  # a sampled config the space refused (reuse.py): not counted
# Successive halving, per trial: the objective values at rung k (``autopeft_rung_values_k``), the
# highest rung reached and its share of the full budget, and the rung a stopped trial stopped at.
RUNG_VALUES_ATTR = "autopeft_rung_values_"
RUNG_ATTR, FIDELITY_ATTR, STOPPED_ATTR = "autopeft_rung", "autopeft_fidelity", "autopeft_stopped_at_rung"


def this_process() -> str:
    """host:pid:start-time — the start time tells a live owner from a reused pid."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{psutil.Process(pid).create_time():.0f}"


def owner_alive(owner: str | None) -> bool | None:
    """True/False for owners on this host; None (unknown) for other hosts or no owner."""
    if not owner:
        return None
    host, pid, started = owner.rsplit(":", 2)
    if host != socket.gethostname():
        return None
    try:
        return f"{psutil.Process(int(pid)).create_time():.0f}" == started
    except psutil.NoSuchProcess:
        return False


def counted(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that count towards the target: asked, not interrupted and not refused (waiting ones not yet asked)."""
    return [t for t in trials if t.state != TrialState.WAITING and not t.user_attrs.get(INTERRUPTED_ATTR)
            and REFUSED_ATTR not in t.user_attrs]


def rung_values(trials: Iterable[FrozenTrial]) -> Iterator[tuple[int, int, dict[str, float]]]:
    """(trial number, rung, objective values) of every rung report the study holds: what a
    resumed search's scheduler decides against. Interrupted trials are left out: they run again."""
    for t in trials:
        if t.user_attrs.get(INTERRUPTED_ATTR):
            continue
        for key, values in t.user_attrs.items():
            if key.startswith(RUNG_VALUES_ATTR):
                yield t.number, int(key[len(RUNG_VALUES_ATTR):]), values


def reconcile(study: optuna.Study, owners_to_release: set[str] | None = None) -> list[FrozenTrial]:
    """Mark RUNNING trials of dead drivers (or of ``owners_to_release``) interrupted and ask them again.

    Returns the trials marked. Their parameters are re-enqueued so the search reruns them.
    """
    marked = []
    storage = study._storage  # Optuna has no public API to change another trial's state
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get(OWNER_ATTR)
        # A live driver stamps its trial within milliseconds of asking; one unstamped for longer
        # was asked by a driver that died in between.
        orphan = owner is None and t.datetime_start is not None and (now - t.datetime_start).total_seconds() > 10
        if (owners_to_release and owner in owners_to_release) or owner_alive(owner) is False or orphan:
            storage.set_trial_user_attr(t._trial_id, INTERRUPTED_ATTR, True)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            if t.params:
                study.enqueue_trial(t.params, skip_if_exists=False)
            marked.append(t)
    return marked


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage, retried: two processes creating one new SQLite file race on its tables."""
    import sqlalchemy.exc

    # e.g. a reader that opened the new file first
    return open_with_retry(url, lambda: optuna.storages.RDBStorage(url), retry_on=(sqlalchemy.exc.OperationalError,))


def stored_settings(name: str, storage_url: str) -> dict[str, Any]:
    """The settings a search was started with, for ``--resume NAME``."""
    db = sqlite_path(storage_url)
    if db is not None and not db.is_file():
        raise ConfigError(
            f"no search named {name!r}: there is no study storage at {db}. "
            f"Pass the --workdir (or --storage) the search was started with."
        )
    try:
        study = optuna.load_study(study_name=name, storage=storage_url)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage_url)]
        raise ConfigError(
            f"no search named {name!r} in the study storage {storage_url}; searches there: {names or 'none'}. "
            f"Pass the --storage (or --workdir) the search was started with."
        ) from None
    settings = study.user_attrs.get(SETTINGS_ATTR)
    if settings is None:
        raise ConfigError(f"study {name!r} in {storage_url} was not created by autopeft search (no settings)")
    return settings
