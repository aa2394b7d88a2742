"""Configs are immutable, validated, and round-trip through JSON exactly."""

from __future__ import annotations

import json

import pytest

from autopeft.config import PeftConfig, TrainBudget
from autopeft.errors import ConfigError
from autopeft.methods import available_methods
from autopeft.methods.bitfit import BitFitConfig
from autopeft.methods.ia3 import IA3Config
from autopeft.methods.lora import LoRAConfig
from autopeft.methods.par_bn import ParBnConfig
from autopeft.methods.prefix import PrefixConfig
from autopeft.methods.prompt import PromptConfig
from autopeft.methods.seq_bn import SeqBnConfig

HYBRID = PeftConfig((
    SeqBnConfig((0, 2), 24), SeqBnConfig((1,), 48), ParBnConfig((0, 1, 2), 8),
    PrefixConfig((1,), 4, flat=True), LoRAConfig((0,), 4, 8, ("query",)), LoRAConfig((1, 2), 8, 16, ("value", "key")),
    IA3Config((2,)), BitFitConfig((0,)), PromptConfig(length=3),
))


def one_of_each() -> list[PeftConfig]:
    return [PeftConfig((spec.config_cls(**({} if not spec.per_layer else {"layers": (0, 1)})),))
            for spec in available_methods().values()]


@pytest.mark.parametrize("config", [PeftConfig(()), HYBRID, *one_of_each()], ids=lambda c: c.describe())
def test_json_round_trip(config):
    text = config.to_json()
    again = PeftConfig.from_json(text)
    assert again == config
    assert again.to_json() == text
    assert json.loads(text)["schema_version"] == 1


def test_every_registered_method_is_covered():
    assert {c.methods[0].method for c in one_of_each()} == set(available_methods())


def test_configs_are_immutable_and_normalised():
    c = LoRAConfig(layers=[2, 0, 2], targets=["value", "query"])
    assert c.layers == (0, 2) and c.targets == ("query", "value")
    with pytest.raises(Exception):
        c.rank = 3  # frozen


@pytest.mark.parametrize("bad, message", [
    ({"methods": [{"method": "dora", "layers": [0]}]}, "unknown PEFT method 'dora'"),
    ({"methods": [{"method": "lora", "layers": [0], "rnk": 4}]}, "unknown key(s) ['rnk']"),
    ({"methods": [{"method": "lora", "layers": [0], "rank": 0}]}, "rank must be a positive integer"),
    ({"methods": [{"method": "lora", "layers": [0], "targets": ["dense"]}]}, "targets must be a non-empty subset"),
    ({"methods": [{"method": "seq_bn", "layers": []}]}, "has no layers"),
    ({"methods": [{"method": "seq_bn", "layers": [0, 1]}, {"method": "seq_bn", "layers": [1]}]}, "appear in two"),
    ({"methods": [{"method": "prompt", "length": 2}, {"method": "prompt", "length": 3}]}, "at most 1"),
    ({"schema_version": 99, "methods": []}, "schema_version 99"),
])
def test_invalid_configs_name_the_problem(bad, message):
    with pytest.raises(ConfigError) as err:
        PeftConfig.from_dict(bad)
    assert message in str(err.value)


def test_layers_checked_against_model():
    with pytest.raises(ConfigError, match=r"layer\(s\) \[7\] do not exist; the model has 6 layers"):
        PeftConfig((SeqBnConfig((0, 7), 8),)).check_model(6)


def test_canonical_form_ignores_how_entries_are_split_and_ordered():
    every = (0, 1, 2)
    one = PeftConfig((LoRAConfig(every, 8, 16, ("query", "value")), BitFitConfig(every)))
    split = PeftConfig((BitFitConfig(every), LoRAConfig(every, 8, 16, ("value",)), LoRAConfig(every, 8, 16, ("query",))))
    assert one != split and one.canonical() == split.canonical()
    assert PeftConfig((LoRAConfig(every, 4, 16, ("query", "value")),)).canonical() != one.canonical()
    assert PeftConfig((LoRAConfig(every, 8, 16, ("query",)),)).canonical() != \
        PeftConfig((LoRAConfig(every, 8, 16, ("query", "value")),)).canonical()


def test_lora_and_ia3_on_one_module_clash_and_the_first_keeps_it():
    # `adapters` composes two LoRA-type adapters on a module in sequence, so such a pair trains nothing.
    lora_k = LoRAConfig((0, 1, 2), 4, 16, ("key",))
    ia3 = IA3Config((1, 2), ("key", "value", "intermediate"))
    config = PeftConfig((lora_k, ia3, SeqBnConfig((1,), 8)))
    assert config.module_clashes() == [
        "lora(key)[0,1,2] r4 and ia3(key,value,intermediate)[1,2] both adapt key in layer(s) [1, 2]"]
    kept = config.without_module_clashes()
    assert kept.methods == (lora_k, IA3Config((1, 2), ("value", "intermediate")), SeqBnConfig((1,), 8))
    assert kept.module_clashes() == []
    # Partly taken: (IA)3 keeps key only where LoRA is not, as its own entry.
    partly = PeftConfig((LoRAConfig((0,), 4, 16, ("key",)), IA3Config((0, 1), ("key", "value"))))
    assert partly.without_module_clashes().methods == (
        LoRAConfig((0,), 4, 16, ("key",)), IA3Config((1,), ("key",)), IA3Config((0, 1), ("value",)))
    # Nothing free: the entry goes; two LoRA entries on one module clash too; other methods never do.
    assert PeftConfig((LoRAConfig((0, 1), 4, 16, ("value",)), IA3Config((0, 1), ("value",)))
                      ).without_module_clashes().methods == (LoRAConfig((0, 1), 4, 16, ("value",)),)
    assert len(PeftConfig((LoRAConfig((0,), 4, 16, ("query",)), LoRAConfig((0, 1), 2, 16, ("query",)))
                          ).module_clashes()) == 1
    for fine in (PeftConfig((LoRAConfig((0, 1), 4, 16, ("key",)), LoRAConfig((2,), 2, 16, ("key",)),
                             IA3Config((0, 1, 2), ("value", "intermediate")), BitFitConfig((0,)))),
                 PeftConfig((SeqBnConfig((0,), 8), ParBnConfig((0,), 8, position="attention")))):
        assert fine.module_clashes() == [] and fine.without_module_clashes() == fine


def test_budget_round_trip_and_validation():
    b = TrainBudget(train_examples=None, epochs=2.5, learning_rate=1e-3)
    assert TrainBudget.from_dict(json.loads(json.dumps(b.to_dict()))) == b
    with pytest.raises(ConfigError, match="unknown key"):
        TrainBudget.from_dict({"lr": 1})
    with pytest.raises(ConfigError, match="batch_size must be positive"):
        TrainBudget(batch_size=0)
