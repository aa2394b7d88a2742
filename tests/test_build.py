"""The builder: trainable counts equal requires_grad counts and an independent count per method;
only PEFT parameters and the head train; gradients reach every trainable parameter."""

from __future__ import annotations

import re

import pytest
import torch

from autopeft.build import build_model, count_trainable
from autopeft.config import PeftConfig
from autopeft.errors import ConfigError
from autopeft.methods import available_methods
from autopeft.methods.bitfit import BitFitConfig
from autopeft.methods.ia3 import IA3Config
from autopeft.methods.lora import LoRAConfig
from autopeft.methods.par_bn import ParBnConfig
from autopeft.methods.prefix import PrefixConfig
from autopeft.methods.prompt import PromptConfig
from autopeft.methods.seq_bn import SeqBnConfig
from tests.conftest import TINY_HIDDEN as H, TINY_INTERMEDIATE as I, TINY_LAYERS as L

LABELS = 2
HEAD = H * LABELS + LABELS
DIMS = {"query": (H, H), "key": (H, H), "value": (H, H), "intermediate": (H, I), "output": (I, H)}  # (in, out)


def bottleneck(size: int) -> int:
    return 2 * H * size + size + H  # down (weights + bias) and up (weights + bias)


def expected(entry) -> int:
    """Trainable parameters of one entry, computed from the architecture, not from the model."""
    n = len(entry.layers)
    m = entry.method
    if m in ("seq_bn", "par_bn"):
        return n * bottleneck(entry.size) * (2 if entry.position == "both" else 1)
    if m == "lora":
        return n * sum(entry.rank * (DIMS[t][0] + DIMS[t][1]) for t in entry.targets)
    if m == "ia3":
        return n * sum(DIMS[t][1] for t in entry.targets)
    if m == "prefix":
        assert entry.flat, "the MLP-reparameterised count is checked separately"
        return entry.length * n * 2 * H
    if m == "prompt":
        return entry.length * H
    if m == "bitfit":  # q,k,v,attn-out, attn LN, FFN-out, out LN biases + FFN-up bias
        return n * (7 * H + I)
    raise AssertionError(m)


CASES = {
    "seq_bn": PeftConfig((SeqBnConfig((0, 1, 2), 8),)),
    "seq_bn per-layer sizes": PeftConfig((SeqBnConfig((0, 2), 8), SeqBnConfig((1,), 5))),
    "par_bn": PeftConfig((ParBnConfig((1, 2), 6),)),
    "houlsby": PeftConfig((SeqBnConfig((0, 1, 2), 6, position="both"),)),
    "seq_bn at attention, par_bn at ffn": PeftConfig((SeqBnConfig((0, 1), 4, position="attention"),
                                                      ParBnConfig((1, 2), 6, position="ffn"))),
    "mam": PeftConfig((PrefixConfig((0, 1, 2), 5, flat=True), ParBnConfig((0, 1, 2), 16, position="ffn"))),
    "prefix flat": PeftConfig((PrefixConfig((0, 2), 5, flat=True),)),
    "lora": PeftConfig((LoRAConfig((0, 1, 2), 4, 8, ("query", "value")),)),
    "lora ffn": PeftConfig((LoRAConfig((1,), 2, 4, ("intermediate", "output")),)),
    "ia3": PeftConfig((IA3Config((0, 2)),)),
    "lora, a rank per layer on one module": PeftConfig((LoRAConfig((0, 1), 4, 8, ("key",)),
                                                        LoRAConfig((2,), 2, 4, ("key",)))),
    "bitfit": PeftConfig((BitFitConfig((1, 2)),)),
    "prompt": PeftConfig((PromptConfig(length=7),)),
    "head only": PeftConfig(()),
    "hybrid": PeftConfig((
        SeqBnConfig((0, 1), 8), SeqBnConfig((2,), 3), ParBnConfig((0, 1, 2), 4), PrefixConfig((1,), 3, flat=True),
        LoRAConfig((0, 1, 2), 4, 8, ("query", "value")), LoRAConfig((1,), 2, 4, ("key",)),
        IA3Config((1, 2), ("intermediate",)), IA3Config((2,), ("key",)),
        BitFitConfig((0,)), PromptConfig(length=2),
    )),
}


def test_cases_cover_every_method():
    covered = {e.method for c in CASES.values() for e in c.methods}
    # Every method autopeft ships; test plugins (tests/plugins) may have registered more.
    shipped = {name for name, spec in available_methods().items()
               if spec.config_cls.__module__.startswith("autopeft.methods.")}
    assert covered == shipped


@pytest.mark.parametrize("name", CASES)
def test_trainable_count_is_exact(tiny_bert, name):
    config = CASES[name]
    built = build_model(tiny_bert, config, LABELS, seed=0)
    by_grad = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    assert built.trainable_params == by_grad == count_trainable(built.model)
    assert built.trainable_params == HEAD + sum(expected(e) for e in config.methods)
    assert built.base_params == sum(p.numel() for n, p in built.model.named_parameters()
                                    if not _is_peft(n))  # PEFT adds, never replaces
    assert 0 < built.trainable_percent < 100


