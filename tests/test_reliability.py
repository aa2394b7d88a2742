"""Reliability, shown by breaking things for real: failing trials inside a search, kill -9 and
resume, Ctrl-C, two processes on one study, same-seed determinism."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from autopeft.config import TrainBudget
from autopeft.search import SearchSettings, run_search
from autopeft.study import INTERRUPTED_ATTR, RUNG_ATTR, STOPPED_ATTR, counted, target_reached, trainings_spent
from autopeft.schema import FAILURE_TAG, KIND_TAG, SEARCH_TAG, STOPPED_TAG

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]

FAILING_SPACE = """
methods:
  seq_bn: {size: 8}
  broken: {optional: true}
training:
  learning_rate: [5.0e-3, 1.0e+6]
  batch_size: [16, 512]
warm_start:
  - {broken/use: false, train/learning_rate: 5.0e-3, train/batch_size: 16}   # fine
  - {broken/use: false, train/learning_rate: 1.0e+6, train/batch_size: 16}   # diverges
  - {broken/use: true, train/learning_rate: 5.0e-3, train/batch_size: 16}    # builder raises
  - {broken/use: false, train/learning_rate: 5.0e-3, train/batch_size: 512}  # passes the memory limit
"""


def runs_of(uri: str, name: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("autopeft")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{SEARCH_TAG}` = '{name}'")
    return client, [r for r in runs if r.data.tags[KIND_TAG] == "search"], [r for r in runs if r.data.tags[KIND_TAG] == "trial"]


def test_failed_trials_are_recorded_and_the_search_goes_on(tiny_bert, data_dir, tmp_path, monkeypatch, ray_stopped):
    import tests.plugins.broken_method  # noqa: F401  (registers "broken" in this driver)

    monkeypatch.setenv("AUTOPEFT_PLUGINS", "tests.plugins.broken_method")  # ... and in every trial
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    space = tmp_path / "failing.yaml"
    space.write_text(FAILING_SPACE)
    settings = SearchSettings(
        name="faults", model=tiny_bert, task="sst2", space=str(space), num_samples=4, max_concurrent_trials=2,
        scheduler="fifo",
        budget=TrainBudget(train_examples=512, eval_examples=32, epochs=1), data_dir=str(data_dir),
        workdir=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        trial_memory_limit_mb=150)
    result = run_search(settings, show_progress=False)

    by_failure = {r["failure"]: r for r in result.trials}
    assert [r["status"] for r in result.trials].count("COMPLETE") == 1
    assert set(by_failure) == {None, "diverged", "exception", "out_of_memory"}
    assert "training diverged" in by_failure["diverged"]["error"]
    assert "injected failure" in by_failure["exception"]["error"]
    assert "per-trial limit of 150 MB" in by_failure["out_of_memory"]["error"]
    assert [r["trial"] for r in result.front] == [by_failure[None]["trial"]], "failed trials never on the front"

    client, parents, trials = runs_of(result.tracking_uri, "faults")
    assert parents[0].data.metrics["trials_failed"] == 3 and parents[0].data.metrics["trials_completed"] == 1
    for run in trials:
        if run.data.tags.get(FAILURE_TAG):
            assert run.info.status == "FAILED"
            tb = Path(client.download_artifacts(run.info.run_id, "traceback.txt")).read_text()
            assert 'File "' in tb and "autopeft" in tb and "\x1b[" not in tb
    study = optuna.load_study(study_name="faults", storage=settings.storage_url())
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL", "FAIL", "FAIL"]
    # What a failed trial spent before failing is charged like a finished one's (--cpu-budget-s):
    # in MLflow, in the study, and in the parent's sum.
    for category in ("diverged", "out_of_memory"):  # both trained before they failed
        assert by_failure[category]["cpu_seconds"] > 0
    assert by_failure["exception"]["cpu_seconds"] is not None
    from autopeft.study import CPU_SECONDS_ATTR

    assert all(CPU_SECONDS_ATTR in t.user_attrs for t in study.trials)
    assert parents[0].data.metrics["cpu_seconds"] == pytest.approx(sum(r["cpu_seconds"] for r in result.trials))


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "autopeft.cli", "search", *args], env=env, cwd=kw.get("cwd"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _states(study_name: str, storage: str) -> list[str]:
    """Trial states read through a read-only connection: a poller must never create the database
    (opening it through Optuna would create tables while the driver does the same)."""
    import sqlite3

    path = storage[len("sqlite:///"):]
    if not Path(path).exists():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute("SELECT t.state FROM trials t JOIN studies s ON s.study_id = t.study_id "
                              "WHERE s.study_name = ?", (study_name,)).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    return [r[0] for r in rows]


def _wait_for(study_name: str, storage: str, predicate, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate(_states(study_name, storage)):
            return
        time.sleep(0.5)
    raise AssertionError(f"study {study_name} never reached the awaited state: {_states(study_name, storage)}")


def _wait_for_running_run(uri: str, name: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if any(r.info.status == "RUNNING" for r in runs_of(uri, name)[2]):
                return
        except Exception:  # store not created yet
            pass
        time.sleep(0.3)
    raise AssertionError("no trial run started in MLflow")


def _wait_mid_trial(study_name: str, storage: str, uri: str, predicate, timeout: float = 240) -> None:
    """Until the study and MLflow both show a trial running, and the study still does once MLflow
    has been read: reading MLflow takes long enough for a short trial to end and the next one not
    to have started, and a kill then finds nothing running."""
    deadline = time.time() + timeout
    while True:
        _wait_for(study_name, storage, predicate, timeout=max(deadline - time.time(), 1))
        _wait_for_running_run(uri, study_name, timeout=max(deadline - time.time(), 1))
        if predicate(_states(study_name, storage)) or time.time() > deadline:
            return


def _search_args(tiny_bert, tiny_task, root: Path, name: str, samples: int = 4, scheduler: str = "fifo",
                 target: tuple[str, ...] = ()) -> list[str]:
    return ["--scheduler", scheduler, "--name", name, "--model", tiny_bert, "--task", tiny_task, "--space", "hybrid",
            *(target or ("--num-samples", str(samples))), "--max-concurrent-trials", "1", "--train-examples", "96",
            "--eval-examples", "48", "--epochs", "3", "--workdir", str(root / "runs"),
            "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}"]


FULL_TRIALS = 3.0  # more than the warm start (a full trial) plus the mean: the search goes on past it


# fifo in the slow set (.ci/run runs it): the default scheduler's case covers the same resume path.
@pytest.mark.parametrize("scheduler", [pytest.param("fifo", marks=pytest.mark.slow), "sh"])
def test_kill_9_then_resume(tiny_bert, tiny_task, tmp_path, scheduler):
    """fifo sized by a count; sh as the default search is, by --full-trials."""
    storage = f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}"
    target = ("--full-trials", str(FULL_TRIALS)) if scheduler == "sh" else ()
    proc = _cli(*_search_args(tiny_bert, tiny_task, tmp_path, "killed", scheduler=scheduler, target=target))
    _wait_mid_trial("killed", storage, f"sqlite:///{tmp_path / 'mlflow.db'}",
                    lambda states: "COMPLETE" in states and "RUNNING" in states)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.wait()
    before = optuna.load_study(study_name="killed", storage=storage).trials
    done_before = {t.number: t.params for t in before if t.state == TrialState.COMPLETE}
    running_before = [t.number for t in before if t.state == TrialState.RUNNING]
    assert done_before and running_before

    resumed = _cli("--resume", "killed", "--workdir", str(tmp_path / "runs"))
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out

    trials = optuna.load_study(study_name="killed", storage=storage).trials
    if scheduler == "fifo":
        assert len([t for t in counted(trials)]) == 4, "the final trial count equals what was asked"
    else:  # no room for another trial at the finished ones' mean, and no more than one trial's worth over
        assert target_reached(trials, 1000, full_trials=FULL_TRIALS)
        assert FULL_TRIALS - 1 < trainings_spent(trials) <= FULL_TRIALS + 1
    for number, params in done_before.items():  # kept, not rerun
        assert trials[number].state == TrialState.COMPLETE and trials[number].params == params
    assert all(len([t for t in trials if t.params == p and t.state == TrialState.COMPLETE]) == 1
               for p in done_before.values())
    for number in running_before:  # marked, and asked again
        assert trials[number].user_attrs.get(INTERRUPTED_ATTR) is True
        assert any(t.number > number and t.params == trials[number].params for t in trials)
    _, parents, runs = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", "killed")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", "one parent run, reused"
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert killed and {int(r.data.tags["autopeft.trial_number"]) for r in killed} <= set(running_before)
    assert all(r.data.tags[FAILURE_TAG] == "interrupted" for r in killed)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert sum(r.info.status == "FINISHED" for r in runs) == len(counted(trials))
    if scheduler == "sh":  # every finished trial says how far it got, in Optuna and in MLflow
        finished = {int(r.data.tags["autopeft.trial_number"]): r for r in runs if r.info.status == "FINISHED"}
        for number, run in finished.items():
            rung = trials[number].user_attrs[RUNG_ATTR]
            assert run.data.tags["autopeft.rung"] == str(rung)
            assert (STOPPED_TAG in run.data.tags) == (rung < 2) == (STOPPED_ATTR in trials[number].user_attrs)


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tiny_bert, tiny_task, tmp_path):
    storage = f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}"
    proc = _cli(*_search_args(tiny_bert, tiny_task, tmp_path, "stopped"))
    _wait_mid_trial("stopped", storage, f"sqlite:///{tmp_path / 'mlflow.db'}", lambda states: "RUNNING" in states)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "autopeft search --resume stopped" in out
    trials = optuna.load_study(study_name="stopped", storage=storage).trials
    assert not [t for t in trials if t.state == TrialState.RUNNING], "nothing left running"
    _, parents, runs = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", "stopped")
    assert parents[0].info.status == "KILLED"
    assert not [r for r in runs if r.info.status == "RUNNING"]


# In the slow set (.ci/run runs it) to keep the default suite inside its 10 minutes: the same
# sharing is covered in-process by test_liveness's racing drivers, in seconds.
@pytest.mark.slow
def test_two_processes_share_one_study(tiny_bert, tiny_task, tmp_path):
    args = _search_args(tiny_bert, tiny_task, tmp_path, "shared", samples=4)
    procs = [_cli(*args), _cli(*args)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trials = optuna.load_study(study_name="shared", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}").trials
    numbers = [t.number for t in counted(trials)]
    assert len(numbers) == len(set(numbers)) == 4, "the ask at the target is atomic: never one extra"
    owners = {t.user_attrs["autopeft_owner"] for t in counted(trials)}
    assert len(owners) == 2, "both processes ran trials"
    client, parents, runs = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", "shared")
    assert len(parents) == 1, "one parent run for the shared search"
    recorded = sorted(int(r.data.tags["autopeft.trial_number"]) for r in runs)
    assert recorded == sorted(numbers), "every trial recorded once"
    rows = Path(client.download_artifacts(parents[0].info.run_id, "pareto/pareto_front.csv")).read_text().splitlines()
    assert len(rows) - 1 == len(numbers), "the front is computed over the union"


def test_same_seed_same_configurations_and_metrics(tiny_bert, tiny_task, tmp_path, ray_for_searches):
    ray_for_searches()
    def run(name: str):
        settings = SearchSettings(
            name=name, model=tiny_bert, task=tiny_task, space="hybrid", num_samples=3, max_concurrent_trials=1,
            scheduler="fifo",
            budget=TrainBudget(train_examples=48, eval_examples=32), seed=5, workdir=str(tmp_path / name),
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        return [(r["peft"], r["metric"], r["train_loss"]) for r in run_search(settings, show_progress=False).trials]

    assert run("seeded-a") == run("seeded-b")


@pytest.mark.slow
def test_a_driver_on_another_host_dies_and_its_trials_are_reclaimed_after_the_grace_period(
        tiny_bert, tiny_task, tmp_path, monkeypatch):
    import types

    from autopeft import study as studies
    from autopeft.heartbeat import GRACE_BEATS, INTERVAL_ENV
    from autopeft.search import SearchSettings

    monkeypatch.setenv(INTERVAL_ENV, "1")  # grace period: 6 s
    storage = f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}"
    env_driver = {**os.environ, "PYTHONPATH": str(REPO), INTERVAL_ENV: "1"}
    proc = subprocess.Popen([sys.executable, "-m", "autopeft.cli", "search",
                             *_search_args(tiny_bert, tiny_task, tmp_path, "elsewhere", samples=3)],
                            env=env_driver, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    _wait_mid_trial("elsewhere", storage, f"sqlite:///{tmp_path / 'mlflow.db'}",
                    lambda states: "COMPLETE" in states and "RUNNING" in states)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = time.monotonic()

    # From here on this process is "another host": the dead driver's pid cannot be checked from
    # here, only its heartbeat can.
    monkeypatch.setattr(studies, "socket", types.SimpleNamespace(gethostname=lambda: "another-host"))
    study = optuna.load_study(study_name="elsewhere", storage=storage)
    running = [t.number for t in study.trials if t.state == TrialState.RUNNING]
    assert running and studies.reconcile(study) == [], "within the grace period nobody can tell it dead"

    settings = SearchSettings.from_dict(studies.stored_settings("elsewhere", storage))
    run_search(settings, show_progress=False)  # joins: waits at the target until the dead trials are reclaimed
    assert time.monotonic() - killed_at >= GRACE_BEATS * 1

    trials = optuna.load_study(study_name="elsewhere", storage=storage).trials
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len(counted(trials)) == 3
    for number in running:
        assert trials[number].user_attrs.get(INTERRUPTED_ATTR) is True
        assert any(t.number > number and t.params == trials[number].params for t in counted(trials))
    _, parents, runs = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", "elsewhere")
    assert parents[0].info.status == "FINISHED" and not [r for r in runs if r.info.status == "RUNNING"]
    assert {int(r.data.tags["autopeft.trial_number"]) for r in runs if r.info.status == "KILLED"} == set(running)
