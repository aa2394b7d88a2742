"""Search spaces: every shipped YAML parses and samples; conditionals are honoured; bad spaces
are refused with a message naming the file, key and problem."""

from __future__ import annotations

import optuna
import pytest

from autopeft.config import PeftConfig
from autopeft.errors import ConfigError
from autopeft.spaces import available_spaces, load_space, parse_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
LAYERS = 6


def sample_many(space, n=30, seed=0, sampler=None):
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=sampler or optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        config, training = space.sample(trial, LAYERS)
        out.append((trial.params, config, training))
        study.tell(trial, [0.5, 1.0])
    return out


def test_shipped_spaces_exist():
    assert {"autopeft", "lora", "hybrid", "small"} <= set(available_spaces())


@pytest.mark.parametrize("name", sorted(available_spaces()))
def test_shipped_space_samples_valid_configs(name):
    space = load_space(name)
    space.check_model(LAYERS)
    assert space.description
    for params, config, training in sample_many(space):
        config.check_model(LAYERS)
        assert PeftConfig.from_json(config.to_json()) == config
        assert config.module_clashes() == []  # what `adapters` could not train (test_build)


def test_ia3_keeps_the_modules_lora_leaves_free():
    # The small space's (IA)3 targets key, value and intermediate, and LoRA any of query/key/value:
    # sampled together, (IA)3 gives up the modules that carry LoRA and keeps the rest.
    seen = 0
    for params, config, _ in sample_many(load_space("small"), n=60):
        ia3 = [t for e in config.methods if e.method == "ia3" for t in e.targets]
        if not params.get("ia3/use"):
            assert not ia3
            continue
        seen += 1
        lora = {t for t in ("key", "value") if params[f"lora/{t}/rank"]}
        assert sorted(ia3) == sorted({"key", "value", "intermediate"} - lora)
    assert seen > 10


@pytest.mark.parametrize("name", sorted(available_spaces()))
def test_warm_start_points_are_sampled_first(name):
    space = load_space(name)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for point in space.warm_start_points(LAYERS):
        study.enqueue_trial(point)
    for point in space.warm_start_points(LAYERS):
        trial = study.ask()
        space.sample(trial, LAYERS)
        assert {k: trial.params[k] for k in point if k in trial.params} == {k: v for k, v in point.items() if k in trial.params}
        study.tell(trial, [0.5, 1.0])


def test_small_space_starts_from_the_hand_picked_baselines(tiny_bert):
    # Searched per module, "LoRA r=8 on query+value" is two entries; it must build the same model
    # as the one entry an engineer writes, or the search would not start where they stop.
    from autopeft.build import build_model
    from autopeft.methods.bitfit import BitFitConfig
    from autopeft.methods.lora import LoRAConfig
    from tests.conftest import TINY_LAYERS

    space = load_space("small")
    study = optuna.create_study(directions=["maximize", "minimize"])
    for point in space.warm_start_points(TINY_LAYERS):
        study.enqueue_trial(point)
    lora, lora_training = space.sample(study.ask(), TINY_LAYERS)
    bitfit, bitfit_training = space.sample(study.ask(), TINY_LAYERS)
    every = tuple(range(TINY_LAYERS))
    by_hand = PeftConfig((LoRAConfig(layers=every, targets=("query", "value"), rank=8, alpha=16),))
    assert [(e.method, e.targets, e.rank) for e in lora.methods] == [("lora", ("query",), 8), ("lora", ("value",), 8)]
    built, hand = build_model(tiny_bert, lora, 2), build_model(tiny_bert, by_hand, 2)
    assert built.trainable_params == hand.trainable_params
    def shapes(m):  # adapter names differ (one adapter per module), the weights must not
        return sorted(tuple(p.shape) for p in m.model.parameters() if p.requires_grad)
    assert shapes(built) == shapes(hand)
    assert bitfit == PeftConfig((BitFitConfig(layers=every),))
    assert lora_training == bitfit_training == {"learning_rate": 5e-3}


