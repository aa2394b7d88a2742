"""The Hugging Face `peft` form of a configuration, for people who load adapters with
``PeftModel.from_pretrained``.

Search trials train through `adapters` (``build.py``). peft holds a subset of autopeft's
configurations: one method per adapter (LoRA with per-module ranks, (IA)3, prefix tuning, prompt
tuning), with the task head as ``modules_to_save``; it has no bottleneck adapters and no BitFit,
and it cannot combine (IA)3 or prefixes with LoRA. For that subset ``to_peft`` gives the peft
config and the peft-built model, which ``autopeft train`` trains instead of the `adapters` one so
that the saved adapter is exactly what was trained and evaluated. For the rest it gives one line
naming the part peft cannot hold.

The target modules are read off the model `adapters` built (the modules it wrapped, with their
rank and alpha), not from a table of BERT names, so the mapping follows every architecture the
builder supports. Both builds must train the same number of parameters, else no peft form.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from autopeft.build import BuiltModel, build_model, count_all, count_trainable, load_base, prefix_mlp_hidden
from autopeft.config import PeftConfig
from autopeft.models import ModelInfo, inspect_model

PEFT_DIR = "peft"  # the adapter folder inside an `autopeft train` output
# Why peft cannot hold a method at all (anything not in _BUILDERS gets a generic line).
_NO_PEFT = {
    "seq_bn": "seq_bn (serial bottleneck adapter): peft has no bottleneck adapters",
    "par_bn": "par_bn (parallel bottleneck adapter): peft has no bottleneck adapters",
    "bitfit": "bitfit: peft has no BitFit (its BEFT learns offsets of linear-layer biases only, "
              "not the LayerNorm biases BitFit trains)",
}


class _NoPeftForm(Exception):
    """Carries the one line saying which part of a config peft cannot hold."""


@dataclass(frozen=True)
class PeftForm:
    config: dict[str, Any] | None  # ``peft.get_peft_config(config)`` builds it; None: no peft form
    reason: str | None = None  # why there is none, naming the part

    def note(self) -> str:
        """The line a command prints when it keeps the `adapters` form."""
        return f"no peft form: {self.reason}; the `adapters` form is kept"


def to_peft(model_name: str, peft: PeftConfig, num_labels: int, seed: int = 0,
            info: ModelInfo | None = None) -> tuple[PeftForm, BuiltModel | None]:
    """The peft form of ``peft`` on ``model_name`` and the model peft builds from it (None without one)."""
    info = info or inspect_model(model_name)
    reference = build_model(model_name, peft, num_labels, seed=seed, info=info)
    try:
        config = peft_config(peft, reference.model, info.num_layers)
    except _NoPeftForm as exc:
        return PeftForm(None, str(exc)), None
    built = build_peft_model(model_name, config, num_labels, seed=seed, info=info)
    if built.trainable_params != reference.trainable_params:  # a mapping this module got wrong: never ship it
        return PeftForm(None, f"{peft.describe()}: peft's form trains {built.trainable_params:,} parameters, "
                              f"autopeft's {reference.trainable_params:,}"), None
    return PeftForm(config), built


def peft_config(peft: PeftConfig, model: nn.Module, num_layers: int) -> dict[str, Any]:
    """The peft config (a ``get_peft_config`` dict) of ``peft``, as `adapters` placed it in ``model``."""
    methods = peft.by_method()
    if not methods:
        raise _NoPeftForm("the task head alone: a peft adapter needs a PEFT method")
    for name in methods:
        if name not in _BUILDERS:
            raise _NoPeftForm(_NO_PEFT.get(name, f"{name}: peft has no form of this method"))
    if len(methods) != 1:
        raise _NoPeftForm(f"{' with '.join(methods)}: peft holds one method per model and cannot combine "
                          "these (its mixed models take LoRA-family methods only)")
    (name, entries), = methods.items()
    config = _BUILDERS[name](entries, model, num_layers)
    return {"task_type": "SEQ_CLS", **config}


def build_peft_model(model_name: str, config: dict[str, Any], num_labels: int, seed: int = 0,
                     info: ModelInfo | None = None) -> BuiltModel:
    """The base model with a fresh head under peft's ``config``; only peft's modules and the head train."""
    from peft import get_peft_config, get_peft_model

    from autopeft.export import HUB_IDS

    torch.manual_seed(seed)  # the head and the peft modules are initialised from this seed
    model, tokenizer, info = load_base(model_name, num_labels, info)
    base_params = count_all(model)
    model = get_peft_model(model, get_peft_config(copy.deepcopy(config)))  # peft extends lists it is given
    # What AutoPeftModel... loads the base from: the Hub id of the embedded default, else as given.
    model.peft_config["default"].base_model_name_or_path = HUB_IDS.get(model_name, model_name)
    return BuiltModel(model, tokenizer, info, [PEFT_DIR], base_params, count_trainable(model))


# ---------------------------------------------------------------------------- per method


def _head_modules(model: nn.Module) -> list[str]:
    """Top-level modules outside the encoder that hold weights: the task head (classifier, score, ...)."""
    body = {id(p) for p in model.base_model.parameters()}
    return sorted(name for name, child in model.named_children()
                  if any(id(p) not in body for p in child.parameters()))


def _placed(model: nn.Module, kind: str) -> dict[str, Any]:
    """Module path -> the one `adapters` LoRA-type module of class ``kind`` ("LoRA", "IA3") wrapping it."""
    found: dict[str, Any] = {}
    for path, module in model.named_modules():
        loras = getattr(module, "loras", None)
        if not isinstance(loras, nn.ModuleDict):
            continue
        mine = [m for m in loras.values() if type(m).__name__ == kind]
        if not mine:
            continue
        if "Merged" in type(module).__name__:  # GPT-2's c_attn: `adapters` adapts a slice of it
            raise _NoPeftForm(f"{kind.lower()} on {path}: the model fuses query, key and value there and the "
                              "config adapts only some of them; peft adapts whole modules")
        if len(mine) > 1:
            raise _NoPeftForm(f"{kind.lower()}: {len(mine)} entries adapt {path}; peft gives a module one {kind}")
        found[path] = (module, mine[0])
    return found


def _fan_in_fan_out(placed: dict[str, Any], kind: str) -> bool:
    # Conv1D layers (GPT-2) store weights transposed; peft takes one setting per adapter.
    flags = {bool(getattr(module, "fan_in_fan_out", False)) for module, _ in placed.values()}
    if len(flags) > 1:
        raise _NoPeftForm(f"{kind.lower()}: its modules mix linear and transposed (Conv1D) weights; "
                          "peft takes one layout per adapter")
    return flags.pop()


def _lora(entries: Sequence[Any], model: nn.Module, num_layers: int) -> dict[str, Any]:
    placed = _placed(model, "LoRA")
    ranks = {path: int(lora.r) for path, (_, lora) in placed.items()}
    alphas = {path: int(lora.lora_alpha) for path, (_, lora) in placed.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    # peft matches pattern keys as regexes ending a module path: escaped full paths match one module.
    return {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none",
            "target_modules": sorted(placed),
            "rank_pattern": {re.escape(p): v for p, v in sorted(ranks.items()) if v != r},
            "alpha_pattern": {re.escape(p): v for p, v in sorted(alphas.items()) if v != alpha},
            "fan_in_fan_out": _fan_in_fan_out(placed, "LoRA"), "modules_to_save": _head_modules(model)}


def _ia3(entries: Sequence[Any], model: nn.Module, num_layers: int) -> dict[str, Any]:
    placed = _placed(model, "IA3")
    # `adapters` scales each module's output; peft does so for modules not listed as feed-forward
    # (those it scales at the input), so none is.
    return {"peft_type": "IA3", "target_modules": sorted(placed), "feedforward_modules": [],
            "fan_in_fan_out": _fan_in_fan_out(placed, "IA3"), "modules_to_save": _head_modules(model)}


def _prefix(entries: Sequence[Any], model: nn.Module, num_layers: int) -> dict[str, Any]:
    (e,) = entries
    if set(e.layers) != set(range(num_layers)):
        raise _NoPeftForm(f"prefix in layers {list(e.layers)} only: peft puts a prefix in every layer "
                          f"(all {num_layers})")
    # The reparameterising MLP has the same shape in both libraries when its hidden size matches.
    return {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": e.length, "prefix_projection": not e.flat,
            "encoder_hidden_size": prefix_mlp_hidden()}


def _prompt(entries: Sequence[Any], model: nn.Module, num_layers: int) -> dict[str, Any]:
    (e,) = entries
    return {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": e.length}


_BUILDERS = {"lora": _lora, "ia3": _ia3, "prefix": _prefix, "prompt": _prompt}
