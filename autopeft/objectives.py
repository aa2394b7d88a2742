"""Objectives: what a trial measures and a search may optimise, one registry entry each.

An objective is a number every trial reports under its ``key`` (the same key in the Ray result,
the Optuna study's metric names, MLflow metrics, the front CSV and the report). Its entry says
which way is better, its unit and axis scale, the constraint it gets (``--max-latency`` ...), and
how a trial measures it. ``metric``, ``trainable_params`` and ``peak_memory_mb`` come out of
training itself (``measure`` is None); ``latency_ms`` and objectives registered by plugins are
measured after training by their ``measure`` function, in every trial, so any finished search can
be re-read with any objective.

Adding an objective = one ``register_objective(Objective(...))`` call with its measurement, in
this package or in a module named by ``AUTOPEFT_PLUGINS`` (which Ray trials inherit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Callable

from autopeft.errors import ConfigError

if TYPE_CHECKING:
    from autopeft.trial import TrainedTrial


@dataclass(frozen=True)
class Objective:
    key: str = field(metadata={"help": "name in trial reports, Optuna, MLflow and the CLI"})
    direction: str = field(metadata={"help": "'max' or 'min': which way is better"})
    label: str = field(metadata={"help": "axis and column title"})
    unit: str = field(default="", metadata={"help": "shown after values and in axis titles"})
    log_scale: bool = field(default=False, metadata={
        "help": "spans orders of magnitude: log axes, and log10 before hypervolume"})
    limit: str | None = field(default=None, metadata={
        "help": "CLI/keyword name of its constraint, e.g. max_latency; bounds the bad direction"})
    fmt: str = field(default=".4g", metadata={"help": "format spec for tables"})
    measure: Callable[["TrainedTrial"], float | Mapping[str, float]] | None = field(
        default=None, compare=False, metadata={
            "help": "how a trial measures it after training (its value, or a mapping holding it under `key` "
                    "plus details to report beside it); None when training reports it itself"})
    help: str = ""

    def __post_init__(self) -> None:
        if self.direction not in ("max", "min"):
            raise ValueError(f"objective {self.key!r}: direction must be 'max' or 'min', got {self.direction!r}")

    @property
    def title(self) -> str:
        return f"{self.label} ({self.unit})" if self.unit else self.label

    def format(self, value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return format(int(value), ",") if self.fmt == "," else format(float(value), self.fmt)

    def allows(self, value: Any, bound: float) -> bool:
        """Whether ``value`` meets a constraint ``bound`` (a floor for 'max', a ceiling for 'min')."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        return value >= bound if self.direction == "max" else value <= bound

    def violation(self, value: float, bound: float) -> float:
        """How far ``value`` is past ``bound``, relative to it: <= 0 meets it (Optuna's constraint
        convention). Relative, so a parameter ceiling and a latency ceiling weigh alike."""
        over = value - bound if self.direction == "min" else bound - value
        return over / abs(bound) if bound else over

    def scaled(self, value: float) -> float:
        """The value as hypervolume and plots compare it: log10 for log-scale objectives."""
        return math.log10(value) if self.log_scale and value > 0 else float(value)


_REGISTRY: dict[str, Objective] = {}

# The task's primary metric is reported as ``metric`` (its real name, e.g. accuracy, beside it).
METRIC = "metric"
TRAINABLE_PARAMS = "trainable_params"
PEAK_MEMORY_MB = "peak_memory_mb"
LATENCY_MS = "latency_ms"
DEFAULT_OBJECTIVES = (METRIC, TRAINABLE_PARAMS)


def register_objective(objective: Objective) -> Objective:
    if objective.key in _REGISTRY:
        raise ValueError(f"objective {objective.key!r} is registered twice")
    _REGISTRY[objective.key] = objective
    return objective


def available_objectives() -> dict[str, Objective]:
    _load_plugins()
    return dict(_REGISTRY)


def get_objective(key: str) -> Objective:
    _load_plugins()
    try:
        return _REGISTRY[key]
    except KeyError:
        raise ConfigError(f"unknown objective {key!r}; known objectives: {', '.join(_REGISTRY)}") from None


def resolve_objectives(keys: str | tuple[str, ...] | list[str]) -> dict[str, Objective]:
    """Objective key -> entry, in the given order; ``metric`` must be among them."""
    if isinstance(keys, str):
        keys = [k.strip() for k in keys.split(",") if k.strip()]
    out = {key: get_objective(key) for key in keys}
    if METRIC not in out:
        raise ConfigError(f"the objectives must include {METRIC!r} (the task metric); got {', '.join(keys) or 'none'}")
    if len(out) < 2:
        raise ConfigError("a search needs at least two objectives: the task metric and a cost "
                          f"({', '.join(k for k in _REGISTRY if k != METRIC)})")
    return out


def directions(objectives: dict[str, Objective]) -> dict[str, str]:
    return {k: o.direction for k, o in objectives.items()}


def measure_all(trained: "TrainedTrial", keys: Iterable[str] | None = None) -> dict[str, float]:
    """Every registered objective that has a measurement (or those of ``keys``), measured on a
    trained trial, with the details each measurement reports beside its value."""
    out: dict[str, float] = {}
    wanted = None if keys is None else set(keys)
    for key, obj in available_objectives().items():
        if obj.measure is None or (wanted is not None and key not in wanted):
            continue
        value = obj.measure(trained)
        out.update({k: float(v) for k, v in value.items()} if isinstance(value, Mapping) else {key: float(value)})
        if key not in out:
            raise ValueError(f"objective {key!r}: its measurement returned no {key!r} entry")
    return out


def _measure_latency(trained: "TrainedTrial") -> Mapping[str, float]:
    from autopeft.latency import measure_latency

    return measure_latency(trained.built.model, trained.budget.max_seq_length, trained.device).to_report()


def _load_plugins() -> None:
    import autopeft.methods  # noqa: F401  (importing the method registry loads AUTOPEFT_PLUGINS)


register_objective(Objective(METRIC, "max", "task metric", fmt=".4f",
                             limit="min_metric", help="the task's primary metric on the scoring split"))
register_objective(Objective(TRAINABLE_PARAMS, "min", "trainable parameters", log_scale=True, fmt=",",
                             limit="max_params", help="parameters that train (PEFT modules and the task head)"))
register_objective(Objective(PEAK_MEMORY_MB, "min", "peak training memory", "MB", fmt=".0f",
                             limit="max_memory", help="peak memory of training on the trial's device"))
register_objective(Objective(LATENCY_MS, "min", "inference latency", "ms/example", fmt=".3f",
                             limit="max_latency", measure=_measure_latency,
                             help="median inference time per example after training, LoRA/(IA)3 merged"))
