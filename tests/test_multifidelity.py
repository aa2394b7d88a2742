"""Successive halving in a real search on the tiny model: trials stop at rung 0 or reach the top,
Optuna and MLflow agree on every value and fidelity, the front holds full-fidelity trials only,
and a trial that reaches the top is exactly the trial it would have been without rungs."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from autopeft import study as studies
from autopeft.config import PeftConfig, TrainBudget
from autopeft.results import load_search
from autopeft.reuse import REUSE_ATTR
from autopeft.schema import NO_SKILL, STOPPED_TAG
from autopeft.search import SearchSettings, blind_rungs, disagreeing_rungs, rate_biased_rungs, rung_notes, run_search
from autopeft.study import FIDELITY_ATTR, RUNG_ATTR, RUNG_VALUES_ATTR, STOPPED_ATTR
from autopeft.trial import TrialContext, run_config

pytestmark = pytest.mark.integration

# On the tiny regression task (the tiny classification one stays at the majority class at rung 0,
# and a rung where nothing has learned stops nobody): trial 0 (rank 2) is alone at every rung, so it
# reaches the top; at rung 0 it scores a positive Pearson, while ranks 16, 8 and 4 score below a
# constant prediction's 0 there (measured: -0.21, -0.12, -0.18). With eta 3 one of two trials goes
# on, and a trial that has not learned is ranked after one that has: trial 1 stops at rung 0.
# The search counts beating a constant prediction as learning (--rung-confidence 0): the tiny
# random model's Pearson (0.02) is far inside chance on 48 rows (~0.2 at the default 0.95), so at
# the default nothing would have learned and nobody would stop (see the test after the next).
# The warm starts are the configurations these searches rank, so they run with
# --halve-warm-starts; by default warm starts are not ranked (the test after the next two).
SPACE = """
methods:
  lora: {rank: [2, 4, 8, 16], targets: [query, value]}
warm_start:
  - {lora/rank: 2}
  - {lora/rank: 16}
  - {lora/rank: 8}
  - {lora/rank: 4}
