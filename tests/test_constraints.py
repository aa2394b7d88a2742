"""Search-time constraints reach the sampler: each finished trial carries Optuna constraint values
(<= 0 feasible), which GPSampler, TPE and NSGA-II use to steer away from infeasible regions."""

from __future__ import annotations

import optuna
import pytest

from autopeft.errors import ConfigError
from autopeft.objectives import get_objective
from autopeft.search import limit_objectives


def test_limits_map_to_objectives_and_are_checked():
    limits = limit_objectives({"max_params": 50_000, "max_memory": 800.0})
    assert {k: b for k, (o, b) in limits.items()} == {"trainable_params": 50_000.0, "peak_memory_mb": 800.0}
    with pytest.raises(ConfigError, match="unknown constraint"):
        limit_objectives({"max_speed": 1})
    with pytest.raises(ConfigError, match="--max-params must be positive"):
        limit_objectives({"max_params": 0})


def test_violation_is_relative_and_signed_by_direction():
    params, metric = get_objective("trainable_params"), get_objective("metric")
    assert params.violation(60_000, 50_000) == pytest.approx(0.2)
    assert params.violation(40_000, 50_000) == pytest.approx(-0.2)
    assert metric.violation(0.7, 0.8) == pytest.approx(0.125), "below a floor violates it"
    assert metric.violation(0.9, 0.8) < 0


def test_the_searcher_tells_optuna_the_constraints():
    from autopeft.ray_glue import StudySearcher

    def space(trial):
        trial.suggest_int("x", 0, 10)
        return {"peft_config": {"methods": []}}

    storage = optuna.storages.InMemoryStorage()
    searcher = StudySearcher(space=space, metric=["metric", "trainable_params"], mode=["max", "min"],
                             sampler=optuna.samplers.GPSampler(seed=0), storage=storage, study_name="c",
                             target=5, owner="me", limits=limit_objectives({"max_params": 50_000}))
    for i, params in enumerate((60_000, 40_000)):
        assert searcher.suggest(f"t{i}")["trial_number"] == i
        searcher.on_trial_complete(f"t{i}", {"metric": 0.8, "trainable_params": params})
    study = optuna.load_study(study_name="c", storage=storage)
    assert [t.constraints for t in study.trials] == [{"trainable_params": pytest.approx(0.2)},
                                                     {"trainable_params": pytest.approx(-0.2)}]
    # Optuna's own reading of feasibility: only the second trial can be on the constrained front.
    assert [t.number for t in study.best_trials] == [1]