def test_prefix_mlp_count(tiny_bert):
    # The reparameterising MLP (bottleneck 512) trains too and is counted while training.
    built = build_model(tiny_bert, PeftConfig((PrefixConfig((0, 1, 2), 4),)), LABELS)
    mlp = 4 * H + (H * 512 + 512) + (512 * L * 2 * H + L * 2 * H)
    assert built.trainable_params == HEAD + mlp


_PEFT_NAME = re.compile(r"adapters\.|loras\.|prefix_tuning|prompt_tuning|\.lora_|shared_parameters")


def _is_peft(name: str) -> bool:
    return bool(_PEFT_NAME.search(name))


@pytest.mark.parametrize("name", CASES)
def test_only_peft_and_head_train_and_all_get_gradients(tiny_bert, name):
    config = CASES[name]
    built = build_model(tiny_bert, config, LABELS, seed=0)
    model = built.model
    bitfit_layers = {i for e in config.methods if e.method == "bitfit" for i in e.layers}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = re.search(r"\.layer\.(\d+)\.", n)
        ok = (_is_peft(n) or n.startswith("classifier.")
              or (n.endswith(".bias") and layer and int(layer.group(1)) in bitfit_layers))
        assert ok, f"{n} trains but is neither PEFT, head nor a BitFit bias"
    ids = torch.randint(1000, 2000, (4, 12))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1, 0, 1]))
    out.loss.backward()
    # A zero gradient is a parameter that cannot learn (as (IA)3 stacked on a LoRA on one module),
    # unless its output side starts at zero (LoRA's B, a parallel adapter's up-projection).
    params = dict(model.named_parameters())
    starved = [n for n, p in params.items()
               if p.requires_grad and (p.grad is None or (not p.grad.any() and not _fed_through_zeros(n, params)))]
    assert not starved, f"trainable parameters that get no gradient: {starved[:5]}"


def _fed_through_zeros(name: str, params: dict) -> bool:
    for down, up in (("lora_A", "lora_B"), ("adapter_down.0.", "adapter_up.")):
        if down in name:
            partner = name.split(down)[0] + up + ("weight" if up.endswith(".") else "")
            return partner in params and not params[partner].any()
    return False


def test_lora_and_ia3_on_one_module_are_refused(tiny_bert):
    # Stacked, (IA)3 would scale the LoRA update (zero at init) instead of the module's output:
    # the module's output is zeroed and neither adapter learns.
    config = PeftConfig((LoRAConfig((0, 1), 4, 8, ("query", "value")), IA3Config((1, 2))))
    with pytest.raises(ConfigError, match=r"both adapt value in layer\(s\) \[1\].*neither would train"):
        build_model(tiny_bert, config, LABELS)
    built = build_model(tiny_bert, config.without_module_clashes(), LABELS)
    assert built.trainable_params == HEAD + sum(expected(e) for e in config.without_module_clashes().methods)


@pytest.mark.parametrize("entries", [
    (SeqBnConfig((0,), 4), ParBnConfig((1,), 4, position="ffn")),
    (SeqBnConfig((0,), 4, position="both"), ParBnConfig((1,), 4)),
    (SeqBnConfig((0,), 4, position="attention"), ParBnConfig((1,), 4)),
], ids=["ffn", "both vs attention", "attention"])
def test_two_bottlenecks_at_one_position_are_refused(tiny_bert, entries):
    # `adapters` would either refuse the union or stack them and starve one of gradient.
    with pytest.raises(ConfigError, match="both need the .* bottleneck position"):
        build_model(tiny_bert, PeftConfig(entries), LABELS)


def test_position_round_trips_and_defaults():
    config = PeftConfig((SeqBnConfig((0, 1), 4, position="both"), ParBnConfig((2,), 3, position="ffn")))
    assert PeftConfig.from_json(config.to_json()) == config
    old = PeftConfig.from_dict({"methods": [{"method": "seq_bn", "layers": [0], "size": 4}]})
    assert old.methods[0].position == "ffn"  # files written before positions existed mean Pfeiffer
    with pytest.raises(ConfigError, match="position must be one of"):
        SeqBnConfig((0,), 4, position="middle")


def test_same_seed_same_init(tiny_bert):
    a = build_model(tiny_bert, CASES["hybrid"], LABELS, seed=3).model.state_dict()
    b = build_model(tiny_bert, CASES["hybrid"], LABELS, seed=3).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("config", [PeftConfig((SeqBnConfig((0, 1), 4),)),
                                    PeftConfig((LoRAConfig((0, 1), 2, 4, ("query", "value")),)),
                                    PeftConfig((BitFitConfig((1,)),))], ids=["seq_bn", "lora", "bitfit"])
def test_gpt2_family(tiny_gpt2, config):
    built = build_model(tiny_gpt2, config, LABELS)
    assert built.trainable_params == sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    assert built.trainable_params > H * LABELS  # more than the (bias-free) GPT-2 score head
    ids = torch.randint(1000, 2000, (2, 8))
    built.model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1])).loss.backward()
