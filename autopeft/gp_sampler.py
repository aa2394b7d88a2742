"""Optuna's GPSampler, safe to share one study between several drivers.

Per ask, ``GPSampler`` reads the study twice: once for the relative search space (the parameters
every completed trial has) and once for the trials it fits. With several drivers on one study
(``autopeft search`` joined by a second process, or a cluster), a trial another driver completes in
between can lack a parameter of that space: in a conditional space a trial with ``seq_bn/use``
false has no ``seq_bn/layer00/size``. Optuna 5.0 then raises ``KeyError`` from inside ``ask`` and
the driver stops. Here the space is worked out again on the trials as they are now and the
sampling retried; should it still fail, the trial is sampled by the independent (random) sampler,
as a start-up trial would be, instead of stopping the search.
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna


class GPSampler(optuna.samplers.GPSampler):
    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        search_space: dict[str, Any]) -> dict[str, Any]:
        try:
            return super().sample_relative(study, trial, search_space)
        except KeyError:
            pass
        # The space over the trials as they are now: a subset of the one given (it only shrinks as
        # trials complete), so the trial's relative search space still holds what comes back.
        fresh = self.infer_relative_search_space(study, trial)
        try:
            return super().sample_relative(study, trial, {k: v for k, v in fresh.items() if k in search_space})
        except KeyError as exc:
            warnings.warn(f"trial {trial.number}: the GP sampler found a completed trial without parameter {exc} "
                          "twice (another driver completing trials meanwhile); sampling this trial at random")
            return {}
