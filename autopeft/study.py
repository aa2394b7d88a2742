"""The Optuna study behind a search: its persistent record, shared by every process working on it.

A search's study holds its settings (so ``--resume NAME`` needs nothing else), a trial target
(``num_samples``), and per trial the driver process that asked for it. That is what lets a
search survive its driver: trials left RUNNING by a dead driver are marked interrupted (FAIL with
a user attribute) and asked again; trials of a live driver — a second process cooperating on the
same study — are left alone. A driver is known dead when its process is gone (same host) or when
it stopped beating (any host: see ``autopeft.heartbeat``).

Trial user attributes written here:

- ``autopeft_owner``: the driver that asked the trial (``this_process()``);
- ``autopeft_heartbeat``: that driver beats for it (so a missing beat means a dead driver);
- ``autopeft_failure``: on FAIL, why — the same category as MLflow's ``autopeft.failure`` tag;
- ``autopeft_interrupted``: its driver stopped before it finished; asked again, not counted;
- ``autopeft_asked_again``: lost with its node or process and asked again, not counted;
- ``autopeft_retries``: on a trial asked again, how many lost trials of its configuration came before;
- ``autopeft_cpu_seconds``: the CPU-seconds a finished trial's process spent on it (``--cpu-budget-s``);
- ``autopeft_warm_start``: on a warm start (and its retries), its index among the space's warm starts.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterable, Iterator

import optuna
import psutil
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from autopeft.errors import ConfigError
from autopeft.schema import INTERRUPTED, LOST_FAILURES
from autopeft.stores import open_with_retry, sqlite_path, study_lock

SETTINGS_ATTR = "autopeft_settings"
OWNER_ATTR = "autopeft_owner"
BEATS_ATTR = "autopeft_heartbeat"
FAILURE_ATTR = "autopeft_failure"
INTERRUPTED_ATTR = "autopeft_interrupted"
ASKED_AGAIN_ATTR = "autopeft_asked_again"
RETRIES_ATTR = "autopeft_retries"
REFUSED_ATTR = "autopeft_refused"  # a sampled config the space refused (reuse.py): not counted
CPU_SECONDS_ATTR = "autopeft_cpu_seconds"
# The sampler's random start-up count when the trial was asked (samplers that have one): with fewer
# trials finished than that, the trial was a random draw, not the sampler's model's proposal.
STARTUP_ATTR = "autopeft_sampler_startup"
# Successive halving, per trial: the objective values at rung k (``autopeft_rung_values_k``, with
# the report's ``schema.NO_SKILL`` where it has one), the
# highest rung reached and its share of the full budget, and the rung a stopped trial stopped at.
RUNG_VALUES_ATTR = "autopeft_rung_values_"
RUNG_ATTR, FIDELITY_ATTR, STOPPED_ATTR = "autopeft_rung", "autopeft_fidelity", "autopeft_stopped_at_rung"
# Halving of the promotion type: a trial that resumes a stopped one from its rung holds the number
# of the first trial of that configuration's run (its rung values are that trial's).
CONTINUES_ATTR = "autopeft_continues"
RESUMES_RUNG_ATTR = "autopeft_resumes_rung"  # ... and the rung it goes on from
# An enqueued warm start: its index among the space's warm-start points (schema.WARM_START).
WARM_START_ATTR = "autopeft_warm_start"
# Every trial: what it trained itself, in full-budget trainings (schema.TRAINED; --full-trials adds it up).
TRAINED_ATTR = "autopeft_trained"

# A live driver records a trial's end in MLflow right after telling the study; a finished trial
# whose run still says RUNNING this long after (any host's clock, skew included) lost its driver
# in between. On this host a dead driver is known at once.
UNRECORDED_END_GRACE_S = 300.0

# What ask_within_target answers when it asks nothing.
FULL = "full"  # the target is reached and every counted trial has finished: the search is done
WAIT = "wait"  # the target is reached but some counted trials still run: one may be lost and asked again

# A live driver stamps its trial within milliseconds of asking; one unstamped for longer was
# asked by a driver that died in between.
_UNSTAMPED_GRACE_S = 10.0


def this_process() -> str:
    """host:pid:start-time — the start time tells a live owner from a reused pid."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{psutil.Process(pid).create_time():.0f}"


