"""Multi-objective Optuna samplers by name: the ``--sampler`` registry (no Ray here).

Each entry is a factory ``(seed, num_samples) -> optuna.samplers.BaseSampler``; its docstring's
first line is the CLI help. Adding a sampler = one decorated function.
"""

from __future__ import annotations

from typing import Any, Callable

SAMPLERS: dict[str, Callable[[int, int], Any]] = {}
STARTUP_SAMPLERS: set[str] = set()  # those that draw at random until `_startup` trials have finished
DEFAULT_SAMPLER = "gp"  # won the sampler benchmark (benchmarks/README.md)


def register_sampler(name: str, startup: bool = False):
    def register(fn):
        SAMPLERS[name] = fn
        if startup:
            STARTUP_SAMPLERS.add(name)
        return fn
    return register


def describe_samplers() -> str:
    """``name (first docstring line)`` for each sampler: the CLI help lists what is registered."""
    return ", ".join(f"{name} ({(fn.__doc__ or '').strip().splitlines()[0]})" if fn.__doc__ else name
                     for name, fn in SAMPLERS.items())


def make_sampler(name: str, seed: int, num_samples: int, asked: int = 0) -> Any:
    """The sampler ``name`` for a driver that finds ``asked`` trials already in its study.

    A new study's sampler is seeded with the search's seed. A resumed or joining driver's is seeded
    with (seed, asked): seeded alike, it would replay the first driver's random draws, and each
    replay is a duplicate, answered from the study and counted towards the target, so a resumed
    random search would fill its remaining trials with copies. Still reproducible: the same study
    resumed at the same point draws the same.
    """
    if asked:
        import numpy as np

        seed = int(np.random.SeedSequence([seed, asked]).generate_state(1)[0])
    return SAMPLERS[name](seed, num_samples)


def _startup(num_samples: int) -> int:
    # Few random start-up trials: searches here are tens of trials, not hundreds.
    return max(2, min(10, num_samples // 4))


def blind_trials(name: str, num_samples: int, concurrent: int) -> tuple[int, int] | None:
    """(how many trials start before sampler ``name`` has the results of its start-up trials, that
    start-up), where running ``concurrent`` at a time makes the first at least twice the second; else None.

    Trials of similar length start ``concurrent`` at once, and one more as each finishes, so about
    ``startup + concurrent - 1`` begin before the ``startup``-th result: those are drawn at random
    (or are warm starts), whatever the sampler. Measured on the GPU suite (benchmarks/README.md,
    "The suite at a larger budget on a GPU"): 20 trials, 12 at a time, start-up 5, and trials 0-11
    were the same configurations on all seven tasks."""
    if name not in STARTUP_SAMPLERS:
        return None  # random draws by design, or generations (NSGA-II) that wait for their results
    startup = _startup(num_samples)
    blind = min(num_samples, startup + concurrent - 1)
    return (blind, startup) if concurrent - 1 >= startup else None


@register_sampler("gp", startup=True)
def _gp(seed: int, num_samples: int):
    """Gaussian-process Bayesian optimisation of the hypervolume"""
    from autopeft.gp_sampler import GPSampler  # Optuna's, safe with several drivers on one study
    return GPSampler(seed=seed, n_startup_trials=_startup(num_samples))


@register_sampler("tpe", startup=True)
def _tpe(seed: int, num_samples: int):
    """multi-objective TPE"""
    import optuna
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=_startup(num_samples), constant_liar=True)


@register_sampler("nsga2")
def _nsga2(seed: int, num_samples: int):
    """NSGA-II, evolutionary"""
    import optuna
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, num_samples // 3)))


@register_sampler("random")
def _random(seed: int, num_samples: int):
    """uniform random"""
    import optuna
    return optuna.samplers.RandomSampler(seed=seed)
