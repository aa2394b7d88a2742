"""Successive halving of the promotion type (``--scheduler shp``) in a real search on the tiny
model: every trial stops at its rung with its training state kept, the stopped runs the ledger
promotes are resumed as new trials of the study, a resumed run that reaches the top is exactly the
run it would have been uninterrupted, and Optuna, MLflow and the budget count agree."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from autopeft import study as studies
from autopeft.config import PeftConfig, TrainBudget
from autopeft.fidelity import rung_fractions
from autopeft.report import report_data, write_report
from autopeft.results import hand_picks, load_search
from autopeft.run_states import RunStates
from autopeft.schema import trial_records
from autopeft.search import SearchSettings, run_search, states_dir
from autopeft.study import (CONTINUES_ATTR, FIDELITY_ATTR, RESUMES_RUNG_ATTR, RUNG_ATTR, STOPPED_ATTR, TRAINED_ATTR,
                            rung_values)
from autopeft.trial import TrialContext, run_config

pytestmark = pytest.mark.integration

# The learning rate is sampled, so the sampler never proposes a duplicate of the warm starts.
SPACE = """
methods:
  lora: {rank: [2, 4, 8, 16], targets: [query, value]}
training:
  learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}
warm_start:
  - {lora/rank: 2}
  - {lora/rank: 16}
  - {lora/rank: 8}
  - {lora/rank: 4}
