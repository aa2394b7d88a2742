"""A soak: a 40-trial search on the tiny model, 2 trials at a time, with faults injected at random
through the plugin hook (``tests/plugins/chaos.py``: exceptions, divergence, memory-limit
breaches), trials' worker processes killed until one dies mid-trial, and the driver killed with
``kill -9`` and resumed.

Afterwards every trial is accounted for exactly once, Optuna and MLflow agree on each, the front
is over completed trials only, and the study holds exactly 40 counted trials. Prints the faults
injected, survived (recorded with their reason, the search went on) and lost (unaccounted for).
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from autopeft import study as studies
from autopeft.schema import ASKED_AGAIN_TAG, FAILURE_TAG, INTERRUPTED, TRIAL_NUMBER_TAG, WORKER_LOST

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
NAME, TRIALS = "soak", 40

SPACE = """
methods:
  seq_bn: {size: [4, 8, 16]}
  chaos: {optional: true, fault: [exception, diverge, memory]}
training:
  learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}
"""


def _driver(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
           "AUTOPEFT_PLUGINS": "tests.plugins.chaos",  # the driver and every trial load the faults
           "AUTOPEFT_HEARTBEAT_S": "1"}
    return subprocess.Popen([sys.executable, "-m", "autopeft.cli", "search", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=NAME, storage=storage).trials
    except Exception:  # not created yet
        return []


def _wait(storage: str, driver: subprocess.Popen, predicate, what: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not predicate(_trials(storage)):
        if driver.poll() is not None:
            raise AssertionError(f"the driver exited ({driver.returncode}) before {what}:\n{driver.stdout.read()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _finished(trials) -> int:
    return sum(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in studies.counted(trials))


def _trial_workers(driver: subprocess.Popen) -> list[psutil.Process]:
    # The driver started its own Ray: the trials' worker processes descend from it. Ray titles one
    # "ray::ImplicitFunc.train" while it runs its trial; a plain "ray::ImplicitFunc" is an actor not
    # (or no longer) running one, and killing it loses no trial.
    found = []
    for proc in psutil.Process(driver.pid).children(recursive=True):
        try:
            if "ImplicitFunc.train" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


def _recorded_as(storage: str) -> str:
    return str(Counter(t.user_attrs.get(studies.FAILURE_ATTR) or t.state.name for t in _trials(storage)))


def _worker_lost(trials) -> list:
    return [t for t in trials if t.user_attrs.get(studies.FAILURE_ATTR) == WORKER_LOST]


def test_soak_every_trial_accounted_for_once(tiny_bert, tiny_task, tmp_path):
    from tests.plugins.chaos import FAILURE_OF  # here: importing it registers its method

    space = tmp_path / "chaos.yaml"
    space.write_text(SPACE)
    storage = f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t0 = time.monotonic()
    driver = _driver("--name", NAME, "--model", tiny_bert, "--task", tiny_task, "--space", str(space),
                     "--num-samples", str(TRIALS), "--max-concurrent-trials", "2", "--sampler", "random",
                     "--seed", "0", "--train-examples", "96", "--eval-examples", "48", "--epochs", "2", "--scheduler", "fifo",
                     "--trial-memory-limit-mb", "150", "--retry-lost-trials", "1",
                     "--workdir", str(tmp_path / "runs"), "--tracking-uri", tracking)
    try:
        # One worker process killed (kill -9, as the OOM killer would) in the middle of a trial.
        _wait(storage, driver, lambda ts: _finished(ts) >= 6, "6 trials")
        kills, deadline = 0, time.monotonic() + 600
        while not _worker_lost(_trials(storage)):
            # Bounded: a search that ends (or runs on) without a kill landing mid-trial fails here, naming
            # what its trials were recorded as, rather than leaving this loop to wait on no workers forever.
            assert driver.poll() is None, f"the search ended before a kill landed mid-trial ({kills} kills): " \
                + _recorded_as(storage)
            assert time.monotonic() < deadline, f"no kill landed mid-trial in 600 s ({kills} kills): " \
                + _recorded_as(storage)
            workers = _trial_workers(driver)
            if not workers:
                time.sleep(0.3)
                continue
            workers[0].kill()  # by PID
            kills += 1
            # Its trial may have been ending anyway; then no trial is lost to it and another is killed. The
            # wait is long enough that a slow record cannot make a second lost trial; a kill of a worker
            # running its trial (see _trial_workers) rarely misses, so the search does not run out first.
            landed_by = time.monotonic() + 30
            while not _worker_lost(_trials(storage)) and time.monotonic() < landed_by:
                assert driver.poll() is None, driver.stdout.read()
                time.sleep(0.5)
        # The driver killed (kill -9, with the Ray processes it started) while trials run.
        _wait(storage, driver, lambda ts: _finished(ts) >= 20
              and any(t.state == TrialState.RUNNING for t in ts), "20 trials and one running")
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        killed_at = time.monotonic() - t0
        resumed = _driver("--resume", NAME, "--workdir", str(tmp_path / "runs"))
        out, _ = resumed.communicate(timeout=1200)
    finally:
        for proc in (driver, locals().get("resumed")):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert resumed.returncode == 0, out
    elapsed = time.monotonic() - t0

    trials = [t for t in optuna.load_study(study_name=NAME, storage=storage).trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], "nothing left running"
    assert len(studies.counted(trials)) == TRIALS, "exactly the target counts"

    from test_reliability import runs_of

    client, parents, runs = runs_of(tracking, NAME)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    by_number = {}
    for run in runs:
        number = int(run.data.tags[TRIAL_NUMBER_TAG])
        assert number not in by_number, f"trial {number} has two MLflow runs"
        by_number[number] = run
    assert set(by_number) == {t.number for t in trials}, "every Optuna trial has its MLflow run"

    injected, fired, outcome = Counter(), Counter(), Counter()
    for t in trials:
        run = by_number[t.number]
        failure = t.user_attrs.get(studies.FAILURE_ATTR)
        assert failure == run.data.tags.get(FAILURE_TAG), f"trial {t.number}: Optuna and MLflow disagree on why"
        fault = t.params.get("chaos/fault") if t.params.get("chaos/use") else None
        if fault:
            injected[fault] += 1
        if t.state == TrialState.COMPLETE:
            assert run.info.status == "FINISHED" and failure is None and fault is None
            assert run.data.metrics["metric"] == pytest.approx(t.values[0])
            outcome["complete"] += 1
            continue
        assert t.state == TrialState.FAIL and failure, f"trial {t.number} failed without a reason"
        outcome[failure] += 1
        fired[fault] += failure == FAILURE_OF.get(fault)  # else interrupted or lost before it fired
        if failure == INTERRUPTED:
            assert run.info.status == "KILLED" and t.user_attrs[studies.INTERRUPTED_ATTR] is True
            continue
        assert run.info.status == "FAILED"
        if failure == WORKER_LOST:
            assert t.user_attrs[studies.ASKED_AGAIN_ATTR] is True and run.data.tags[ASKED_AGAIN_TAG] == "true"
            again = [r for r in trials if r.number > t.number and r.params == t.params]
            assert again and again[0].user_attrs[studies.RETRIES_ATTR] == 1, "the lost configuration asked again"
        else:
            assert failure == FAILURE_OF[fault], f"trial {t.number}: fault {fault} reported as {failure}"
    assert outcome[WORKER_LOST] == 1 and outcome[INTERRUPTED] >= 1
    assert all(outcome[FAILURE_OF[f]] >= 1 for f in FAILURE_OF), f"every kind of fault was drawn: {outcome}"

    rows = list(csv.DictReader(io.StringIO(Path(client.download_artifacts(
        parents[0].info.run_id, "pareto/pareto_front.csv")).read_text())))
    front = [r for r in rows if r["pareto"] == "True"]
    assert front and all(r["status"] == "COMPLETE" for r in front), "the front is over completed trials only"

    # Survived: the trial is recorded, in both stores, with a reason, and the search went on.
    # Lost: a fault whose trial is not so recorded (the asserts above stop at the first one).
    print(f"\nsoak: {len(trials)} trials asked for a target of {TRIALS}, {outcome['complete']} completed, "
          f"in {elapsed:.0f} s (driver killed at {killed_at:.0f} s and resumed)")
    print(f"{'fault':<26}{'injected':>9}{'survived':>9}{'lost':>5}  reported as")
    for fault, failure in FAILURE_OF.items():
        print(f"{'chaos ' + fault:<26}{injected[fault]:>9}{injected[fault]:>9}{0:>5}  {failure} "
              f"({fired[fault]}; the rest interrupted or lost before firing)")
    # A kill that lands as its trial ends loses nothing; the loop above kills until one is mid-trial.
    print(f"{'worker process kill -9':<26}{outcome[WORKER_LOST]:>9}{outcome[WORKER_LOST]:>9}{0:>5}  {WORKER_LOST}, "
          f"asked again ({kills} kills, {kills - outcome[WORKER_LOST]} as a trial ended)")
    print(f"{'driver kill -9 + resume':<26}{1:>9}{1:>9}{0:>5}  {INTERRUPTED} ({outcome[INTERRUPTED]} running "
          f"trials, asked again)")
