"""A real 3-trial search (Ray Tune + Optuna SQLite + MLflow SQLite) on the tiny model, with the
tracking store read back afterwards."""

from __future__ import annotations

import csv
import io

import optuna
import pytest
from mlflow.tracking import MlflowClient

from autopeft.config import PeftConfig, TrainBudget
from autopeft.pareto import pareto_front
from autopeft.search import SearchSettings, run_search
from autopeft.study import WARM_START_ATTR
from autopeft.schema import EVAL_SPLIT_TAG, KIND_TAG, PARETO_CSV, PARETO_PNG, SEARCH_TAG

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def finished_search(tiny_bert, tiny_task, tmp_path_factory, ray_for_searches):
    ray_for_searches()
    root = tmp_path_factory.mktemp("search")
    settings = SearchSettings(
        name="tiny-search", model=tiny_bert, task=tiny_task, space="hybrid", num_samples=3, scheduler="fifo",
        # Scored on 24 rows held out of the tiny task's 96 training rows (tests/test_after_search.py's
        # search covers the default, the dev split).
        max_concurrent_trials=2, budget=TrainBudget(train_examples=32, eval_examples=32, batch_size=16,
                                                    select_on="holdout", holdout_size=24),
        workdir=str(root / "runs"), tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        objectives=("metric", "trainable_params", "peak_memory_mb"))
    result = run_search(settings, show_progress=False)
    return settings, result


def test_search_result(finished_search):
    settings, result = finished_search
    assert len(result.trials) == 3
    assert all(r["status"] == "COMPLETE" for r in result.trials)
    assert result.front, "a finished search has a non-empty Pareto front"
    points = [[r["metric"], r["trainable_params"], r["peak_memory_mb"]] for r in result.trials]
    expected = {i for i in pareto_front(points, ["max", "min", "min"])}
    assert {i for i, r in enumerate(result.trials) if r["pareto"]} == expected


def test_mlflow_store_holds_parent_trials_and_front(finished_search):
    settings, result = finished_search
    client = MlflowClient(result.tracking_uri)
    exp = client.get_experiment_by_name("autopeft")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{SEARCH_TAG}` = 'tiny-search'")
    parents = [r for r in runs if r.data.tags[KIND_TAG] == "search"]
    trials = [r for r in runs if r.data.tags[KIND_TAG] == "trial"]
    assert len(parents) == 1 and len(trials) == 3
    parent = parents[0]
    assert parent.info.run_id == result.parent_run_id and parent.info.status == "FINISHED"
    assert parent.data.params["task"] == "tiny" and parent.data.params["space"] == "hybrid"
    # Which split the metrics are on: the search's setting as params and a tag, each trial's as a tag.
    assert parent.data.params["budget/select_on"] == "holdout" and parent.data.params["budget/holdout_size"] == "24"
    assert parent.data.tags[EVAL_SPLIT_TAG] == "holdout"
    assert all(run.data.tags[EVAL_SPLIT_TAG] == "holdout" for run in trials)
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
        for key in ("metric", "accuracy", "trainable_params", "trainable_percent", "peak_memory_mb",
                    "train_seconds", "eval_seconds"):
            assert key in run.data.metrics, key
        assert any(k.endswith("/use") for k in run.data.params), "sampled parameters are logged as params"
        config = client.download_artifacts(run.info.run_id, "peft_config.json")
        peft = PeftConfig.from_json(open(config).read())
        assert run.data.tags["autopeft.peft"] == peft.describe()
        assert run.data.tags.get("autopeft.node_id")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert {PARETO_CSV, PARETO_PNG} <= artifacts
    rows = list(csv.DictReader(io.StringIO(open(client.download_artifacts(parent.info.run_id, PARETO_CSV)).read())))
    assert len(rows) == 3
    front_ids = {r["run_id"] for r in rows if r["pareto"] == "True"}
    assert front_ids == {r["run_id"] for r in result.front}
    png = open(client.download_artifacts(parent.info.run_id, PARETO_PNG), "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert parent.data.metrics["trials_completed"] == 3


def test_optuna_study_is_persistent(finished_search):
    settings, result = finished_search
    study = optuna.load_study(study_name="tiny-search", storage=settings.storage_url())
    assert len(study.directions) == 3
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    # The warm start ran first: the hybrid space's serial-adapter baseline.
    assert complete[0].params["seq_bn/use"] is True and complete[0].params["prompt/use"] is False
    # ... recorded as the space's warm start 0 in the study, in MLflow and in the trial records.
    assert [t.user_attrs.get(WARM_START_ATTR) for t in complete] == [0, None, None]
    client = MlflowClient(result.tracking_uri)
    runs = {int(r.data.tags["autopeft.trial_number"]): r
            for r in client.search_runs([client.get_experiment_by_name("autopeft").experiment_id],
                                        filter_string=f"tags.`{KIND_TAG}` = 'trial'")}
    assert [runs[n].data.params.get("warm_start") for n in sorted(runs)] == ["0", None, None]
    assert [r.warm_start for r in result.trials] == [0, None, None]
    by_metric = sorted(t.values[0] for t in complete)
    assert by_metric == sorted(r["metric"] for r in result.trials)


def test_resume_and_export_keep_the_holdout(finished_search):
    from autopeft.results import load_search, to_export
    from autopeft.study import stored_settings

    settings, result = finished_search
    resumed = SearchSettings.from_dict(stored_settings("tiny-search", settings.storage_url()))
    assert resumed.budget == settings.budget  # --resume scores on the same held-out rows
    exported = to_export(load_search("tiny-search", result.tracking_uri), result.front[0])
    assert (exported.budget.select_on, exported.budget.holdout_size, exported.budget.holdout_seed) == ("holdout", 24, 0)


def test_a_cpu_budget_ends_the_search_before_its_trial_count(tiny_bert, tiny_task, tmp_path, ray_for_searches):
    ray_for_searches()
    from autopeft.schema import cpu_seconds_spent
    from autopeft.study import CPU_SECONDS_ATTR, stored_settings

    settings = SearchSettings(
        name="budgeted", model=tiny_bert, task=tiny_task, space="small", num_samples=2, max_concurrent_trials=1,
        scheduler="fifo",
        budget=TrainBudget(train_examples=32, eval_examples=32, batch_size=16), workdir=str(tmp_path / "runs"),
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    first = run_search(settings, show_progress=False)
    costs = [r["cpu_seconds"] for r in first.trials]
    assert len(costs) == 2 and all(c > 0 for c in costs)
    study = optuna.load_study(study_name="budgeted", storage=settings.storage_url())
    assert sorted(t.user_attrs[CPU_SECONDS_ATTR] for t in study.trials) == pytest.approx(sorted(costs))
    # Continued with room for about one more trial and a trial count it must not reach.
    budget = sum(costs) + 1.5 * max(costs)
    second = run_search(settings.replace(num_samples=20, cpu_budget_s=budget), show_progress=False)
    trained = [r for r in second.trials if r.status != "REUSED"]
    assert 3 <= len(trained) and len(second.trials) < 20
    spent = cpu_seconds_spent(second.trials)
    # A trial starts only while one more is expected to fit: the last one may pass by its own cost.
    assert spent <= budget + max(r["cpu_seconds"] for r in trained)
    parent = MlflowClient(second.tracking_uri).get_run(second.parent_run_id)
    assert parent.data.metrics["cpu_seconds"] == pytest.approx(spent)
    # The moved target is what a later --resume reads; the rest is as the search was started.
    stored = SearchSettings.from_dict(stored_settings("budgeted", settings.storage_url()))
    assert stored == settings.replace(num_samples=20, cpu_budget_s=budget)