"""
ETA = 2


@pytest.fixture(scope="module")
def promoted(tiny_bert, tiny_regression_task, tmp_path_factory, ray_for_searches):
    # eta 2 over 3 rungs (1/4, 1/2, 1 of 18 steps), one trial at a time, the warm starts ranked
    # like any trial (--halve-warm-starts; by default each goes to the top first, tested below):
    # the four warm starts stop at rung 0; then two of them (floor(4 / 2)) are resumed to rung 1, one of those to the top,
    # and the eighth trial is a new one.
    ray_for_searches()
    root = tmp_path_factory.mktemp("shp")
    space = root / "lora.yaml"
    space.write_text(SPACE)
    settings = SearchSettings(
        name="promoted", model=tiny_bert, task=tiny_regression_task, space=str(space), num_samples=8,
        max_concurrent_trials=1, budget=TrainBudget(train_examples=96, eval_examples=48, epochs=3, batch_size=16),
        workdir=str(root / "runs"), tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        scheduler="shp", rungs=3, reduction_factor=ETA, rung_confidence=0.0, halve_warm_starts=True)
    return settings, run_search(settings, show_progress=False)


def _trials(settings):
    return sorted(optuna.load_study(study_name=settings.name, storage=settings.storage_url()).trials,
                  key=lambda t: t.number)


def test_stopped_runs_are_resumed_a_1_over_eta_share_at_a_time(promoted):
    settings, _ = promoted
    trials = _trials(settings)
    assert len(trials) == 8 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    resumed = [t for t in trials if CONTINUES_ATTR in t.user_attrs]
    assert [t.number for t in resumed] == [4, 5, 6], "resumes come before new trials"
    assert [t.user_attrs[RESUMES_RUNG_ATTR] for t in resumed] == [0, 0, 1]
    # Every run's rungs, by its first trial: 5 runs reached rung 0, floor(4 / 2) = 2 went on from
    # the warm starts' rung 0, and floor(2 / 2) = 1 of those to the top.
    at = {}
    for run, rung, _ in rung_values(trials):
        at.setdefault(rung, set()).add(run)
    assert len(at[0]) == 5 and len(at[1]) == 2 and at[1] <= {0, 1, 2, 3}
    top = resumed[-1]
    assert top.user_attrs[CONTINUES_ATTR] in at[1] and top.user_attrs[RUNG_ATTR] == 2
    assert STOPPED_ATTR not in top.user_attrs and top.user_attrs[FIDELITY_ATTR] == 1.0
    assert all(t.user_attrs[STOPPED_ATTR] == t.user_attrs[RUNG_ATTR] for t in trials if t is not top)
    # The resumed runs are asked with their first trial's configuration.
    assert all(t.params == trials[t.user_attrs[CONTINUES_ATTR]].params for t in resumed)


def test_full_trials_count_what_each_trial_trained_itself(promoted):
    settings, _ = promoted
    trials = _trials(settings)
    fractions = rung_fractions(3, ETA)
    for t in trials:
        if CONTINUES_ATTR in t.user_attrs:
            assert t.user_attrs[TRAINED_ATTR] == pytest.approx(
                t.user_attrs[FIDELITY_ATTR] - fractions[t.user_attrs[RESUMES_RUNG_ATTR]])
    # 5 runs' rung 0 (1/4 each), 2 resumes to rung 1 (+1/4 each), 1 to the top (+1/2): 2.25 full
    # trials, where counting each trial's fidelity would say 3.
    assert studies.trainings_spent(trials) == pytest.approx(5 / 4 + 2 / 4 + 1 / 2)


def test_a_resumed_run_at_the_top_is_the_run_without_rungs(promoted, tiny_bert, tiny_regression_task):
    settings, result = promoted
    top = next(r for r in result.trials if r["fidelity"] == 1.0)
    client = MlflowClient(result.tracking_uri)
    peft = PeftConfig.from_json(open(client.download_artifacts(top.run_id, "peft_config.json")).read())
    params = client.get_run(top.run_id).data.params
    assert params["resume_rung"] == "1" and params["resume_of"] in {"0", "1", "2", "3"}
    budget = settings.budget.replace(learning_rate=float(params["train/learning_rate"]))
    plain = run_config(TrialContext(tiny_bert, tiny_regression_task, budget), peft)
    assert plain["metric"] == pytest.approx(top["metric"], abs=1e-5)
    assert plain["steps"] == top["steps"] == 18


def test_mlflow_agrees_and_the_front_is_the_top_rung(promoted):
    settings, result = promoted
    by_number = {t.number: t for t in _trials(settings)}
    record = load_search(settings.name, result.tracking_uri)
    assert len(record.trials) == 8
    for r in record.trials:
        t = by_number[r.trial]
        assert [r["metric"], r["trainable_params"]] == pytest.approx(t.values)
        assert (r.status == "STOPPED") == (STOPPED_ATTR in t.user_attrs)
    assert [r.trial for r in record.front] == [6]


def test_a_paused_trial_names_the_trial_that_went_on_and_is_not_counted_as_stopped(promoted, tmp_path):
    settings, result = promoted
    record = load_search(settings.name, result.tracking_uri)
    by_number = {r.trial: r for r in record.trials}
    for t in _trials(settings):
        if CONTINUES_ATTR not in t.user_attrs:
            continue
        r = by_number[t.number]
        assert (r.resume_of, r.resume_rung) == (t.user_attrs[CONTINUES_ATTR], t.user_attrs[RESUMES_RUNG_ATTR])
        # The trial it went on from: the same run's trial that stopped at the rung it resumed from.
        before = [p for p in record.trials if p.resumed_by == t.number]
        assert len(before) == 1 and before[0].paused and before[0].values["rung"] == r.resume_rung
        assert (before[0].trial if before[0].resume_of is None else before[0].resume_of) == r.resume_of
    # Paused: the two warm starts resumed from rung 0 and the resume taken on to the top. Stopped
    # for good: the runs whose states still wait (two warm starts, one resume, the eighth trial).
    assert sum(r.paused for r in record.trials) == 3
    stopped = [r.trial for r in record.trials if r.stopped_early]
    assert len(stopped) == len(RunStates(states_dir(settings)).waiting()) == 4
    assert [t["trial"] for t in report_data(record.trials, record.objectives)["stopped"]] == stopped
    top = next(r for r in record.trials if r.status == "COMPLETE" and r.resume_of is not None)
    html = write_report(record.trials, record.objectives, record.metric_name, tmp_path / "r.html").read_text()
    assert f"went on from rung 1 of trial {top.resume_of}'s run" in html
    # The four warm starts are trials 0-3, in the space's order; a trial going on with one's run is
    # that warm start too, so the hand-pick taken to the top is read at the top and the others,
    # stopped for good at a rung, have no full-budget result.
    assert [r.warm_start for r in record.trials if r.resume_of is None] == [0, 1, 2, 3, None]
    assert all(r.warm_start == by_number[r.resume_of].warm_start for r in record.trials if r.resume_of is not None)
    picks = hand_picks(record.trials, record.directions)
    assert [(hp.trial.trial, hp.measured) for hp in picks] == [
        (top.trial, True) if i == top.warm_start else (hp.trial.trial, False) for i, hp in enumerate(picks)]
    assert "Hand-picked baselines" in html and "no full-budget result (stopped early by successive halving at rung " in html
    metrics = MlflowClient(result.tracking_uri).get_run(record.parent_run_id).data.metrics
    assert (metrics["trials_stopped"], metrics["trials_paused"]) == (4, 3)
    # The CLI's summary after the search (a resumed search already at its target only reports).
    from typer.testing import CliRunner

    from autopeft.cli import app

    out = CliRunner().invoke(app, ["search", "--resume", settings.name, "--workdir", settings.workdir])
    assert out.exit_code == 0, out.output
    said = " ".join(out.output.split())
    assert "4 stopped early by successive halving, 3 paused at a rung and resumed by a later trial" in said
    assert "note: rung 0 (1/4 of the budget): 3 of 5 trials scored no better than chance there" in said
    assert f"hand-pick (warm start {top.warm_start}) trial {top.trial}, " in said


def _run(number, status="FINISHED", rung=None, stopped=False, resume=None):
    from types import SimpleNamespace

    tags = {"autopeft.trial_number": str(number), **({"autopeft.stopped_at_rung": str(rung)} if stopped else {})}
    params = {} if resume is None else {"resume_of": str(resume[0]), "resume_rung": str(resume[1])}
    metrics = {"metric": 0.5, "trainable_params": 10.0, **({"rung": float(rung)} if rung is not None else {})}
    return SimpleNamespace(info=SimpleNamespace(run_id=f"r{number}", status=status),
                           data=SimpleNamespace(tags=tags, params=params, metrics=metrics))


def test_a_resume_asked_again_after_an_interruption_is_the_one_that_went_on():
    # Run 0 stopped at rung 0; trial 2 resumed it and was interrupted; trial 3, asked again, went on
    # and stopped at rung 1. Run 1 stopped at rung 0 and was never resumed.
    records = trial_records([_run(3, rung=1, stopped=True, resume=(0, 0)), _run(0, rung=0, stopped=True),
                             _run(1, rung=0, stopped=True), _run(2, status="KILLED", resume=(0, 0))])
    assert [r.trial for r in records] == [0, 1, 2, 3]
    assert [r.resumed_by for r in records] == [3, None, None, None]
    assert [r.status for r in records] == ["STOPPED", "STOPPED", "INTERRUPTED", "STOPPED"]
    assert [r.trial for r in records if r.stopped_early] == [1, 3]


def test_the_states_left_are_the_runs_still_waiting(promoted):
    settings, _ = promoted
    folder = Path(states_dir(settings))
    assert not list(folder.glob("*.claimed.pt")), "a resumed trial releases the state it claimed"
    # Waiting: the runs stopped at their highest rung and not resumed (3 at rung 0, 1 at rung 1).
    assert len(RunStates(folder).waiting()) == 4


def test_by_default_each_warm_start_is_resumed_to_the_top_before_a_new_trial(tiny_bert, tiny_regression_task,
                                                                             tmp_path, ray_for_searches):
    # Two warm starts, eta 2, one trial at a time: both run rung 0 (enqueued, asked first); then the
    # first is resumed to rung 1 and to the top, then the second, and only then is a new trial asked,
    # whatever they scored.
    ray_for_searches()
    space = tmp_path / "lora.yaml"
    space.write_text(SPACE.split("warm_start:")[0] + "warm_start:\n  - {lora/rank: 16}\n  - {lora/rank: 2}\n")
    settings = SearchSettings(
        name="references", model=tiny_bert, task=tiny_regression_task, space=str(space), num_samples=7,
        max_concurrent_trials=1, budget=TrainBudget(train_examples=96, eval_examples=48, epochs=3, batch_size=16),
        workdir=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        scheduler="shp", rungs=3, reduction_factor=ETA, rung_confidence=0.0)
    result = run_search(settings, show_progress=False)
    trials = _trials(settings)
    assert [(t.user_attrs.get(CONTINUES_ATTR), t.user_attrs.get(RESUMES_RUNG_ATTR), t.user_attrs[RUNG_ATTR])
            for t in trials] == [(None, None, 0), (None, None, 0), (0, 0, 1), (0, 1, 2), (1, 0, 1), (1, 1, 2),
                                 (None, None, 0)]
    record = load_search(settings.name, result.tracking_uri)
    picks = hand_picks(record.trials, record.directions)
    assert [(hp.trial.trial, hp.measured) for hp in picks] == [(3, True), (5, True)]


def _running_resume(storage: str, name: str) -> int | None:
    """The number of a RUNNING trial that resumes a stopped run, read through a read-only
    connection (a poller must not create the database while the driver does)."""
    import sqlite3

    path = storage[len("sqlite:///"):]
    if not Path(path).exists():
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute(
                "SELECT t.number FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                "WHERE s.study_name = ? AND t.state = 'RUNNING' AND a.key = ?", (name, CONTINUES_ATTR)).fetchone()
    except sqlite3.OperationalError:  # tables not created yet
        return None
    return row[0] if row else None


@pytest.mark.slow
def test_kill_9_while_a_run_is_resumed_then_resume(tiny_bert, tiny_regression_task, tmp_path):
    import os
    import signal
    import time

    from tests.test_reliability import _cli, runs_of

    # 200 epochs of 6 steps: a resume from rung 0 to rung 1 (eta 2) trains 300 steps, seconds long.
    space = tmp_path / "lora.yaml"
    space.write_text(SPACE)
    storage, uri = f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = _cli("--scheduler", "shp", "--reduction-factor", "2", "--rung-confidence", "0", "--name", "killed",
                "--model", tiny_bert, "--task", tiny_regression_task, "--space", str(space), "--num-samples", "7",
                "--max-concurrent-trials", "1", "--train-examples", "96", "--eval-examples", "48", "--epochs", "200",
                "--batch-size", "16", "--workdir", str(tmp_path / "runs"), "--tracking-uri", uri)
    deadline, number = time.time() + 240, None
    while number is None and time.time() < deadline and proc.poll() is None:
        number = _running_resume(storage, "killed")
        time.sleep(0.2)
    assert number is not None, "no resumed run was ever caught running"
    time.sleep(0.5)  # into its training
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {t.number: t for t in optuna.load_study(study_name="killed", storage=storage).trials}
    assert before[number].state == optuna.trial.TrialState.RUNNING
    root = before[number].user_attrs[CONTINUES_ATTR]
    states = RunStates(tmp_path / "runs" / "states" / "killed")
    assert (states.folder / f"{root}.claimed.pt").exists(), "the claimed state outlives the killed driver"

    resumed = _cli("--resume", "killed", "--workdir", str(tmp_path / "runs"))
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    trials = sorted(optuna.load_study(study_name="killed", storage=storage).trials, key=lambda t: t.number)
    assert trials[number].user_attrs.get(studies.INTERRUPTED_ATTR) is True
    again = [t for t in trials if t.number > number and t.user_attrs.get(CONTINUES_ATTR) == root
             and t.user_attrs.get(RESUMES_RUNG_ATTR) == before[number].user_attrs[RESUMES_RUNG_ATTR]]
    assert again and again[0].state == optuna.trial.TrialState.COMPLETE, "asked again, as a resume of the same run"
    # It went on from the kept state: it trained only its own share, and reached the next rung.
    assert again[0].user_attrs[TRAINED_ATTR] == pytest.approx(0.25) and again[0].user_attrs[RUNG_ATTR] == 1
    for n, t in before.items():  # nothing finished was lost or rerun
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert trials[n].state == optuna.trial.TrialState.COMPLETE and trials[n].values == t.values
    assert not (states.folder / f"{root}.claimed.pt").exists()
    _, _, runs = runs_of(uri, "killed")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert sum(r.info.status == "FINISHED" for r in runs) == len(studies.counted(trials))


def test_a_kept_state_is_claimed_once(tmp_path):
    states = RunStates(tmp_path / "states")
    assert states.waiting() == set(), "no folder yet: nothing waits"
    states.save(3, {"step": 2})
    states.save(5, {"step": 2})
    assert states.waiting() == {"3", "5"}
    assert states.claim(3) and not states.claim(3), "a second driver finds it taken"
    assert states.waiting() == {"5"} and states.claimed() == {"3"} and states.load_claimed(3) == {"step": 2}
    states.save(3, {"step": 6})  # the resumed trial stopped at the next rung
    states.release(3)
    assert states.waiting() == {"3", "5"} and not states.claimed()