def test_size_zero_switches_method_off_and_skips_its_parameters():
    space = parse_space({"methods": {"par_bn": {"layers": "mask", "size": [0, 8]}}})
    seen_off = seen_on = False
    for params, config, _ in sample_many(space, 40):
        if params["par_bn/size"] == 0:
            seen_off = True
            assert not config.methods
            assert not any(k.startswith("par_bn/layer") for k in params), "mask sampled for a switched-off method"
        else:
            seen_on = True
            mask = [i for i in range(LAYERS) if params[f"par_bn/layer{i:02d}"]]
            assert [e.layers for e in config.methods] == ([tuple(mask)] if mask else [])
    assert seen_off and seen_on


def test_optional_method_samples_nothing_when_unused():
    space = parse_space({"methods": {"lora": {"optional": True, "rank": [2, 4], "layers": "all"}}})
    for params, config, _ in sample_many(space, 30):
        if not params["lora/use"]:
            assert set(params) == {"lora/use"} and not config.methods
        else:
            assert config.methods[0].rank == params["lora/rank"]


def test_each_layer_gets_its_own_size():
    space = parse_space({"methods": {"seq_bn": {"layers": "each", "size": [0, 4, 16]}}})
    for params, config, _ in sample_many(space, 20):
        got = {layer: e.size for e in config.methods for layer in e.layers}
        want = {i: params[f"seq_bn/layer{i:02d}/size"] for i in range(LAYERS) if params[f"seq_bn/layer{i:02d}/size"]}
        assert got == want


def test_per_target_lora_has_independent_masks_and_ranks():
    space = parse_space({"methods": {"lora": {"per_target": True, "layers": "mask", "rank": [2, 8],
                                              "targets": ["query", "value"]}}})
    found_different = False
    for params, config, _ in sample_many(space, 30):
        by_target = {e.targets: e for e in config.methods}
        assert set(by_target) <= {("query",), ("value",)}
        if len(by_target) == 2:
            q, v = by_target[("query",)], by_target[("value",)]
            found_different |= q.layers != v.layers or q.rank != v.rank
    assert found_different


def test_target_choices_and_training_params():
    space = parse_space({"methods": {"lora": {"targets": {"choices": [["query", "value"], ["key"]]}}},
                        "training": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}})
    targets = set()
    for params, config, training in sample_many(space, 20):
        targets.add(config.methods[0].targets)
        assert 1e-4 <= training["learning_rate"] <= 1e-2
    assert targets == {("query", "value"), ("key",)}


def test_position_can_be_searched():
    space = parse_space({"methods": {"seq_bn": {"size": 8, "position": {"choices": ["ffn", "both"]}},
                                     "par_bn": {"size": 4, "position": "ffn"}}})
    seen = set()
    for params, config, _ in sample_many(space, 12):
        seq, par = config.methods
        seen.add(seq.position)
        assert par.position == "ffn" and params["seq_bn/position"] == seq.position
    assert seen == {"ffn", "both"}


def test_same_seed_same_sequence():
    space = load_space("hybrid")
    a = [c for _, c, _ in sample_many(space, 10, seed=7)]
    b = [c for _, c, _ in sample_many(space, 10, seed=7)]
    assert a == b


@pytest.mark.parametrize("text, message", [
    ("methods: [seq_bn", "malformed YAML"),
    ("methods: {}", "'methods' must map at least one"),
    ("methods: {dora: {}}", "unknown PEFT method 'dora'"),
    ("methods: {lora: {rnak: [4]}}", "unknown key(s) ['rnak']"),
    ("methods: {lora: {rank: []}}", "the list of choices is empty"),
    ("methods: {lora: {rank: [-4]}}", "-4 is out of range"),
    ("methods: {seq_bn: {size: [2.5]}}", "whole numbers"),
    ("methods: {seq_bn: {position: [ffn, middle]}}", "position must be one of ['ffn', 'attention', 'both'], got 'middle'"),
    ("methods: {par_bn: {position: 2}}", "position must be one of ['attention', 'ffn'], got 2"),
    ("methods: {lora: {targets: [query, dense]}}", "unknown target module(s) ['dense']"),
    ("methods: {seq_bn: {layers: odd}}", "expected one of ['all', 'mask', 'each']"),
    ("methods: {lora: {rank: {low: 8, high: 2}}}", "low <= high"),
    ("methods: {prompt: {layers: [0]}}", "not placed per layer"),
    ("methods: {seq_bn: {}}\nsearch: 3", "unknown top-level key(s) ['search']"),
    ("methods: {seq_bn: {}}\ntraining: {lr: [1]}", "training.lr: unknown key(s) ['lr']"),
])
def test_bad_spaces_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_space(str(path))
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_malformed_yaml_gives_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("methods:\n  seq_bn:\n    size: [1, 2\n")
    with pytest.raises(ConfigError, match=r"line \d+"):
        load_space(str(path))


