"""``autopeft hand-picks``: a search's warm starts and the best trials that beat them, retrained
over new seeds and judged on dev by the suite's rule; on hand-built records and on a real search
of the tiny model."""

from __future__ import annotations

import csv
import io

import pytest

from autopeft import retrain
from autopeft.errors import ConfigError
from autopeft.pareto import mark_front
from autopeft.results import SearchRecord
from autopeft.retrain import Retrained, Verdict, retrain_hand_picks, verdict_line, verdict_rows
from autopeft.schema import TrialRecord

DIRECTIONS = {"metric": "max", "trainable_params": "min"}


def _t(n, metric, params, status="COMPLETE", warm=None):
    return TrialRecord(trial=n, run_id=f"r{n}", status=status, peft=f"cfg{n}", warm_start=warm,
                       values={"metric": metric, "trainable_params": params})


def _record(trials, seed=0):
    from autopeft.objectives import resolve_objectives

    return SearchRecord("s", "p", "sqlite:///x.db", "0", "m", "t", "accuracy",
                        resolve_objectives("metric,trainable_params"), {"seed": seed}, trials)


def _r(n, params, dev, warm=None):
    return Retrained(_t(n, 0.0, params, warm=warm), tuple(range(1, len(dev) + 1)), list(dev))


def test_the_outcome_is_the_suites_rule_for_a_win():
    pick = _r(0, 70_000, [0.80, 0.81, 0.79], warm=0)  # mean 0.80, std 0.01
    assert Verdict(pick, _r(3, 40_000, [0.83, 0.84, 0.82])).outcome == "beats", "+0.03, beyond 0.01"
    assert Verdict(pick, _r(3, 70_000, [0.83, 0.84, 0.82])).outcome == "beats", "same size, better beyond noise"
    assert Verdict(pick, _r(3, 40_000, [0.80, 0.82, 0.78])).outcome == "beats on parameters", "level, fewer params"
    assert Verdict(pick, _r(3, 70_000, [0.805, 0.815, 0.795])).outcome == "not confirmed", "same size, inside noise"
    assert Verdict(pick, _r(3, 40_000, [0.79, 0.80, 0.78])).outcome == "not confirmed", "below it on dev"
    assert Verdict(pick, None).outcome == "not confirmed"
    line = verdict_line(Verdict(pick, _r(3, 40_000, [0.83, 0.84, 0.82])), "accuracy")
    assert line == ("hand-pick (warm start 0) trial 0, cfg0: dev accuracy 0.8000 ± 0.0100 over 3 seeds, 70,000 "
                    "params; trial 3: 0.8300 ± 0.0100 (+0.0300) at 40,000 params (0.57x): beats (lead beyond the "
                    "larger std, 0.0100)")
    assert verdict_line(Verdict(pick, None), "accuracy").endswith("no trial of the search beat it, so nothing to confirm")


def test_each_warm_start_and_its_best_beater_are_trained_once_over_new_seeds(monkeypatch):
    # Warm starts 0 and 1 are both beaten, best by trial 3 (retrained once for both); warm start 2
    # is unbeaten (retrained alone); warm start 3 stopped early (nothing to retrain).
    trials = mark_front([_t(0, 0.80, 70_000, warm=0), _t(1, 0.79, 90_000, warm=1), _t(2, 0.70, 5_000, warm=2),
                         _t(3, 0.82, 40_000), _t(4, 0.81, 60_000), _t(5, 0.5, 20_000, status="STOPPED", warm=3)],
                        DIRECTIONS)
    monkeypatch.setattr(retrain, "to_export", lambda record, t: t)
    runs = []

    def train(t, seed, data_dir):
        runs.append((t.trial, seed))
        return t["metric"] + seed / 1000
    seen = []
    verdicts = retrain_hand_picks(_record(trials, seed=7), 2, None, on_run=lambda t, s, m: seen.append((t.trial, s)),
                                  train=train)
    assert runs == seen == [(0, 8), (0, 9), (3, 8), (3, 9), (1, 8), (1, 9), (2, 8), (2, 9)], "seeds 7 + 1, 7 + 2"
    assert [(v.pick.trial.trial, v.best and v.best.trial.trial) for v in verdicts] == [(0, 3), (1, 3), (2, None)]
    assert verdicts[0].best is verdicts[1].best and verdicts[0].best.dev == pytest.approx([0.828, 0.829])
    rows = verdict_rows(verdicts)
    assert [(r["trial"], r["role"], r["seed"]) for r in rows] == [
        (0, "warm start", 8), (0, "warm start", 9), (3, "best beating it", 8), (3, "best beating it", 9),
        (1, "warm start", 8), (1, "warm start", 9), (2, "warm start", 8), (2, "warm start", 9)]


