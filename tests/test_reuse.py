"""No paid duplicates: a configuration evaluated once is answered from the study afterwards (a
reuse, recorded in Optuna and MLflow), and a space refuses configs below its minimum size."""

from __future__ import annotations

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from autopeft.config import TrainBudget
from autopeft.reuse import CONFIG_KEY_ATTR, REUSE_ATTR, config_key, evaluated
from autopeft.results import hand_picks
from autopeft.schema import REUSE_TAG
from autopeft.search import SearchSettings, run_search
from autopeft.study import FIDELITY_ATTR, REFUSED_ATTR, counted

LORA = {"method": "lora", "layers": [0, 1, 2], "rank": 8, "alpha": 16}


def test_config_key_is_the_model_and_its_training():
    budget = TrainBudget()
    one = {"peft_config": {"methods": [{**LORA, "targets": ["query", "value"]}]}, "training": {}}
    split = {"peft_config": {"methods": [{**LORA, "targets": ["value"]}, {**LORA, "targets": ["query"]}]}}
    assert config_key(one, budget) == config_key(split, budget), "entry order and splitting do not matter"
    assert config_key(one, budget) != config_key({**one, "training": {"learning_rate": 1e-3}}, budget)
    assert config_key(one, budget) != config_key(one, budget.replace(train_examples=512))


def test_evaluated_takes_the_earliest_finished_original():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for values, attrs in (((0.5, 10), {CONFIG_KEY_ATTR: "b"}), ((0.6, 10), {CONFIG_KEY_ATTR: "a"}),
                          ((0.6, 10), {CONFIG_KEY_ATTR: "a", REUSE_ATTR: 1})):
        t = study.ask()
        for k, v in attrs.items():
            t.set_user_attr(k, v)
        study.tell(t, values)
    running = study.ask()
    running.set_user_attr(CONFIG_KEY_ATTR, "c")
    assert evaluated(study.trials, "a").number == 1
    assert evaluated(study.trials, "c") is None, "a running trial has no result to reuse"
    # Halving of the promotion type: the config's run stopped at rung 0 (trial 4) was resumed by
    # trial 5, which reached the top. A duplicate gets the full-budget result, not the rung-0 one.
    for values, fidelity in (((0.4, 10), 1 / 9), ((0.7, 10), 1.0)):
        t = study.ask()
        t.set_user_attr(CONFIG_KEY_ATTR, "d")
        t.set_user_attr(FIDELITY_ATTR, fidelity)
        study.tell(t, values)
    assert evaluated(study.trials, "d").number == 5


# rank 0 switches LoRA off: the head-only config, which the space refuses (its modules add 0
# parameters to the 2-label head's 32 * 2 + 2 = 66); LoRA r=2 on query and value adds
# 3 layers * 2 modules * 2 * (32 * 2) = 768.
SPACE = """
min_peft_params: 1
methods:
  lora: {rank: [0, 2], targets: [query, value]}
warm_start:
  - {lora/rank: 0}
  - {lora/rank: 2}
"""