def test_layer_out_of_range_for_model():
    space = parse_space({"methods": {"seq_bn": {"layers": [0, 11]}}}, "mine.yaml")
    with pytest.raises(ConfigError, match=r"mine.yaml: methods.seq_bn.layers: layer\(s\) \[11\] do not exist"):
        space.check_model(LAYERS)


def test_unknown_space_name():
    with pytest.raises(ConfigError, match="unknown search space 'nope'"):
        load_space("nope")


def test_layer_out_of_range_names_its_line_in_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("description: x\nmethods:\n  seq_bn:\n    size: 8\n    layers: [0, 11]\n")
    space = load_space(str(path))
    with pytest.raises(ConfigError, match=rf"{path}:5: methods.seq_bn.layers: layer\(s\) \[11\] do not exist"):
        space.check_model(LAYERS)


def test_gp_sampler_survives_a_trial_completed_between_its_two_reads():
    # GPSampler reads the study for its search space, then again for the trials it fits; a trial
    # another driver completes in between may lack a conditional parameter of that space, and
    # Optuna 5.0 raises KeyError (seen: two drivers on one study, hybrid space).
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState, create_trial

    from autopeft.samplers import SAMPLERS

    sampler = SAMPLERS["gp"](0, 8)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    dists = {"use": CategoricalDistribution([True, False]), "size": FloatDistribution(1, 64),
             "lr": FloatDistribution(1e-4, 1e-2, log=True)}
    for i in range(4):
        study.add_trial(create_trial(params={"use": True, "size": 8.0 * (i + 1), "lr": 1e-3 * (i + 1)},
                                     distributions=dists, values=[0.5 + 0.1 * i, 100.0 * i]))
    trial = study.ask()
    frozen = study._storage.get_trial(trial._trial_id)
    space = sampler.infer_relative_search_space(study, frozen)
    assert {"size", "lr"} <= set(space)
    study.add_trial(create_trial(params={"use": False, "lr": 5e-3}, values=[0.6, 0.0],  # no "size"
                                 distributions={k: v for k, v in dists.items() if k != "size"},
                                 state=TrialState.COMPLETE))
    with pytest.raises(KeyError):
        optuna.samplers.GPSampler.sample_relative(sampler, study, frozen, space)  # Optuna's own
    params = sampler.sample_relative(study, frozen, space)
    assert "lr" in params and "size" not in params


def _refusals_before(sampler_cls, completed: int, give_up: int) -> int:
    """Ask/tell as the search's driver does: a config without modules is refused (told FAIL with the
    refusal attribute), the rest score a metric flat in size, so the fewest parameters, the refused
    point, promise the most hypervolume. How many refusals until ``completed`` trials finish?"""
    import random

    from optuna.trial import TrialState

    from autopeft.study import REFUSED_ATTR

    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=sampler_cls(seed=0, n_startup_trials=5))
    noise, done, refused = random.Random(0), 0, 0
    while done < completed and refused < give_up:
        trial = study.ask()
        sizes = [trial.suggest_categorical(f"layer{i}/size", [0, 3, 6]) for i in range(3)]
        trial.suggest_float("lr", 1e-3, 1e-2, log=True)
        if sum(sizes) == 0:
            trial.set_user_attr(REFUSED_ATTR, "no modules")
            study.tell(trial, state=TrialState.FAIL)
            refused += 1
        else:
            study.tell(trial, [0.8 + noise.gauss(0, 0.005), 10 + 100 * sum(sizes)])
            done += 1
    return refused