"""


@pytest.fixture(scope="module")
def halved(tiny_bert, tiny_regression_task, tmp_path_factory, ray_for_searches):
    ray_for_searches()
    root = tmp_path_factory.mktemp("sh")
    space = root / "lora.yaml"
    space.write_text(SPACE)
    settings = SearchSettings(
        name="halved", model=tiny_bert, task=tiny_regression_task, space=str(space), num_samples=4, full_trials=2.0, max_concurrent_trials=1,
        budget=TrainBudget(train_examples=96, eval_examples=48, epochs=3, batch_size=16),
        workdir=str(root / "runs"), tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        scheduler="sh", rungs=3, reduction_factor=3, rung_confidence=0.0, halve_warm_starts=True)
    return settings, run_search(settings, show_progress=False)


def _unlearned_after_one(name, tiny_bert, tiny_regression_task, tmp_path, **changes):
    """A --scheduler shq search of ranks 16, 8 and 4, in that order (none learns at rung 0: the
    comment on SPACE): its settings, result and trials by number."""
    space = tmp_path / "lora.yaml"
    space.write_text(SPACE.split("warm_start:")[0] + "warm_start:\n  - {lora/rank: 16}\n  - {lora/rank: 8}\n"
                     "  - {lora/rank: 4}\n")
    settings = SearchSettings(
        name=name, model=tiny_bert, task=tiny_regression_task, space=str(space), num_samples=3,
        max_concurrent_trials=1, budget=TrainBudget(train_examples=96, eval_examples=48, epochs=3, batch_size=16),
        workdir=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        scheduler="shq", rungs=3, reduction_factor=3, rung_confidence=0.0, **changes)
    result = run_search(settings, show_progress=False)
    trials = sorted(optuna.load_study(study_name=name, storage=settings.storage_url()).trials, key=lambda t: t.number)
    return settings, result, trials


def test_blind_quota_sends_on_one_unlearned_trial_where_sh_sends_each(tiny_bert, tiny_regression_task, tmp_path,
                                                                      ray_for_searches):
    # The same configurations in another order: ranks 16, 8 and 4 first, none of which learns at
    # rung 0 (the comment on SPACE). Trial 0 is alone there and goes on under either kind; trials 1
    # and 2 arrive to a quota of one that trial 0 already holds: --scheduler shq stops them, while
    # sh, which ranks unlearned trials after learned ones only, would send each on.
    ray_for_searches()
    settings, _, trials = _unlearned_after_one("quota", tiny_bert, tiny_regression_task, tmp_path,
                                               halve_warm_starts=True)
    rung0 = [t.user_attrs[f"{RUNG_VALUES_ATTR}0"] for t in trials]
    assert all(r["metric"] <= r[NO_SKILL] for r in rung0), "none learned at rung 0"
    assert trials[0].user_attrs[RUNG_ATTR] >= 1 and STOPPED_ATTR not in trials[0].user_attrs
    assert [t.user_attrs.get(STOPPED_ATTR) for t in trials[1:]] == [0, 0]
    from autopeft.fidelity import RungLedger

    sh = RungLedger(settings.objective_entries(), 3, 3)
    sh.record("0", 0, rung0[0])
    assert sh.decide("1", 0, rung0[1]) and sh.decide("2", 0, rung0[2]), "what sh would have done"


def test_warm_starts_go_on_to_the_full_budget_unless_halved(tiny_bert, tiny_regression_task, tmp_path,
                                                             ray_for_searches):
    # The previous test's search: under --halve-warm-starts trials 1 and 2 stopped at rung 0 (they
    # had not learned there). By default the same warm starts all reach the top.
    ray_for_searches()
    _, result, trials = _unlearned_after_one("kept", tiny_bert, tiny_regression_task, tmp_path)
    assert all(t.user_attrs[f"{RUNG_VALUES_ATTR}0"]["metric"] <= 0.0 for t in trials[1:]), "as in the previous test"
    assert [(t.user_attrs[RUNG_ATTR], t.user_attrs.get(STOPPED_ATTR)) for t in trials] == [(2, None)] * 3
    record = load_search("kept", result.tracking_uri)
    assert [r.warm_start for r in record.trials] == [0, 1, 2] and all(r.status == "COMPLETE" for r in record.trials)
    params = MlflowClient(result.tracking_uri).get_run(result.parent_run_id).data.params
    assert params["halve_warm_starts"] == "False"


def test_some_trials_stop_at_rung_0_and_some_reach_the_top(halved):
    settings, result = halved
    study = optuna.load_study(study_name="halved", storage=settings.storage_url())
    trials = sorted(study.trials, key=lambda t: t.number)
    assert all(t.state == TrialState.COMPLETE for t in trials), "stopped trials are results, not failures"
    assert trials[0].user_attrs[RUNG_ATTR] == 2 and trials[0].user_attrs[FIDELITY_ATTR] == 1.0
    assert STOPPED_ATTR not in trials[0].user_attrs
    assert trials[1].user_attrs[STOPPED_ATTR] == 0 and trials[1].user_attrs[FIDELITY_ATTR] == pytest.approx(1 / 9)
    # Each trial's rung values are kept (a resumed scheduler decides against them) and Optuna
    # was told the values of the highest rung reached.
    for t in (t for t in trials if REUSE_ATTR not in t.user_attrs):  # a reuse holds its source's result
        top = t.user_attrs[RUNG_ATTR]
        assert set(range(top + 1)) <= {int(k[len(RUNG_VALUES_ATTR):]) for k in t.user_attrs if k.startswith(RUNG_VALUES_ATTR)}
        assert t.values == [t.user_attrs[f"{RUNG_VALUES_ATTR}{top}"][k] for k in ("metric", "trainable_params")]
        # Below the top, what a constant prediction scores there is kept too: a resumed ledger ranks with it.
        assert all(t.user_attrs[f"{RUNG_VALUES_ATTR}{k}"][NO_SKILL] == 0.0 for k in range(min(top + 1, 2)))
    assert trials[1].user_attrs[f"{RUNG_VALUES_ATTR}0"]["metric"] < 0 < trials[0].user_attrs[f"{RUNG_VALUES_ATTR}0"]["metric"]


def test_a_rung_where_most_trials_saw_nothing_is_named(halved):
    # Rung 0 here: trial 0 beat a constant prediction, ranks 16, 8 and 4 did not (the comment on SPACE).
    settings, _ = halved
    assert blind_rungs(settings) == [
        "rung 0 (1/9 of the budget): 3 of 4 trials scored no better than chance there, so it could rank only the "
        "rest; for a lowest rung that learns, use fewer --rungs or more training (--train-examples, --epochs)"]
    assert blind_rungs(dataclasses.replace(settings, scheduler="fifo")) == []
    assert rate_biased_rungs(settings) == [], "the space does not search the learning rate"
    assert rung_notes(settings) == blind_rungs(settings), "what the search prints at its end"


def test_a_rung_that_ranked_by_learning_rate_is_named(tmp_path):
    # A study as a halving search over a space with a searched rate leaves it: rung 0's metric
    # rises with the rate, the full budget's falls (the shape measured on MR).
    settings = SearchSettings(name="rates", model="m", task="t", space="s", workdir=str(tmp_path), scheduler="sh",
                              rungs=3, reduction_factor=3)
    study = optuna.create_study(study_name="rates", storage=settings.storage_url(), directions=["maximize", "minimize"])
    rate = optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)
    for i, lr in enumerate([1e-3, 1.5e-3, 2e-3, 3e-3, 4e-3, 5e-3, 7e-3, 9e-3]):
        rungs = {0: 0.48 + 0.025 * i, 1: 0.6, 2: 0.78 - 0.03 * i}
        study.add_trial(optuna.trial.create_trial(
            params={"train/learning_rate": lr}, distributions={"train/learning_rate": rate}, values=[rungs[2], 1000],
            user_attrs={f"{RUNG_VALUES_ATTR}{k}": {"metric": m, "trainable_params": 1000} for k, m in rungs.items()}))
    (line,) = rate_biased_rungs(settings)
    assert line.startswith("rung 0 (1/9 of the budget) ranked its trials by learning rate (Spearman 1.00 over 8) "
                           "while the full budget did not (-1.00 over 8)")
    assert rate_biased_rungs(dataclasses.replace(settings, scheduler="fifo")) == []
    assert rung_notes(settings) == [line], "every rung learned: no blind-rung note beside it"


def _rung_study(tmp_path, name: str, runs: list[dict[int, float]]) -> SearchSettings:
    """A halving search's study as it leaves it: one trial per run, its metric at each rung reached."""
    settings = SearchSettings(name=name, model="m", task="t", space="s", workdir=str(tmp_path), scheduler="sh",
                              rungs=3, reduction_factor=3)
    study = optuna.create_study(study_name=name, storage=settings.storage_url(), directions=["maximize", "minimize"])
    for rungs in runs:
        study.add_trial(optuna.trial.create_trial(
            params={}, distributions={}, values=[rungs[max(rungs)], 1000],
            user_attrs={f"{RUNG_VALUES_ATTR}{k}": {"metric": m, "trainable_params": 1000} for k, m in rungs.items()}))
    return settings


