"""Applying a PeftConfig to a Hugging Face model: the only module that touches `adapters`.

Method entries become `adapters` configs (see each method's ``to_adapters``). The first config of
each architecture slot goes into one ConfigUnion adapter named ``autopeft``; further configs of a
slot (a second LoRA with another rank, (IA)3 beside LoRA) become adapters ``autopeft_1``, ...
stacked after it. The union comes first because prompt tuning only trains in the first adapter
of a Stack.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autopeft.config import PeftConfig
from autopeft.errors import ConfigError, ModelError
from autopeft.methods import AdaptersConfig, get_method
from autopeft.methods._base import BOTTLENECK_POSITIONS, BOTTLENECK_SLOTS
from autopeft.models import ModelInfo, inspect_model

ADAPTER_NAME = "autopeft"
_POSITION_OF = {slots[0]: pos for pos, slots in BOTTLENECK_POSITIONS.items() if len(slots) == 1}
_LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block)\.(\d+)\.")


def plan_adapters(peft: PeftConfig, num_layers: int, hidden: int) -> list[list[AdaptersConfig]]:
    """Group a config's `adapters` configs into adapters: [union members, extra 1, extra 2, ...]."""
    clashes = peft.module_clashes()
    if clashes:
        raise ConfigError(
            f"{clashes[0]}: `adapters` applies two LoRA-type adapters on one module in sequence, so neither "
            "would train; give them different targets or layers (a search space does this itself)")
    groups: list[list[AdaptersConfig]] = []
    taken: dict[str, str] = {}  # bottleneck slot -> the method in it
    for name, entries in peft.by_method().items():
        for cfg in get_method(name).to_adapters(entries, num_layers, hidden):
            for slot in BOTTLENECK_SLOTS.intersection(cfg.slots):
                if slot in taken:
                    raise ConfigError(
                        f"{taken[slot]} and {name} both need the {_POSITION_OF[slot]} bottleneck position, and "
                        "`adapters` trains only one adapter there; give one of them another position "
                        "(seq_bn: ffn|attention|both, par_bn: attention|ffn)")
                taken[slot] = name
            target = next((g for g in groups if not any(set(c.slots) & set(cfg.slots) for c in g)), None)
            if target is None:
                groups.append([cfg])
            else:
                target.append(cfg)
    return groups


def adapters_configs(peft: PeftConfig, num_layers: int, hidden: int) -> dict[str, Any]:
    """Adapter name -> `adapters` config object, in Stack order."""
    import adapters

    out: dict[str, Any] = {}
    for i, group in enumerate(plan_adapters(peft, num_layers, hidden)):
        members = [getattr(adapters, c.cls)(**c.kwargs) for c in group]
        name = ADAPTER_NAME if i == 0 else f"{ADAPTER_NAME}_{i}"
        out[name] = members[0] if len(members) == 1 else adapters.ConfigUnion(*members)
    return out