def test_gp_sampler_does_not_propose_a_refused_config_again():
    # Optuna's GP fits completed trials only: a refused config stays the acquisition's best and is
    # proposed until the search's refusal limit stops it. Ours hands refusals in as pending points.
    from autopeft.gp_sampler import GPSampler

    assert _refusals_before(optuna.samplers.GPSampler, completed=12, give_up=8) >= 4, \
        "Optuna's own GP no longer repeats a refused config: the pending-point hand-in may be moot"
    assert _refusals_before(GPSampler, completed=12, give_up=8) <= 2


@pytest.mark.parametrize("name", sorted(available_spaces()))
def test_shipped_spaces_refuse_the_head_only_config(name):
    assert load_space(name).min_peft_params >= 1


def test_the_gp_sampler_does_not_warn_about_greenlet():
    """Optuna's one-time warning without `greenlet` is not news a user can act on (measured: no
    difference in ask cost at a search's sizes); autopeft's GP sampler filters it."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("greenlet") is not None:
        pytest.skip("greenlet is installed here: Optuna has nothing to warn about")
    bare = subprocess.run([sys.executable, "-c", "import optuna._gp.batched_lbfgsb"], capture_output=True, text=True)
    assert "greenlet" in bare.stderr, "Optuna no longer warns without greenlet: the filter can go"
    code = "import autopeft.gp_sampler, optuna._gp.batched_lbfgsb"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "greenlet" not in out.stderr + out.stdout


def test_trials_started_before_the_startup_results_are_blind():
    """The premise of ``blind_trials``: what the GP is asked before its start-up trials have
    results is a seeded random draw, the same whatever the objective; told results, it differs."""
    from autopeft.gp_sampler import GPSampler
    from autopeft.samplers import blind_trials

    def asked(sign: float, told: int, more: int) -> list[float]:
        study = optuna.create_study(direction="maximize", sampler=GPSampler(seed=0, n_startup_trials=3))
        first = [study.ask() for _ in range(6)]  # six at a time, none finished yet
        xs = [t.suggest_float("x", 0.0, 1.0) for t in first]
        for t, x in list(zip(first, xs))[:told]:
            study.tell(t, sign * x)
        return xs + [study.ask().suggest_float("x", 0.0, 1.0) for _ in range(more)]

    assert asked(1.0, told=0, more=0) == asked(-1.0, told=0, more=0)
    up, down = asked(1.0, told=6, more=1), asked(-1.0, told=6, more=1)
    assert up[6] != down[6]
    # 12 trials of which 3 start up, 6 at a time: about 3 + 6 - 1 start unsteered.
    assert blind_trials("gp", 12, 6) == (8, 3)
    assert blind_trials("tpe", 20, 12) == (16, 5)
    assert blind_trials("gp", 20, 12) == (16, 5)
    assert blind_trials("gp", 12, 2) is None  # the default: one more than the start-up
    assert blind_trials("random", 20, 12) is None and blind_trials("nsga2", 20, 12) is None


def test_a_search_wider_than_its_startup_says_so_before_it_starts(tiny_bert, tiny_task):
    from autopeft.search import SearchSettings, prepare

    note = "trials start before the gp sampler has the results of its 3 start-up trials"
    wide = prepare(SearchSettings(name="x", model=tiny_bert, task=tiny_task, space="lora", num_samples=12,
                                  max_concurrent_trials=6)).notes
    assert len(wide) == 1 and "about 8 of the 12 trials" in wide[0] and note in wide[0]
    assert not prepare(SearchSettings(name="x", model=tiny_bert, task=tiny_task, space="lora", num_samples=12,
                                      max_concurrent_trials=2)).notes
    budgeted = prepare(SearchSettings(name="x", model=tiny_bert, task=tiny_task, space="lora", num_samples=12,
                                      max_concurrent_trials=6, cpu_budget_s=60)).notes
    assert "about 8 trials start" in budgeted[0]