def test_seeds_start_after_top_seeds_and_a_failed_run_is_recorded_not_fatal(monkeypatch):
    # Under --top-seeds 2 the search trained seeds 0 and 1: the retraining starts at 2. One run of
    # the beater fails: it is a NaN, the rest go on, and one spread left is not enough to judge by.
    trials = mark_front([_t(0, 0.80, 70_000, warm=0), _t(3, 0.82, 40_000)], DIRECTIONS)
    for t in trials:
        t.values["seeds"] = 2
    monkeypatch.setattr(retrain, "to_export", lambda record, t: t)

    def train(t, seed, data_dir):
        if t.trial == 3 and seed == 3:
            raise RuntimeError("loss is NaN")
        return t["metric"] + seed / 1000
    with pytest.warns(UserWarning, match="retraining trial 3 with seed 3 failed: RuntimeError: loss is NaN"):
        [v] = retrain_hand_picks(_record(trials), 2, None, train=train)
    assert v.pick.seeds == v.best.seeds == (2, 3)
    assert v.best.ok == [pytest.approx(0.822)] and v.outcome == "not confirmed"
    assert "trial 3: 0.8220 ± nan over 2 seeds (1 failed) (+0.0195)" in verdict_line(v, "accuracy")


def test_nothing_to_retrain_is_one_clear_error():
    with pytest.raises(ConfigError, match="no warm starts"):
        retrain.candidates(_record([_t(0, 0.8, 10)]), 3)
    with pytest.raises(ConfigError, match="reached the full budget"):
        retrain.candidates(_record([_t(0, 0.5, 10, status="STOPPED", warm=0)]), 3)
    with pytest.raises(ConfigError, match="--seeds must be at least 2"):
        retrain.candidates(_record([_t(0, 0.8, 10, warm=0)]), 1)


@pytest.mark.integration
def test_hand_picks_on_a_real_search(tiny_bert, tiny_regression_task, tmp_path, ray_for_searches):
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from autopeft.cli import app
    from autopeft.config import TrainBudget
    from autopeft.results import load_search, to_export
    from autopeft.schema import HAND_PICK_TAG, HAND_PICKS_ARTIFACT, KIND_HAND_PICKS, KIND_TAG, PARENT_TAG
    from autopeft.search import SearchSettings, run_search

    ray_for_searches()
    space = tmp_path / "lora.yaml"
    space.write_text("methods:\n  lora: {rank: [2, 4, 8, 16], targets: [query, value]}\n"
                     "warm_start:\n  - {lora/rank: 16}\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = SearchSettings(
        name="picks", model=tiny_bert, task=tiny_regression_task, space=str(space), num_samples=4,
        max_concurrent_trials=1, budget=TrainBudget(train_examples=96, eval_examples=48, epochs=3, batch_size=16),
        workdir=str(tmp_path / "runs"), tracking_uri=uri, scheduler="fifo")
    run_search(settings, show_progress=False)
    out = CliRunner().invoke(app, ["hand-picks", "picks", "--seeds", "2", "--tracking-uri", uri])
    assert out.exit_code == 0, out.output
    said = " ".join(out.output.split())
    assert "hand-pick (warm start 0) trial 0, " in said and " over 2 seeds, " in said
    record = load_search("picks", uri)
    client = MlflowClient(uri)
    runs = client.search_runs([record.experiment_id], f"tags.`{KIND_TAG}` = '{KIND_HAND_PICKS}'")
    assert len(runs) == 1 and runs[0].data.tags[PARENT_TAG] == record.parent_run_id
    rows = list(csv.DictReader(io.StringIO(open(client.download_artifacts(runs[0].info.run_id,
                                                                           HAND_PICKS_ARTIFACT)).read())))
    assert {r["seed"] for r in rows} == {"1", "2"}, "seeds the search (seed 0) did not use"
    warm = [float(r["dev_metric"]) for r in rows if r["trial"] == "0"]
    assert runs[0].data.metrics["trial0/dev_mean"] == pytest.approx(sum(warm) / 2)
    assert runs[0].data.tags[f"{HAND_PICK_TAG}0"] in {"beats", "beats on parameters", "not confirmed"}
    # Retrained at the search's own budget: with the search's seed it is the trial again.
    t0 = next(t for t in record.trials if t.trial == 0)
    assert retrain.dev_metric(to_export(record, t0), 0, None) == pytest.approx(t0["metric"], abs=1e-5)
    # The search's records are untouched: still its trials only.
    assert len(load_search("picks", uri).trials) == 4
    # `autopeft pareto` (and the search's end) points here where a warm start was beaten.
    from autopeft.results import hand_picks

    beaten = any(hp.beaten_by for hp in hand_picks(record.trials, record.directions))
    pareto = CliRunner().invoke(app, ["pareto", "picks", "--tracking-uri", uri])
    assert ("autopeft hand-picks picks" in " ".join(pareto.output.split())) == beaten
    assert (runs[0].data.metrics.get(f"trial{verdict_best(record)}/dev_mean") is not None) == beaten


def verdict_best(record):
    from autopeft.results import hand_picks

    hp = hand_picks(record.trials, record.directions)[0]
    return hp.beaten_by[0].trial if hp.beaten_by else None