def test_a_rung_whose_order_the_next_did_not_keep_is_named(tmp_path):
    # Rung 0 ranks the ten promoted runs one way, rung 1 the other; rung 1 and the top agree. Two
    # runs stopped at rung 0 take no part (nothing to compare them with).
    runs = [{0: 0.5 + 0.02 * i, 1: 0.8 - 0.01 * i, 2: 0.85 - 0.01 * i} for i in range(10)] + [{0: 0.4}, {0: 0.45}]
    settings = _rung_study(tmp_path, "disagree", runs)
    (line,) = disagreeing_rungs(settings)
    assert line.startswith("rung 0 (1/9 of the budget) ranked the 10 trials it promoted unlike rung 1 did "
                           "(Spearman -1.00)")
    assert "compare --scheduler fifo or --rank-check" in line
    assert disagreeing_rungs(dataclasses.replace(settings, rank_check=True))[0].endswith(
        "(--rank-check let every trial on past it once it saw that)")
    assert disagreeing_rungs(dataclasses.replace(settings, scheduler="fifo")) == []
    assert rung_notes(settings) == [line]
    # Agreeing rungs, or too few promoted runs to say, are not named.
    agree = _rung_study(tmp_path, "agree", [{0: 0.5 + 0.02 * i, 1: 0.6 + 0.01 * i, 2: 0.7 + 0.01 * i} for i in range(10)])
    assert disagreeing_rungs(agree) == []
    few = _rung_study(tmp_path, "few", runs[:7])
    assert disagreeing_rungs(few) == []