def prefix_mlp_hidden() -> int:
    """Hidden size of the MLP through which `adapters` trains a non-flat prefix (its default)."""
    import adapters

    return int(adapters.PrefixTuningConfig().bottleneck_size)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_all(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class BuiltModel:
    model: nn.Module
    tokenizer: Any
    info: ModelInfo
    adapter_names: list[str]
    base_params: int  # every parameter of the base model with its task head, before PEFT
    trainable_params: int

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / self.base_params


def load_base(model_name: str, num_labels: int, info: ModelInfo | None = None):
    """Base model with a fresh task head, and its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    info = info or inspect_model(model_name)
    hf_logging.set_verbosity_error()  # "newly initialized: classifier" is expected, not news
    try:
        tokenizer = AutoTokenizer.from_pretrained(info.path)
        model = AutoModelForSequenceClassification.from_pretrained(info.path, num_labels=num_labels)
    except Exception as exc:
        raise ModelError(f"cannot load base model {model_name!r} for sequence classification: {exc}") from None
    if tokenizer.pad_token is None:  # decoder models (GPT-2) ship without one
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, info


def build_model(model_name: str, peft: PeftConfig, num_labels: int, seed: int = 0,
                info: ModelInfo | None = None) -> BuiltModel:
    """Load the base model, apply ``peft``, and freeze everything but PEFT parameters and the head."""
    info = info or inspect_model(model_name)
    peft.check_model(info.num_layers)
    torch.manual_seed(seed)  # the head and the PEFT modules are initialised from this seed
    model, tokenizer, info = load_base(model_name, num_labels, info)
    base_params = count_all(model)

    names = _apply(model, peft, info)
    trainable = count_trainable(model)
    return BuiltModel(model, tokenizer, info, names, base_params, trainable)


def count_trainable_params(model_name: str, peft: PeftConfig, num_labels: int, info: ModelInfo | None = None) -> int:
    """What ``build_model(...).trainable_params`` would be, without loading a weight: the model is
    built on the meta device (shapes only), so a search driver can check a sampled config at once."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    info = info or inspect_model(model_name)
    peft.check_model(info.num_layers)
    config = AutoConfig.from_pretrained(info.path, num_labels=num_labels)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
        _apply(model, peft, info)
    return count_trainable(model)


def _apply(model: nn.Module, peft: PeftConfig, info: ModelInfo) -> list[str]:
    """Add ``peft``'s adapters to ``model`` and freeze all but them and the head; their names."""
    import adapters

    adapters.init(model)
    configs = adapters_configs(peft, info.num_layers, info.hidden_size)
    for name, cfg in configs.items():
        try:
            model.add_adapter(name, config=cfg)
        except Exception as exc:
            raise ModelError(f"{info.model_type} model cannot take {peft.describe()}: {exc}") from None
    names = list(configs)
    if names:
        setup = names[0] if len(names) == 1 else adapters.composition.Stack(*names)
        # train_adapter resets the adapters before it activates them and, in between, warns that
        # none is active: true of no forward pass, and noise on every build (the search driver
        # counts each sampled config's parameters this way).
        mixin_log = logging.getLogger("adapters.model_mixin")
        level = mixin_log.level
        mixin_log.setLevel(logging.ERROR)
        try:
            model.train_adapter(setup)
        finally:
            mixin_log.setLevel(level)
    else:
        model.requires_grad_(False)
    _mark_head_and_base_trainable(model, peft)
    return names


def build_full_model(model_name: str, num_labels: int, seed: int = 0, info: ModelInfo | None = None) -> BuiltModel:
    """The reference PEFT is compared against: the base model with a fresh head, every weight trainable."""
    torch.manual_seed(seed)
    model, tokenizer, info = load_base(model_name, num_labels, info)
    model.requires_grad_(True)
    every = count_all(model)
    return BuiltModel(model, tokenizer, info, [], every, every)


def _mark_head_and_base_trainable(model: nn.Module, peft: PeftConfig) -> None:
    body = {id(p) for p in model.base_model.parameters()}
    groups = peft.by_method()
    hooks = [(get_method(n).trains_base_param, entries) for n, entries in groups.items()
             if get_method(n).trains_base_param is not None]
    for name, param in model.named_parameters():
        if id(param) not in body:  # the task head
            param.requires_grad_(True)
            continue
        match = _LAYER_INDEX.search("." + name)
        layer = int(match.group(1)) if match else None
        if any(hook(entries, name, layer) for hook, entries in hooks):
            param.requires_grad_(True)


def merge_for_inference(model: nn.Module) -> int:
    """Fold LoRA and (IA)3 weights into the base weights they adapt, as a deployed model would.

    `adapters` keeps one merged adapter per module and skips every other adapter of that module
    once one is merged, so a module that holds several stays unmerged: its output would change
    otherwise (``plan_adapters`` refuses such configs, which cannot train either). Returns the
    number of modules merged.
    """
    from adapters.methods.lora import LoRALayer

    merged = 0
    for module in model.modules():
        if isinstance(module, LoRALayer) and len(module.loras) == 1 and not module.merged:
            (name, lora), = module.loras.items()
            if getattr(lora, "use_gating", False):  # gated LoRA depends on the input: cannot fold
                continue
            module.merge_adapter(name)
            merged += 1
    return merged