def owner_alive(owner: str | None) -> bool | None:
    """True/False for owners on this host; None (unknown) for other hosts, no owner, or an owner
    not written by ``this_process`` (nothing to check it by)."""
    parts = owner.rsplit(":", 2) if owner else []
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    host, pid, started = parts
    if host != socket.gethostname():
        return None
    try:
        return f"{psutil.Process(int(pid)).create_time():.0f}" == started
    except psutil.NoSuchProcess:
        return False


def counted(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that count towards the target: asked and not replaced by a trial asked again
    (interrupted ones, lost ones asked again), and not refused by the space; waiting ones are not
    asked yet."""
    return [t for t in trials if t.state != TrialState.WAITING
            and not t.user_attrs.get(INTERRUPTED_ATTR) and not t.user_attrs.get(ASKED_AGAIN_ATTR)
            and REFUSED_ATTR not in t.user_attrs]


def resumes(trial: FrozenTrial) -> dict[str, int]:
    """What a trial asked again keeps of a trial that resumed a stopped run: which run, from which
    rung (its state stays claimed until a resumed trial is done with it: ``run_states``)."""
    return {k: trial.user_attrs[k] for k in (CONTINUES_ATTR, RESUMES_RUNG_ATTR) if k in trial.user_attrs}


def kept_when_asked_again(trial: FrozenTrial) -> dict[str, int]:
    """The user attributes a trial asked again keeps: the resumed run (``resumes``) and the warm start."""
    warm = {WARM_START_ATTR: trial.user_attrs[WARM_START_ATTR]} if WARM_START_ATTR in trial.user_attrs else {}
    return {**resumes(trial), **warm}


def rung_values(trials: Iterable[FrozenTrial]) -> Iterator[tuple[int, int, dict[str, float]]]:
    """(trial number, rung, objective values) of every rung report the study holds: what a
    resumed search's scheduler decides against. Interrupted trials are left out: they run again.
    A continuation's rungs are its first trial's (``CONTINUES_ATTR``): one run, one name."""
    for t in trials:
        if t.user_attrs.get(INTERRUPTED_ATTR):
            continue
        for key, values in t.user_attrs.items():
            if key.startswith(RUNG_VALUES_ATTR):
                yield t.user_attrs.get(CONTINUES_ATTR, t.number), int(key[len(RUNG_VALUES_ATTR):]), values


def driver_alive(trial: FrozenTrial, stale_trial_ids: Collection[int] = (), released: Collection[str] = (),
                 now: datetime.datetime | None = None) -> bool | None:
    """Whether the driver running ``trial`` is alive; None when no driver can tell.

    Same host: its process, checked at once. Any host: its heartbeat (``stale_trial_ids``, trials
    whose driver has not beaten for the grace period). A trial on another host without heartbeats
    (asked by an autopeft older than them) cannot be told and is left alone.
    """
    owner = trial.user_attrs.get(OWNER_ATTR)
    if owner is None:
        now = now or datetime.datetime.now()
        return trial.datetime_start is None or (now - trial.datetime_start).total_seconds() <= _UNSTAMPED_GRACE_S
    if owner in released:
        return False
    here = owner_alive(owner)
    if here is not None:
        return here
    if trial.user_attrs.get(BEATS_ATTR):
        return trial._trial_id not in stale_trial_ids
    return None


def reconcile(study: optuna.Study, owners_to_release: set[str] | None = None,
              stale_trial_ids: Collection[int] = ()) -> list[FrozenTrial]:
    """Mark RUNNING trials of dead drivers (or of ``owners_to_release``) interrupted and ask them again.

    Returns the trials marked. Their parameters are re-enqueued so the search reruns them. Safe
    when several drivers reconcile at once: a trial is marked by whichever finishes it first.
    """
    marked = []
    storage = study._storage  # Optuna has no public API to change another trial's state
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if driver_alive(t, stale_trial_ids, owners_to_release or (), now) is not False:
            continue
        try:
            # Attributes first: a finished trial's cannot change.
            storage.set_trial_user_attr(t._trial_id, INTERRUPTED_ATTR, True)
            storage.set_trial_user_attr(t._trial_id, FAILURE_ATTR, INTERRUPTED)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # another driver reclaimed it, or its own driver finished it, meanwhile
        # A lost trial already asked again (its driver died before failing it) is not asked twice.
        if t.params and not t.user_attrs.get(ASKED_AGAIN_ATTR):
            retries = t.user_attrs.get(RETRIES_ATTR)
            kept = {**({RETRIES_ATTR: retries} if retries else {}), **kept_when_asked_again(t)}
            study.enqueue_trial(t.params, user_attrs=kept or None, skip_if_exists=False)
        marked.append(t)
    return marked


@dataclass(frozen=True)
class TrialEnd:
    """How the study says a trial ended: what its MLflow run is closed with when its driver died
    between telling the study and recording the end in MLflow."""

    failure: str | None  # FAILURE_ATTR on FAIL (None: it completed)
    cpu_seconds: float | None
    asked_again: bool
    stopped_at_rung: int | None
    reuse_of: int | None = None  # a duplicate answered from this trial's result (reuse.REUSE_ATTR)


def ends_of_gone_drivers(study: optuna.Study, released: Collection[str] = (),
                         now: datetime.datetime | None = None) -> dict[int, TrialEnd]:
    """Finished trials (by number) whose driver is gone: dead on this host, in ``released``, or
    finished more than ``UNRECORDED_END_GRACE_S`` ago. Their MLflow runs, if still RUNNING (or, for
    a reuse, never created), will not be closed (created) by anyone else (``SearchTracker.close_ended``)."""
    from autopeft.reuse import REUSE_ATTR  # (reuse imports this module)

    now = now or datetime.datetime.now()
    ends, dead = {}, {}  # dead: per owner, checked once (a process lookup each)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)):
        owner = t.user_attrs.get(OWNER_ATTR)
        if owner not in dead:
            dead[owner] = owner in released or owner_alive(owner) is False
        gone = dead[owner] or (
            t.datetime_complete is not None
            and (now - t.datetime_complete).total_seconds() > UNRECORDED_END_GRACE_S)
        if not gone:
            continue
        failed = t.state != TrialState.COMPLETE
        stopped = t.user_attrs.get(STOPPED_ATTR)
        source = t.user_attrs.get(REUSE_ATTR)
        ends[t.number] = TrialEnd(
            failure=(t.user_attrs.get(FAILURE_ATTR) or "exception") if failed else None,
            cpu_seconds=t.user_attrs.get(CPU_SECONDS_ATTR), asked_again=bool(t.user_attrs.get(ASKED_AGAIN_ATTR)),
            stopped_at_rung=int(stopped) if stopped is not None else None,
            reuse_of=int(source) if source is not None and not failed else None)
    return ends


def cpu_spent(trials: Iterable[FrozenTrial]) -> float:
    """CPU-seconds the study's finished trials used (duplicates answered from the study cost none)."""
    return sum(t.user_attrs.get(CPU_SECONDS_ATTR, 0.0) for t in trials)


def _mean_trial_cost(trials: Collection[FrozenTrial]) -> float | None:
    costs = [t.user_attrs[CPU_SECONDS_ATTR] for t in trials
             if CPU_SECONDS_ATTR in t.user_attrs and t.state == TrialState.COMPLETE]
    return sum(costs) / len(costs) if costs else None


def _training(t: FrozenTrial) -> float:
    """Full-budget trials' worth of training one trial counts (``TRAINED_ATTR`` as the trial
    reported it: 1 at the full budget, the share of the steps where successive halving stopped it,
    less what a resumed run had trained before, one more per further --top-seeds seed; studies
    written before it have the fidelity); nothing for a duplicate answered from the study, nor for
    a failed trial (its CPU still counts towards a CPU budget)."""
    from autopeft.reuse import REUSE_ATTR  # (reuse imports this module)

    if t.state != TrialState.COMPLETE or REUSE_ATTR in t.user_attrs:
        return 0.0
    return float(t.user_attrs.get(TRAINED_ATTR, t.user_attrs.get(FIDELITY_ATTR, 1.0)))


def trainings_spent(trials: Iterable[FrozenTrial]) -> float:
    """What ``--full-trials`` adds up: the study's trials' training, in full-budget trials."""
    return sum(_training(t) for t in counted(trials))


def _mean_training(trials: Collection[FrozenTrial]) -> float | None:
    from autopeft.reuse import REUSE_ATTR

    costs = [_training(t) for t in counted(trials) if t.state == TrialState.COMPLETE and REUSE_ATTR not in t.user_attrs]
    return sum(costs) / len(costs) if costs else None


def _budgets(cpu_budget_s: float | None, full_trials: float | None) -> list[tuple[float, Callable, Callable]]:
    """The budgets a search has, each as (budget, what the trials spent, the mean cost of a
    finished trial): CPU-seconds, and training in full-budget trials. One rule reads them all."""
    return [(budget, spent, mean) for budget, spent, mean in ((cpu_budget_s, cpu_spent, _mean_trial_cost),
                                                               (full_trials, trainings_spent, _mean_training))
            if budget is not None]


def _room_for_another(trials: Collection[FrozenTrial], budget: float, spent: Callable, mean: Callable) -> bool:
    """What the trials spent, plus the running ones and a new one at the mean cost of those that
    finished (under successive halving that mean includes the cheap stopped trials, as the next
    one may be), within ``budget``? Nothing finished yet: start as many as run at once."""
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return spent(trials) + (running + 1) * (mean(trials) or 0.0) <= budget


def expected_trials(trials: Collection[FrozenTrial], target: int, cpu_budget_s: float | None = None,
                    full_trials: float | None = None) -> int:
    """How many counted trials the search will run: ``target``, or fewer where a budget runs out
    first at the finished trials' mean cost (the rule ``target_reached`` stops on). A sampler
    sizes its random start-up phase from it (``GPSampler.plan_trials``)."""
    done = sum(t.state != TrialState.RUNNING for t in counted(trials))
    out = target
    for budget, spent, mean in _budgets(cpu_budget_s, full_trials):
        per_trial = mean(trials)
        if per_trial:
            out = min(out, done + int(max(0.0, budget - spent(trials)) // per_trial))
    return out


def target_reached(trials: Collection[FrozenTrial], target: int, cpu_budget_s: float | None = None,
                   full_trials: float | None = None) -> bool:
    """A search's stopping rule, one place for every driver and reader: ``target`` counted
    trials, or no room in ``cpu_budget_s`` or in ``full_trials`` for another one."""
    return len(counted(trials)) >= target or not all(
        _room_for_another(trials, *budget) for budget in _budgets(cpu_budget_s, full_trials))


def worth_waiting_for(trials: Collection[FrozenTrial]) -> bool:
    """Whether a driver at the target must keep waiting for running trials, whoever runs them: a
    lost one is asked again and a dead driver's is reclaimed, and some driver must still be
    asking then. Trials nobody can tell alive (another host, no heartbeat) are not waited for."""
    return any(driver_alive(t) is not None for t in counted(trials) if t.state == TrialState.RUNNING)


def ask_within_target(study: optuna.Study, target: int, owner: str,
                      cpu_budget_s: float | None = None, full_trials: float | None = None) -> optuna.Trial | str:
    """Ask the study's next trial for ``owner`` unless it holds ``target`` counted trials, or
    another trial is not expected to fit in ``cpu_budget_s`` or ``full_trials`` (``target_reached``).

    Atomic across drivers (``study_lock``): two drivers at the target never both ask. Returns the
    trial, stamped with its owner and its first heartbeat, else FULL or WAIT.
    """
    # Optuna wraps the RDB storage of a study in a cache; the lock needs the database behind it.
    with study_lock(getattr(study._storage, "_backend", study._storage), study.study_name):
        trials = study.get_trials(deepcopy=False)
        if target_reached(trials, target, cpu_budget_s, full_trials):
            return WAIT if worth_waiting_for(trials) else FULL
        plan = getattr(study.sampler, "plan_trials", None)
        if plan is not None:  # a search bounded by CPU or training runs fewer trials than its target
            plan(expected_trials(trials, target, cpu_budget_s, full_trials))
        trial = study.ask()
        # Stamp the owner before sampling (many writes): a driver killed mid-sampling must still
        # leave a trial that the next run recognises as a dead driver's.
        trial.set_user_attr(OWNER_ATTR, owner)
        startup = getattr(study.sampler, "startup_trials", None)
        if startup is not None:
            trial.set_user_attr(STARTUP_ATTR, startup)
        if hasattr(study._storage, "record_heartbeat"):  # RDB storages beat; the in-memory one cannot
            trial.set_user_attr(BEATS_ATTR, True)
            study._storage.record_heartbeat(trial._trial_id)
        return trial


def record_failure(study: optuna.Study, trial_id: int, category: str, retry_lost_trials: int,
                   cpu_seconds: float | None = None) -> bool:
    """Record why a RUNNING trial failed (before it is told FAIL), and what it spent where its
    process could say (``cpu_seconds``, charged to a CPU budget), and ask a lost one again.

    A trial lost with its node or process (``LOST_FAILURES``) says nothing about its
    configuration: that configuration is asked again, up to ``retry_lost_trials`` times, and the
    trial asked again counts instead of the lost one. Returns whether it was asked again.
    """
    storage = study._storage
    trial = storage.get_trial(trial_id)
    retries = trial.user_attrs.get(RETRIES_ATTR, 0)
    again = category in LOST_FAILURES and retries < retry_lost_trials and bool(trial.params)
    try:
        storage.set_trial_user_attr(trial_id, FAILURE_ATTR, category)
        if cpu_seconds is not None:
            storage.set_trial_user_attr(trial_id, CPU_SECONDS_ATTR, cpu_seconds)
        if again:
            storage.set_trial_user_attr(trial_id, ASKED_AGAIN_ATTR, True)
    except UpdateFinishedTrialError:
        return False  # reclaimed by another driver meanwhile (this one missed its beats): it decided
    if again:
        study.enqueue_trial(trial.params, user_attrs={RETRIES_ATTR: retries + 1, **kept_when_asked_again(trial)},
                            skip_if_exists=False)
    return again


def open_storage(url: str, **kwargs: Any) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage, retried: two processes creating one new SQLite file race on its tables
    (e.g. a reader that opened the new file first). A reader outside autopeft (optuna-dashboard,
    ``optuna.load_study``) takes no init lock; where it stamps the schema version first, the
    driver's own stamp fails on uniqueness (IntegrityError) and the retry finds the tables made."""
    import sqlalchemy.exc

    return open_with_retry(url, lambda: optuna.storages.RDBStorage(url, **kwargs),
                           retry_on=(sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError))


def find_settings(storage: optuna.storages.BaseStorage, name: str) -> dict[str, Any] | None:
    """The settings the search ``name`` was started with, or None if the storage holds no such study."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return None
    return storage.get_study_user_attrs(study_id).get(SETTINGS_ATTR)


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