def test_rank_check_reaches_the_ledger_and_is_stored(tiny_bert, tiny_regression_task, tmp_path):
    import types

    from autopeft.search import _ledger, prepare

    settings = SearchSettings(name="checked", model=tiny_bert, task=tiny_regression_task, space=_space_file(tmp_path),
                              workdir=str(tmp_path), scheduler="sh", rank_check=True,
                              budget=TrainBudget(train_examples=96, eval_examples=48, epochs=3, batch_size=16))
    stores = types.SimpleNamespace(study=types.SimpleNamespace(get_trials=lambda deepcopy: []))
    assert _ledger(prepare(settings), stores).rank_check
    assert not _ledger(prepare(settings.replace(rank_check=False)), stores).rank_check
    assert SearchSettings.from_dict(settings.to_dict()).rank_check
    old = settings.to_dict()
    del old["rank_check"]  # settings a search stored before the option: it ran without the check
    assert SearchSettings.from_dict(old).rank_check is False


def _space_file(root) -> str:
    path = root / "lora.yaml"
    path.write_text(SPACE)
    return str(path)


def test_the_study_counts_what_the_trials_trained_in_full_trials(halved):
    settings, _ = halved  # 4 trials within 2 full trials' worth: both targets went to the searcher
    trials = optuna.load_study(study_name="halved", storage=settings.storage_url()).trials
    spent = studies.trainings_spent(trials)
    assert spent == pytest.approx(sum(t.user_attrs[FIDELITY_ATTR] for t in trials)) and spent <= 2.0
    assert studies.target_reached(trials, 4, full_trials=2.0)
    assert not studies.target_reached(trials, 5, full_trials=2.0), "the count ended it, within the full trials"


def test_mlflow_agrees_and_the_front_is_full_fidelity_only(halved):
    settings, result = halved
    study = optuna.load_study(study_name="halved", storage=settings.storage_url())
    by_number = {t.number: t for t in study.trials}
    client = MlflowClient(result.tracking_uri)
    record = load_search("halved", result.tracking_uri)
    assert {r.status for r in record.trials} <= {"COMPLETE", "STOPPED"}
    assert [r.status for r in record.trials][:2] == ["COMPLETE", "STOPPED"]
    for r in record.trials:
        t = by_number[r.trial]
        assert [r["metric"], r["trainable_params"]] == pytest.approx(t.values)
        assert r["fidelity"] == pytest.approx(t.user_attrs[FIDELITY_ATTR]) and r["rung"] == t.user_attrs[RUNG_ATTR]
        tags = client.get_run(r.run_id).data.tags
        assert tags["autopeft.rung"] == str(t.user_attrs[RUNG_ATTR])
        assert (STOPPED_TAG in tags) == (r.status == "STOPPED") == (STOPPED_ATTR in t.user_attrs)
        # every rung's report is in the run's history, at step = rung
        history = client.get_metric_history(r.run_id, "metric")
        assert sorted(m.step for m in history) == list(range(t.user_attrs[RUNG_ATTR] + 1))
    assert record.front and all(r.status == "COMPLETE" and r["fidelity"] == 1.0 for r in record.front)
    assert not any(r.pareto for r in record.trials if r.status == "STOPPED")
    parent = client.get_run(result.parent_run_id)
    assert parent.data.params["scheduler"] == "sh" and float(parent.data.params["full_trials"]) == 2.0
    assert parent.data.params["rank_check"] == "False" and parent.data.params["halve_warm_starts"] == "True"
    assert parent.data.metrics["trials_stopped"] == sum(r.status == "STOPPED" for r in record.trials) >= 1


