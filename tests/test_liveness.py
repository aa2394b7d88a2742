"""The study's side of cluster faults, without a running Ray: the ask at the target is atomic across
drivers, a driver's heartbeat tells its trials alive from a dead driver's on any host, a lost trial's
configuration is asked again as many times as the user allows, and the searcher ends a search as
soon as its last trial does."""

from __future__ import annotations

import multiprocessing
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from autopeft import study as studies
from autopeft.heartbeat import INTERVAL_ENV, Heartbeat
from autopeft.schema import NODE_LOST, WORKER_LOST

TARGET = 12


def _new_study(tmp_path, name: str = "s") -> tuple[optuna.Study, str]:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=studies.open_storage(url), study_name=name, load_if_exists=True)
    return study, url


def ask_until_done(url: str, name: str, owner: str, threads: int, start=None) -> None:
    """One driver: several threads asking (and finishing) trials until the study is full.
    ``start`` (a barrier shared by the drivers) makes them race from the same moment: a process
    that imports faster would otherwise fill the study before the other one asks."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=studies.open_storage(url))
    if start is not None:
        start.wait(timeout=120)

    def worker():
        while True:
            trial = studies.ask_within_target(study, TARGET, owner)
            if trial == studies.FULL:
                return
            if trial == studies.WAIT:
                time.sleep(0.01)
                continue
            study.tell(trial, trial.suggest_float("x", 0, 1))

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def race_to_the_target(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """Two drivers (processes, each with its own connections) of 4 threads each race to TARGET."""
    optuna.create_study(storage=studies.open_storage(url), study_name=name)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=ask_until_done, args=(url, name, f"driver-{i}", 4, start)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    trials = optuna.load_study(study_name=name, storage=url).trials
    assert {t.user_attrs[studies.OWNER_ATTR] for t in trials} == {"driver-0", "driver-1"}
    return trials


def test_the_searcher_says_finished_as_soon_as_the_last_trial_ends(tmp_path):
    """Tune asks a searcher that returned nothing again only after a 1 s sleep; the searcher looks
    at a waiting study at most once a second. The trial that ends is what changes the answer, so
    the next ask must see it at once, not after the throttle (which held every search's end)."""
    from ray.tune.search import Searcher

    from autopeft.ray_glue import StudySearcher

    def space(trial):
        trial.suggest_int("x", 0, 10)
        return {"peft_config": {"methods": []}}

    searcher = StudySearcher(space=space, metric=["metric", "trainable_params"], mode=["max", "min"],
                             sampler=optuna.samplers.RandomSampler(seed=0), storage=optuna.storages.InMemoryStorage(),
                             study_name="end", target=1, owner=studies.this_process())
    assert searcher.suggest("t0")["trial_number"] == 0
    assert searcher.suggest("t1") is None, "at the target with a trial running: wait"
    searcher.on_trial_complete("t0", {"metric": 0.8, "trainable_params": 10})
    assert searcher.suggest("t1") == Searcher.FINISHED


def test_drivers_racing_at_the_target_ask_exactly_the_target(tmp_path):
    trials = race_to_the_target(f"sqlite:///{tmp_path / 'optuna.db'}", "race")  # the lock file
    assert len(studies.counted(trials)) == TARGET == len(trials)


def test_at_the_target_a_driver_waits_for_running_trials_it_can_tell(tmp_path):
    study, _ = _new_study(tmp_path)
    mine = studies.ask_within_target(study, 2, studies.this_process())
    foreign = studies.ask_within_target(study, 2, "elsewhere:1:1")
    assert studies.ask_within_target(study, 2, studies.this_process()) == studies.WAIT
    study.tell(mine, 1.0)
    assert studies.ask_within_target(study, 2, studies.this_process()) == studies.WAIT, "a beating foreign trial"
    # A trial of another host without heartbeats (an older autopeft) cannot be told: not waited for.
    study._storage.set_trial_user_attr(foreign._trial_id, studies.BEATS_ATTR, False)
    assert studies.ask_within_target(study, 2, studies.this_process()) == studies.FULL


def test_a_cpu_budget_starts_only_trials_expected_to_fit(tmp_path):
    study, _ = _new_study(tmp_path)
    me = studies.this_process()

    def ask(budget: float):
        return studies.ask_within_target(study, TARGET, me, cpu_budget_s=budget)

    def finish(trial, cpu_s: float):
        trial.set_user_attr(studies.CPU_SECONDS_ATTR, cpu_s)
        study.tell(trial, 0.5)

    first, second = ask(10.0), ask(10.0)  # no trial has finished: nothing to expect a cost from
    finish(first, 4.0)
    assert ask(10.0) == studies.WAIT, "4 spent + the running one and a new one at 4 each pass 10"
    finish(second, 4.0)
    assert ask(10.0) == studies.FULL
    assert studies.cpu_spent(study.trials) == 8.0
    third = ask(12.0)  # 8 spent + one more at 4 fits in 12 exactly
    assert not isinstance(third, str)
    third.suggest_int("x", 0, 10)
    # A failed trial's process noted what it spent before failing: charged like a finished one's.
    studies.record_failure(study, third._trial_id, "exception", 0, cpu_seconds=3.0)
    study.tell(third, state=optuna.trial.TrialState.FAIL)
    assert studies.cpu_spent(study.trials) == 11.0
    assert ask(12.0) == studies.FULL and ask(15.0) not in (studies.FULL, studies.WAIT)
    assert ask(None) not in (studies.FULL, studies.WAIT)


def test_heartbeat_tells_a_dead_driver_on_another_host_after_the_grace_period(tmp_path, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0.5")  # grace period: 6 beats = 3 s
    study, url = _new_study(tmp_path)

    def ask(owner: str):
        trial = studies.ask_within_target(study, 10, owner)
        trial.suggest_int("x", 0, 100)
        return trial

    dead, alive, done = ask("host-a:1:1"), ask("host-b:2:2"), ask("host-b:2:2")
    study.tell(done, 0.5)
    reclaimed: list[int] = []
    with Heartbeat(study, url, "host-b:2:2", on_reclaimed=reclaimed.extend):  # host-b keeps beating
        observer = Heartbeat(study, url, studies.this_process(), on_reclaimed=reclaimed.extend)
        assert observer.reclaim() == [], "within the grace period nobody is reclaimed"
        time.sleep(observer.grace + 1.5)
        observer.reclaim()  # host-b's own thread may have reclaimed it first: each driver does
    assert reclaimed == [dead.number], "the dead driver's trial, once"
    trials = {t.number: t for t in study.trials}
    assert trials[dead.number].state == TrialState.FAIL
    assert trials[dead.number].user_attrs[studies.FAILURE_ATTR] == "interrupted"
    assert trials[alive.number].state == TrialState.RUNNING, "a beating driver's trial is left alone"
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert [t.system_attrs["fixed_params"] for t in waiting] == [trials[dead.number].params], "the dead driver's trial is asked again"
    assert observer.reclaim() == [], "reclaimed once"


@pytest.mark.parametrize("retries", [0, 1, 2])
def test_a_lost_trials_configuration_is_asked_again_as_often_as_allowed(tmp_path, retries):
    study, _ = _new_study(tmp_path)
    owner = studies.this_process()
    failures = [NODE_LOST, WORKER_LOST, NODE_LOST, NODE_LOST]
    first = None
    for category in failures:
        trial = studies.ask_within_target(study, 1, owner)
        if trial == studies.FULL:
            break
        x = trial.suggest_int("x", 0, 1000)
        first = first if first is not None else x
        assert x == first, "the configuration asked again is the lost one"
        studies.record_failure(study, trial._trial_id, category, retries)
        study.tell(trial, state=TrialState.FAIL)
    trials = study.trials
    assert len(trials) == retries + 1, "the lost configuration ran once plus its retries"
    assert [t.user_attrs[studies.FAILURE_ATTR] for t in trials] == failures[:retries + 1]
    assert len(studies.counted(trials)) == 1, "only the last one counts towards the target"
    assert studies.ask_within_target(study, 1, owner) == studies.FULL


def test_an_ordinary_failure_is_not_asked_again(tmp_path):
    study, _ = _new_study(tmp_path)
    trial = studies.ask_within_target(study, 1, studies.this_process())
    trial.suggest_int("x", 0, 10)
    assert studies.record_failure(study, trial._trial_id, "exception", 5) is False
    study.tell(trial, state=TrialState.FAIL)
    assert studies.ask_within_target(study, 1, studies.this_process()) == studies.FULL


def test_a_reader_stamping_a_new_storage_first_does_not_stop_the_driver(tmp_path, monkeypatch):
    """The soak test met it: its poller (``optuna.load_study``, no init lock) stamped the new SQLite
    file's schema version between the driver's table creation and its own stamp."""
    import sqlalchemy.exc

    real, calls = optuna.storages.RDBStorage, []

    def racing(url, **kwargs):
        calls.append(url)
        if len(calls) == 1:
            real(url)  # the reader's open, made first
            raise sqlalchemy.exc.IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed"))
        return real(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    storage = studies.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(calls) == 2 and storage.get_all_studies() == []


def test_a_driver_killed_between_the_study_and_mlflow_leaves_no_run_running(tmp_path, monkeypatch):
    """kill -9 lands after the study is told a trial's end and before its MLflow run is closed (the
    soak test met it): whoever resumes closes the run as the study says; a live driver's is left."""
    import datetime

    from autopeft.schema import ASKED_AGAIN_TAG, CPU_SECONDS, FAILURE_TAG, STOPPED_TAG, TRIAL_NUMBER_TAG
    from autopeft.tracking import SearchTracker

    study, _ = _new_study(tmp_path)
    tracker = SearchTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "autopeft", "s", params={})
    dead = "thishost:999999999:1"  # no such pid: known dead on this host
    monkeypatch.setattr(studies.socket, "gethostname", lambda: "thishost")
    live = studies.this_process()
    ends = {}
    for owner, how in [(dead, "failed"), (dead, "lost"), (dead, "stopped"), (dead, "interrupted"), (live, "failed")]:
        trial = studies.ask_within_target(study, 10, owner)
        trial.suggest_int("x", 0, 100)
        tracker.trial_started(str(trial.number), trial.number, {"x": 1}, {"methods": []})
        if how == "stopped":
            trial.set_user_attr(studies.STOPPED_ATTR, 0)
            study.tell(trial, 0.5)
            continue
        if how == "interrupted":  # reconciled by a driver that died before marking its run
            study._storage.set_trial_user_attr(trial._trial_id, studies.INTERRUPTED_ATTR, True)
            study._storage.set_trial_user_attr(trial._trial_id, studies.FAILURE_ATTR, "interrupted")
        else:
            studies.record_failure(study, trial._trial_id, WORKER_LOST if how == "lost" else "diverged", 1,
                                   cpu_seconds=3.0)
        study.tell(trial, state=TrialState.FAIL)
        ends[trial.number] = how
    closed = tracker.close_ended(studies.ends_of_gone_drivers(study))
    runs = {int(r.data.tags[TRIAL_NUMBER_TAG]): r for r in tracker.trial_runs()}
    assert closed == [0, 1, 2, 3], "the dead driver's runs; not the live one's"
    assert [runs[n].info.status for n in range(5)] == ["FAILED", "FAILED", "FINISHED", "KILLED", "RUNNING"]
    assert runs[0].data.tags[FAILURE_TAG] == "diverged" and runs[0].data.metrics[CPU_SECONDS] == 3.0
    assert runs[1].data.tags[FAILURE_TAG] == WORKER_LOST and runs[1].data.tags[ASKED_AGAIN_TAG] == "true"
    assert runs[2].data.tags[STOPPED_TAG] == "0" and FAILURE_TAG not in runs[2].data.tags
    assert runs[3].data.tags[FAILURE_TAG] == "interrupted"
    # A live driver closes its own at once; past the grace period nobody is left to.
    later = datetime.datetime.now() + datetime.timedelta(seconds=studies.UNRECORDED_END_GRACE_S + 1)
    assert tracker.close_ended(studies.ends_of_gone_drivers(study, now=later)) == [4]
    assert tracker.close_ended(studies.ends_of_gone_drivers(study, now=later)) == [], "closed once"


def test_a_reuse_whose_driver_died_before_its_run_was_created_gets_one(tmp_path, monkeypatch):
    """kill -9 after the study was told a duplicate's reused result and before its MLflow run was
    created: the trial is finished, so no reclaim sees it; whoever resumes creates its run."""
    from autopeft.reuse import REUSE_ATTR, tell_reuse
    from autopeft.schema import PARENT_TAG, REUSE_TAG, TRIAL_NUMBER_TAG
    from autopeft.tracking import SearchTracker

    study, _ = _new_study(tmp_path)
    tracker = SearchTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "autopeft", "s", params={})
    monkeypatch.setattr(studies.socket, "gethostname", lambda: "thishost")
    dead = "thishost:999999999:1"
    source = studies.ask_within_target(study, 10, dead)
    source.suggest_int("x", 0, 100)
    tracker.trial_started(str(source.number), source.number, {"x": 7}, {"methods": []})
    tracker.trial_result(str(source.number), {"metric": 0.8, "trainable_params": 1000})
    study.tell(source, 0.8)
    tracker.trial_finished(str(source.number))
    duplicate = studies.ask_within_target(study, 10, dead)
    duplicate.suggest_int("x", 0, 100)
    tell_reuse(study, duplicate, study.trials[source.number])  # ... and the driver dies here
    assert study.trials[duplicate.number].user_attrs[REUSE_ATTR] == source.number
    assert len(tracker.trial_runs()) == 1

    assert tracker.close_ended(studies.ends_of_gone_drivers(study)) == [duplicate.number]
    runs = {int(r.data.tags[TRIAL_NUMBER_TAG]): r for r in tracker.trial_runs()}
    assert runs[duplicate.number].info.status == "FINISHED"
    assert runs[duplicate.number].data.tags[REUSE_TAG] == str(source.number)
    assert runs[duplicate.number].data.metrics["metric"] == 0.8
    assert tracker.close_ended(studies.ends_of_gone_drivers(study)) == [], "created once"
    # Killed while copying: the run exists, RUNNING, without the source's metrics. Copied again.
    again = studies.ask_within_target(study, 10, dead)
    again.suggest_int("x", 0, 100)
    tell_reuse(study, again, study.trials[source.number])
    tracker.client.create_run(tracker.experiment_id, tags={
        PARENT_TAG: tracker.parent_id, TRIAL_NUMBER_TAG: str(again.number), REUSE_TAG: str(source.number)})
    assert tracker.close_ended(studies.ends_of_gone_drivers(study)) == [again.number]
    copies = [r for r in tracker.trial_runs() if r.data.tags[TRIAL_NUMBER_TAG] == str(again.number)]
    assert len(copies) == 1 and copies[0].info.status == "FINISHED" and copies[0].data.metrics["metric"] == 0.8


def test_a_driver_joining_a_study_at_its_target_waits_for_another_hosts_running_trial(tmp_path, monkeypatch):
    """The study already holds its target, one trial still RUNNING for a driver on another host
    (alive as far as its heartbeat says). A joining driver must go on to run (and wait), not
    return: if that driver has died, its trial is reclaimed after the grace and only a driver still
    asking can ask it again. With nothing running, it returns at once."""
    import types

    import autopeft.search as search

    study, _ = _new_study(tmp_path)
    monkeypatch.setattr(studies.socket, "gethostname", lambda: "thishost")
    other = "another-host:1234:1"  # owner_alive cannot tell: only the heartbeat can
    trial = studies.ask_within_target(study, 1, other)
    assert studies.target_reached(study.trials, 1) and studies.worth_waiting_for(study.trials)

    class Entered(Exception):
        pass

    def entered(*args, **kwargs):
        raise Entered

    monkeypatch.setattr(search, "connect", entered)
    monkeypatch.setattr("ray.is_initialized", lambda: False)
    settings = types.SimpleNamespace(num_samples=1, cpu_budget_s=None, full_trials=None, ray_address=None)
    prep = types.SimpleNamespace(settings=settings, task=types.SimpleNamespace(primary_metric="accuracy"))
    stores = types.SimpleNamespace(study=study, tracker=None)
    with pytest.raises(Entered):
        search.run_trials(prep, stores, show_progress=False)
    study.tell(trial, 0.5)
    assert not studies.worth_waiting_for(study.trials)
    search.run_trials(prep, stores, show_progress=False)  # at the target, nothing running: returns


@pytest.mark.parametrize("text, category", [
    # Ray 2.60's words, as its error files hold them.
    ("ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.\n\tclass_name: "
     "ImplicitFunc\nThe actor died because its node has died. Node Id: b617a4", NODE_LOST),
    ("The actor died unexpectedly before finishing this task.\nThe actor is dead because its worker process has "
     "died. Worker exit type: SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits", WORKER_LOST),
    ("The actor dac3 is unavailable: The actor is temporarily unavailable: RpcError: RPC error: Socket closed "
     "rpc_code: 14. The task may or may not have been executed on the actor.", "unreachable"),
    ("Traceback ...\nValueError: the broken test method cannot be built (injected failure)", "exception"),
])
def test_a_lost_trial_is_told_from_a_failing_one(text, category):
    from autopeft.schema import CPU_SECONDS_NOTE, failed_cpu_seconds
    from autopeft.tracking import classify_failure

    assert classify_failure(text)[0] == category
    assert failed_cpu_seconds(text) is None  # a lost process could not say what it spent
    noted = f"{text}\n{CPU_SECONDS_NOTE} 12.500"  # how Python prints an exception's note
    assert classify_failure(noted) == classify_failure(text) and failed_cpu_seconds(noted) == 12.5


def test_full_trials_count_what_each_trial_trained(tmp_path):
    # --full-trials under successive halving: a trial stopped at a rung counts that rung's share
    # of the full budget, a duplicate answered from the study nothing; the rule is the CPU budget's.
    from autopeft.reuse import REUSE_ATTR

    study, _ = _new_study(tmp_path)
    me = studies.this_process()

    def ask(full: float):
        return studies.ask_within_target(study, TARGET, me, full_trials=full)

    def finish(trial, fidelity: float, **attrs):
        for key, value in {studies.FIDELITY_ATTR: fidelity, **attrs}.items():
            trial.set_user_attr(key, value)
        study.tell(trial, 0.5)

    first, second = ask(2.0), ask(2.0)  # nothing finished yet: nothing to expect a cost from
    finish(first, 1.0)
    assert ask(2.0) == studies.WAIT, "1 trained + the running one and a new one at 1 each pass 2"
    finish(second, 1 / 9)
    assert studies.trainings_spent(study.trials) == pytest.approx(10 / 9)
    third = ask(2.0)  # 10/9 + one more at the mean, 5/9, fits in 2
    finish(third, 1 / 9, **{REUSE_ATTR: 1})  # a duplicate: trained nothing, and not in the mean
    assert studies.trainings_spent(study.trials) == pytest.approx(10 / 9)
    assert studies.expected_trials(study.trials, TARGET, full_trials=2.0) == 3 + 1  # 8/9 left at 5/9 each
    fourth = ask(2.0)
    fourth.suggest_int("x", 0, 10)
    study.tell(fourth, state=TrialState.FAIL)  # failed before its first rung: trained nothing counted
    assert studies.trainings_spent(study.trials) == pytest.approx(10 / 9)
    assert ask(1.6) == studies.FULL and ask(2.0) not in (studies.FULL, studies.WAIT)


def test_a_cpu_budget_sizes_the_samplers_start_up_phase(tmp_path):
    # Built for 200 trials, the GP sampler would draw 10 at random; a budget that buys 9 leaves it
    # samplers._startup(9) = 2, and a later, cheaper estimate does not send it back to random draws.
    from autopeft.samplers import SAMPLERS

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s",
                                directions=["maximize", "minimize"], sampler=SAMPLERS["gp"](0, 200))
    assert study.sampler.startup_trials == 10
    me = studies.this_process()
    trials = [studies.ask_within_target(study, 200, me, cpu_budget_s=90.0) for _ in range(2)]
    assert study.sampler.startup_trials == 10, "nothing finished: no cost to expect from yet"
    for t in trials:
        t.suggest_int("x", 0, 10)
        t.set_user_attr(studies.CPU_SECONDS_ATTR, 10.0)
        study.tell(t, [0.5, 1.0])
    assert studies.expected_trials(study.trials, 200, 90.0) == 2 + 7  # 70 CPU-s left at 10 each
    assert studies.expected_trials(study.trials, 200) == 200 and studies.expected_trials(study.trials, 5, 90.0) == 5
    third = studies.ask_within_target(study, 200, me, cpu_budget_s=90.0)
    assert study.sampler.startup_trials == 2
    studies.ask_within_target(study, 200, me, cpu_budget_s=10_000.0)
    assert study.sampler.startup_trials == 2, "only ever shortened"
    # Each trial records the start-up count it was asked under: readers tell random draws from
    # the model's proposals by it, not by the search's nominal trial target.
    recorded = [t.user_attrs[studies.STARTUP_ATTR] for t in study.get_trials(deepcopy=False)]
    assert recorded == [10, 10, 2, 2] and third.number == 2


def test_a_lost_warm_start_asked_again_is_still_the_warm_start(tmp_path):
    study, _ = _new_study(tmp_path)
    study.enqueue_trial({"x": 7}, user_attrs={studies.WARM_START_ATTR: 1})
    trial = studies.ask_within_target(study, 1, studies.this_process())
    assert trial.suggest_int("x", 0, 1000) == 7
    assert studies.record_failure(study, trial._trial_id, WORKER_LOST, 1)
    study.tell(trial, state=TrialState.FAIL)
    again = studies.ask_within_target(study, 1, studies.this_process())
    assert again.suggest_int("x", 0, 1000) == 7, "the lost configuration, asked again"
    assert again.user_attrs[studies.WARM_START_ATTR] == 1, "... still the hand-pick it was"
