"""Optuna's GPSampler, safe to share one study between several drivers.

Per ask, ``GPSampler`` reads the study twice: once for the relative search space (the parameters
every completed trial has) and once for the trials it fits. With several drivers on one study
(``autopeft search`` joined by a second process, or a cluster), a trial another driver completes in
between can lack a parameter of that space: in a conditional space a trial with ``seq_bn/use``
false has no ``seq_bn/layer00/size``. Optuna 5.0 then raises ``KeyError`` from inside ``ask`` and
the driver stops. Here the space is worked out again on the trials as they are now and the
sampling retried; should it still fail, the trial is sampled by the independent (random) sampler,
as a start-up trial would be, instead of stopping the search.

A configuration the space refuses (``min_peft_params``, reuse.py) is told FAIL, and Optuna's GP
fits only completed trials: it never learns the point is out of bounds and, where the metric is
flat in size (the head-only config then promises the most hypervolume), proposes it again at every
ask until the search gives up (`tests/test_spaces.py`). Refused trials are therefore handed to
the acquisition function as pending points, as running trials are: their neighbourhood promises
nothing new, and the sampler moves on after one refusal.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState

from autopeft.study import REFUSED_ATTR

# Optuna warns once, at its first GP fit, that without `greenlet` it optimises the acquisition from
# each start point in turn. Measured (benchmarks/README.md, "Ask cost"): 0.93-1.32x the ask's CPU,
# inside the ask-to-ask noise, at a search's study sizes. Not news a user can act on.
logging.getLogger("optuna._gp.batched_lbfgsb").addFilter(lambda record: "greenlet" not in record.getMessage())


class GPSampler(optuna.samplers.GPSampler):
    def plan_trials(self, n_trials: int) -> None:
        """Size the random start-up phase for a search of ``n_trials`` (``samplers._startup``).

        The sampler is built for the search's trial target; a CPU budget (``--cpu-budget-s``)
        may buy far fewer trials, and a start-up phase sized for 200 trials took 11 of the 14-18
        trials of the suite's two-seed searches. Only ever shortened, so a sampler already past
        its start-up phase never returns to random draws when trials get cheaper."""
        from autopeft.samplers import _startup

        self._n_startup_trials = min(self._n_startup_trials, _startup(n_trials))

    @property
    def startup_trials(self) -> int:
        """Finished trials before the GP takes over from random draws (recorded on each trial)."""
        return self._n_startup_trials

    def _sample_relative_impl(self, study: optuna.Study, completed_trials: list, running_trials: list,
                              search_space: dict[str, Any]) -> dict[str, Any]:
        refused = [t for t in study._get_trials(deepcopy=False, states=(TrialState.FAIL,), use_cache=False)
                   if REFUSED_ATTR in t.user_attrs and search_space.keys() <= t.params.keys()]
        return super()._sample_relative_impl(study, completed_trials, [*running_trials, *refused], search_space)

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