def test_a_trial_at_the_top_rung_is_the_trial_without_rungs(halved, tiny_bert, tiny_regression_task):
    settings, result = halved
    top = next(r for r in result.trials if r.trial == 0)
    path = MlflowClient(result.tracking_uri).download_artifacts(top.run_id, "peft_config.json")
    peft = PeftConfig.from_json(open(path).read())
    plain = run_config(TrialContext(tiny_bert, tiny_regression_task, settings.budget), peft)
    # (Pearson of float predictions: the trial's worker and this process may sum in another order.)
    assert plain["metric"] == pytest.approx(top["metric"], abs=1e-5)
    assert plain["train_loss"] == pytest.approx(top["train_loss"])
    assert plain["steps"] == top["steps"] == 18


def test_run_config_stops_where_on_rung_says(tiny_bert, tiny_task):
    ctx = TrialContext(tiny_bert, tiny_task, TrainBudget(train_examples=96, eval_examples=48, epochs=3),
                       rungs=(1 / 9, 1 / 3, 1.0), rung_objectives=("metric", "trainable_params", "latency_ms"))
    seen = []
    report = run_config(ctx, PeftConfig.from_dict({"methods": [{"method": "lora", "layers": [0, 1, 2], "rank": 2,
                                                                "alpha": 16, "targets": ["query", "value"]}]}),
                        on_rung=lambda rep: seen.append(rep) or rep["rung"] < 1)
    assert [r["rung"] for r in seen] == [0, 1]
    assert report is seen[-1] and report["steps"] == 6 and report["fidelity"] == pytest.approx(1 / 3)
    assert report["latency_ms"] > 0, "the search's measured objectives are measured at each rung"


def test_a_rung_reports_what_a_model_without_skill_reaches(tiny_bert, tiny_regression_task):
    # At the default confidence a rung's no_skill is the 95th percentile of the trial's own
    # predictions shuffled against the labels: above 0 for a regression model whose outputs vary;
    # at confidence 0 it is the constant prediction's Pearson, 0.
    peft = PeftConfig.from_dict({"methods": [{"method": "lora", "layers": [0, 1], "rank": 2, "targets": ["query"]}]})
    levels = {}
    for confidence in (0.95, 0.0):
        ctx = TrialContext(tiny_bert, tiny_regression_task, TrainBudget(train_examples=96, eval_examples=48, epochs=3),
                           rungs=(1 / 9, 1 / 3, 1.0), rung_objectives=("metric", "trainable_params"),
                           rung_confidence=confidence)
        levels[confidence] = run_config(ctx, peft, on_rung=lambda rep: False)[NO_SKILL]
    assert levels[0.0] == 0.0 and 0.1 < levels[0.95] < 0.5


def test_report_and_front_csv_show_fidelity(halved, tmp_path):
    from autopeft.report import report_data, write_report

    settings, result = halved
    record = load_search("halved", result.tracking_uri)
    data = report_data(record.trials, record.objectives)
    assert {t.trial for t in data["stopped"]} == {t.trial for t in record.trials if t.status == "STOPPED"}
    assert all(t.status == "COMPLETE" for t in data["trials"])
    html = write_report(record.trials, record.objectives, record.metric_name, tmp_path / "r.html").read_text()
    assert "stopped early (low fidelity)" in html and "rung 0 (stopped there)" in html
    client = MlflowClient(result.tracking_uri)
    csv_text = open(client.download_artifacts(result.parent_run_id, "pareto/pareto_front.csv")).read()
    assert "fidelity" in csv_text.splitlines()[0]


