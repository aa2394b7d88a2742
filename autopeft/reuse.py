"""No paid duplicates: a sampled configuration that a finished trial of the study already
evaluated is not trained again, and one below the space's minimum trainable size is not trained
at all. Plain functions over the Optuna study (no Ray): ``ray_glue.StudySearcher`` calls them
between sampling a trial and handing it to Ray Tune.

Two trials are the same evaluation when they build the same model (``PeftConfig.canonical()``:
entry order and splitting do not matter) and train it the same way (the search's budget with the
trial's sampled training settings applied).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from optuna.trial import FrozenTrial, TrialState

from autopeft.config import PeftConfig, TrainBudget
from autopeft.study import FIDELITY_ATTR, INTERRUPTED_ATTR, REFUSED_ATTR, RUNG_ATTR, STOPPED_ATTR

CONFIG_KEY_ATTR = "autopeft_config_key"  # every asked trial: what it evaluates
REUSE_ATTR = "autopeft_reuse_of"  # a reused trial: the number of the trial whose result it holds
# Attributes a reuse copies from its source, so the sampler sees the same fidelity.
COPIED_ATTRS = (RUNG_ATTR, FIDELITY_ATTR, STOPPED_ATTR)


def config_key(config: dict[str, Any], budget: TrainBudget) -> str:
    """One text per (model built, training run) of a sampled Ray config."""
    peft = PeftConfig.from_dict(config["peft_config"]).canonical()
    training = budget.replace(**config.get("training", {})).to_dict()
    return json.dumps({"peft": json.loads(peft), "training": training}, sort_keys=True)


def evaluated(trials: list[FrozenTrial], key: str) -> FrozenTrial | None:
    """The finished, original (not itself reused) trial that evaluated ``key`` at the highest
    fidelity, the earliest of those: a stopped trial resumed by halving of the promotion type has
    a later trial at a higher rung with the same key."""
    found = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get(CONFIG_KEY_ATTR) == key
             and REUSE_ATTR not in t.user_attrs and not t.user_attrs.get(INTERRUPTED_ATTR)]
    return min(found, key=lambda t: (-t.user_attrs.get(FIDELITY_ATTR, 1.0), t.number), default=None)


def tell_reuse(study: Any, trial: Any, source: FrozenTrial) -> None:
    """Finish ``trial`` (asked, sampled) with ``source``'s values, fidelity and constraints."""
    trial.set_user_attr(REUSE_ATTR, source.number)
    for attr in COPIED_ATTRS:
        if attr in source.user_attrs:
            trial.set_user_attr(attr, source.user_attrs[attr])
    for name, value in source.constraints.items():
        trial.set_constraint(name, value)
    study.tell(trial, source.values)


def tell_refused(study: Any, trial: Any, reason: str) -> None:
    """Finish ``trial`` as refused: FAIL (samplers learn nothing false from it), not counted."""
    trial.set_user_attr(REFUSED_ATTR, reason)
    study.tell(trial, state=TrialState.FAIL)


@dataclass
class Vetting:
    """What happens to a sampled trial before Ray runs it: ``run`` it, ``reuse`` a finished
    trial's result, or ``refuse`` it (its PEFT modules add fewer parameters than the space allows)."""

    budget: TrainBudget
    min_peft_params: int = 0
    count: Callable[[PeftConfig], int] | None = None  # trainable parameters of a config (build.count_trainable_params)
    _counts: dict[str, int] = field(default_factory=dict)

    def check(self, trials: list[FrozenTrial], trial: Any, config: dict[str, Any]) -> tuple[str, Any]:
        """("run", None), ("reuse", source trial) or ("refuse", reason); stamps the trial's key."""
        key = self.stamp(trial, config)
        source = evaluated(trials, key)
        if source is not None:
            return "reuse", source
        if self.min_peft_params and self.count is not None:
            peft = PeftConfig.from_dict(config["peft_config"])
            # Every entry is validated non-empty (layers, targets, a positive size), so it adds
            # parameters: the shipped floor of 1 needs no model built on each ask.
            if peft.methods and self.min_peft_params <= 1:
                return "run", None
            added = self._trainable(peft) - self._trainable(PeftConfig(())) if peft.methods else 0
            if added < self.min_peft_params:
                return "refuse", (f"{peft.describe()} adds {added:,} parameters to the task head, below the "
                                  f"space's min_peft_params {self.min_peft_params:,}")
        return "run", None

    def stamp(self, trial: Any, config: dict[str, Any]) -> str:
        """Record what ``trial`` evaluates (a later duplicate finds it by this key)."""
        key = config_key(config, self.budget)
        trial.set_user_attr(CONFIG_KEY_ATTR, key)
        return key

    def _trainable(self, peft: PeftConfig) -> int:
        canonical = peft.canonical()
        if canonical not in self._counts:
            self._counts[canonical] = self.count(peft)
        return self._counts[canonical]
