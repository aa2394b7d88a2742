"""A driver's heartbeat: how drivers on any host tell a dead driver's trials from a live one's.

On one host a driver's process can be checked directly (``study.owner_alive``); across hosts it
cannot. So every driver runs a thread that records a heartbeat for each of its RUNNING trials in
the study's storage, as Optuna's own heartbeat does for ``study.optimize`` (the same
``trial_heartbeats`` table, written with the database's clock, so hosts whose clocks differ
agree). A trial whose heartbeat is older than the grace period belongs to a dead driver: any
driver reclaims it (interrupted, its configuration asked again) when it starts or joins the
search, and every beat thereafter, so a search survives a driver dying on another host.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from typing import Callable, Sequence

import optuna
from optuna.trial import TrialState

from autopeft import study as studies
from autopeft.errors import ConfigError

INTERVAL_ENV = "AUTOPEFT_HEARTBEAT_S"
DEFAULT_INTERVAL_S = 10.0
# A driver is dead once it has missed this many beats: long enough for a busy database or a
# stalled process, short enough that a dead driver's trials are asked again within a minute.
GRACE_BEATS = 6

log = logging.getLogger(__name__)


def interval_s() -> float:
    """Seconds between beats: AUTOPEFT_HEARTBEAT_S, else 10 (the grace period is 6 beats)."""
    raw = os.environ.get(INTERVAL_ENV)
    if raw is None:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{INTERVAL_ENV}={raw!r}: expected a positive number of seconds between heartbeats")
    return value


class Heartbeat:
    """The beating thread of one driver (``owner``) on one study; a context manager.

    ``on_reclaimed(numbers)`` is told the numbers of the dead drivers' trials it marked interrupted
    (the search marks their MLflow runs).
    """

    def __init__(self, study: optuna.Study, storage_url: str, owner: str,
                 on_reclaimed: Callable[[Sequence[int]], None]) -> None:
        self.study, self.owner, self.on_reclaimed = study, owner, on_reclaimed
        self.interval = interval_s()
        self.grace = GRACE_BEATS * self.interval
        with warnings.catch_warnings():  # the heartbeat arguments are "experimental" in Optuna 5
            warnings.simplefilter("ignore")
            # A storage of its own: with a heartbeat interval set, Optuna warns on every ask
            # through it (it expects study.optimize), and this one never asks.
            self._storage = studies.open_storage(storage_url, heartbeat_interval=self.interval,
                                                 grace_period=self.grace)
        self._study_id = self._storage.get_study_id_from_name(study.study_name)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="autopeft-heartbeat", daemon=True)

    def stale_trial_ids(self) -> set[int]:
        """RUNNING trials whose driver has not beaten for the grace period (the database's clock)."""
        return set(self._storage._get_stale_trial_ids(self._study_id))  # Optuna's own rule (BaseHeartbeat)

    def beat(self) -> None:
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get(studies.OWNER_ATTR) == self.owner:
                self._storage.record_heartbeat(t._trial_id)

    def reclaim(self) -> list[int]:
        """Mark the trials of dead drivers interrupted (their configurations are asked again)."""
        numbers = [t.number for t in studies.reconcile(self.study, stale_trial_ids=self.stale_trial_ids())]
        if numbers:
            self.on_reclaimed(numbers)
        return numbers

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
                self.reclaim()
            except Exception as exc:  # noqa: BLE001 - a database hiccup must not end the search; beat again
                log.warning("heartbeat of %s failed (%s); retrying in %.0f s", self.owner, exc, self.interval)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