@pytest.mark.integration
def test_duplicates_are_reused_and_small_configs_refused(tiny_bert, tiny_task, tmp_path, ray_for_searches):
    ray_for_searches()
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    settings = SearchSettings(
        name="dedup", model=tiny_bert, task=tiny_task, space=str(space), num_samples=3, max_concurrent_trials=1,
        scheduler="fifo",
        sampler="random", budget=TrainBudget(train_examples=32, eval_examples=32),
        workdir=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = run_search(settings, show_progress=False)

    trials = optuna.load_study(study_name="dedup", storage=settings.storage_url()).trials
    refused = [t for t in trials if REFUSED_ATTR in t.user_attrs]
    assert refused and all(t.state == TrialState.FAIL and t.params == {"lora/rank": 0} for t in refused)
    assert "adds 0 parameters to the task head, below the space's min_peft_params 1" in refused[0].user_attrs[REFUSED_ATTR]
    kept = counted(trials)
    assert len(kept) == 3, "refused configs do not count towards the target"
    original, *reuses = kept
    assert original.params == {"lora/rank": 2} and REUSE_ATTR not in original.user_attrs
    assert len(reuses) == 2 and all(t.user_attrs[REUSE_ATTR] == original.number for t in reuses)
    assert all(t.values == original.values and t.state == TrialState.COMPLETE for t in reuses)

    # MLflow: one trained run, two reuse runs with its numbers; the front holds the original only.
    client = MlflowClient(result.tracking_uri)
    by_number = {r.trial: r for r in result.trials}
    assert set(by_number) == {t.number for t in kept}
    assert by_number[original.number].status == "COMPLETE"
    src = client.get_run(by_number[original.number].run_id)
    for t in reuses:
        record = by_number[t.number]
        assert record.status == "REUSED" and record["metric"] == src.data.metrics["metric"]
        assert client.get_run(record.run_id).data.tags[REUSE_TAG] == str(original.number)
        assert "train_seconds" in record.values, "a reuse copies every number of its source"
    assert [r.trial for r in result.front] == [original.number]
    # The original is the space's warm start 1 (warm start 0 was refused, and has no run); its
    # reuses, later proposals of the same configuration, are not hand-picks.
    assert by_number[original.number].warm_start == 1 and all(by_number[t.number].warm_start is None for t in reuses)
    assert [(hp.trial.trial, hp.beaten_by) for hp in hand_picks(result.trials, result.directions)] == [
        (original.number, [])]
    parent = client.get_run(result.parent_run_id)
    assert parent.data.metrics["trials_reused"] == 2 and parent.data.metrics["trials_completed"] == 1


def test_min_peft_params_is_checked_in_the_space():
    from autopeft.spaces import SpaceError, parse_space

    assert parse_space({"methods": {"bitfit": {}}, "min_peft_params": 500}).min_peft_params == 500
    with pytest.raises(SpaceError, match="min_peft_params must be a whole number >= 0"):
        parse_space({"methods": {"bitfit": {}}, "min_peft_params": -1})
    with pytest.raises(SpaceError, match="min_trainable_params is now min_peft_params"):  # its former name
        parse_space({"methods": {"bitfit": {}}, "min_trainable_params": 500})


def test_min_peft_params_counts_the_modules_without_the_head():
    # The floor of 1 needs no count (every validated entry adds parameters); a higher floor counts
    # each config once and takes the head-only count away.
    from autopeft.config import PeftConfig
    from autopeft.methods.lora import LoRAConfig
    from autopeft.reuse import Vetting

    head = PeftConfig(())
    small = PeftConfig((LoRAConfig(layers=(0,), targets=("query",), rank=1, alpha=16),))
    large = PeftConfig((LoRAConfig(layers=(0, 1, 2), targets=("query", "value"), rank=8, alpha=16),))
    sizes = {head.canonical(): 66, small.canonical(): 66 + 64, large.canonical(): 66 + 3000}
    counted_configs: list[str] = []

    def count(peft: PeftConfig) -> int:
        counted_configs.append(peft.canonical())
        return sizes[peft.canonical()]

    study = optuna.create_study(directions=["maximize", "minimize"])

    def check(vetting: Vetting, peft: PeftConfig) -> tuple[str, object]:
        return vetting.check([], study.ask(), {"peft_config": peft.to_dict(), "training": {}})

    floor_one = Vetting(TrainBudget(), 1, count)
    assert check(floor_one, small)[0] == "run" and counted_configs == []
    verdict, reason = check(floor_one, head)
    assert verdict == "refuse" and "adds 0 parameters to the task head" in reason and counted_configs == []

    floor_100 = Vetting(TrainBudget(), 100, count)
    verdict, reason = check(floor_100, small)
    assert verdict == "refuse" and "adds 64 parameters to the task head, below the space's min_peft_params 100" in reason
    assert check(floor_100, large)[0] == "run" and check(floor_100, small)[0] == "refuse"
    assert sorted(counted_configs) == sorted({small.canonical(), head.canonical(), large.canonical()}), \
        "each config counted once, the head once"


@pytest.mark.parametrize("sampler", ["random", "tpe", "gp"])
def test_a_resumed_seeded_sampler_draws_anew_rather_than_replaying_duplicates(tmp_path, sampler):
    """A driver resuming (or joining) a seeded study must not replay the first driver's random draws:
    each replay would be a duplicate, answered from the study and counted towards the target."""
    from autopeft.samplers import make_sampler

    url = f"sqlite:///{tmp_path / 'optuna.db'}"

    def drive(name: str, asked: int, n: int = 3) -> list[int]:
        study = optuna.create_study(storage=url, study_name=name, directions=["maximize", "minimize"],
                                    sampler=make_sampler(sampler, 0, 20, asked), load_if_exists=True)
        draws = []
        for _ in range(n):
            trial = study.ask()
            draws.append(trial.suggest_int("x", 0, 10**6))
            study.tell(trial, [draws[-1] % 7, draws[-1] % 5])
        return draws

    first = drive("s", asked=0)
    resumed = drive("s", asked=3)
    assert not set(first) & set(resumed), "the resumed driver replayed the first one's draws"
    assert drive("t", asked=0) == first, "a new study still draws as its seed says"
    assert drive("t", asked=3) == resumed, "and a resume at the same point draws the same"