def test_the_top_rung_scores_a_config_over_several_seeds(tiny_bert, tiny_task):
    from autopeft.trial import over_seeds

    budget = TrainBudget(train_examples=48, eval_examples=48)
    peft = PeftConfig.from_dict({"methods": [{"method": "lora", "layers": [0, 1, 2], "rank": 2, "alpha": 16,
                                              "targets": ["query", "value"]}]})
    one = [run_config(TrialContext(tiny_bert, tiny_task, budget.replace(seed=s)), peft) for s in (0, 1)]
    both = run_config(TrialContext(tiny_bert, tiny_task, budget, seeds=2), peft)
    assert both["metric_seed0"] == one[0]["metric"] and both["metric_seed1"] == one[1]["metric"]
    assert both["metric"] == pytest.approx((one[0]["metric"] + one[1]["metric"]) / 2)
    assert both["metric_min"] == min(r["metric"] for r in one) and both["seeds"] == 2
    # Both seeds' costs are counted: the real run went through over_seeds (its per-seed metrics say
    # so), whose sums are checked exactly below; comparing measured CPU-seconds of separate runs
    # failed under load (a warm-up-inflated single run against two warm ones).
    assert both["cpu_seconds"] > 0 and both["train_seconds"] > 0
    spread = over_seeds([{"metric": 0.905, "peak_memory_mb": 1, "train_seconds": 1, "eval_seconds": 1, "cpu_seconds": 3},
                         {"metric": 0.607, "peak_memory_mb": 2, "train_seconds": 1, "eval_seconds": 1, "cpu_seconds": 4}])
    assert spread["metric"] == pytest.approx(0.756) and spread["metric_std"] == pytest.approx(0.2107, abs=1e-4)
    assert spread["peak_memory_mb"] == 2 and spread["train_seconds"] == 2 and spread["cpu_seconds"] == 7


def test_full_trials_count_each_seed_of_a_top_seeds_trial(tiny_bert, tiny_regression_task, tmp_path,
                                                          ray_for_searches):
    # Two seeds at the full budget are two full-budget trainings: with --full-trials 4 the search
    # stops after two trials (2 spent + a third at the mean of 2 would pass 4), not after four.
    ray_for_searches()
    space = tmp_path / "lora.yaml"
    space.write_text(SPACE)
    settings = SearchSettings(
        name="seeded", model=tiny_bert, task=tiny_regression_task, space=str(space), num_samples=4,
        full_trials=4.0, max_concurrent_trials=1, top_seeds=2,
        budget=TrainBudget(train_examples=48, eval_examples=48, batch_size=16),
        workdir=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", scheduler="fifo")
    result = run_search(settings, show_progress=False)
    trials = optuna.load_study(study_name="seeded", storage=settings.storage_url()).trials
    done = [t for t in trials if t.state == TrialState.COMPLETE]  # the other two warm starts wait, unasked
    assert len(done) == 2 and all(t.user_attrs[studies.TRAINED_ATTR] == 2.0 for t in done)
    assert studies.trainings_spent(trials) == 4.0 and len(result.trials) == 2
    assert all(r["seeds"] == 2 and r["trained_share"] == 2.0 for r in result.trials)


def test_a_run_stopped_at_each_rung_and_resumed_ends_where_the_uninterrupted_run_does(tiny_bert, tiny_regression_task):
    # Halving of the promotion type stops a trial at its rung and resumes it if it is promoted
    # later. 96 examples in batches of 16 are 6 steps an epoch: rung 0 (step 2) falls inside the
    # first epoch and rung 1 (step 6) at its end, so both ways of resuming an epoch are crossed.
    # The tiny model has dropout: its random stream is part of the state.
    budget = TrainBudget(train_examples=96, eval_examples=48, epochs=3, batch_size=16)
    peft = PeftConfig.from_dict({"methods": [{"method": "lora", "layers": [0, 1], "rank": 4, "targets": ["query", "value"]}]})
    ctx = TrialContext(tiny_bert, tiny_regression_task, budget, rungs=(1 / 9, 1 / 3, 1.0),
                       rung_objectives=("metric", "trainable_params"))
    straight = run_config(ctx, peft, on_rung=lambda rep: True)
    states, reports, resume = [], [], None
    for _ in range(3):
        report = run_config(ctx, peft, on_rung=lambda rep: False, keep_state=states.append, resume=resume)
        reports.append(report)
        resume = states[-1] if len(states) == len(reports) else None
    assert [r["rung"] for r in reports] == [0, 1, 2] and len(states) == 2
    assert [r["steps"] for r in reports] == [2, 6, 18] == [s.step for s in states] + [straight["steps"]]
    assert reports[-1]["metric"] == pytest.approx(straight["metric"], abs=1e-6)
    assert reports[-1]["train_loss"] == pytest.approx(straight["train_loss"], abs=1e-6)
    # Without the state the resumed segment would start over: a different run.
    fresh = run_config(ctx, peft, on_rung=lambda rep: True)
    assert fresh["metric"] == straight["metric"], "the check itself is deterministic"
