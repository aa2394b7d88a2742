"""What every PEFT method declares: its config dataclass and how it maps onto `adapters`.

A method file holds a frozen dataclass (pure data, validated on creation) and a `MethodSpec` that
tells the space parser which parameters exist and the builder which `adapters` config to make.
Method files never import a PEFT library: `build.py` is the only place that does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

from autopeft.errors import ConfigError

# Modules a method may target inside each transformer layer, named as users know them.
# query/key/value: self-attention projections; intermediate: FFN up-projection;
# output: FFN down-projection.
TARGET_MODULES = ("query", "key", "value", "intermediate", "output")


@dataclass(frozen=True)
class MethodConfig:
    """Base of all method configs. ``layers`` is where the method goes (0-based layer indices)."""

    method: ClassVar[str]
    layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # JSON gives lists; keep configs hashable and comparable by normalising to sorted tuples.
        object.__setattr__(self, "layers", tuple(sorted({int(i) for i in self.layers})))
        if any(i < 0 for i in self.layers):
            raise ConfigError(f"{self.method}: layer indices must be >= 0, got {list(self.layers)}")

    def check_model(self, num_layers: int) -> None:
        """Raise ConfigError if this config cannot go on a model with ``num_layers`` layers."""
        bad = [i for i in self.layers if i >= num_layers]
        if bad:
            raise ConfigError(
                f"{self.method}: layer(s) {bad} do not exist; the model has {num_layers} layers "
                f"(valid indices 0..{num_layers - 1})"
            )

    def describe(self) -> str:
        return f"{self.method}{_layers_str(self.layers)}"

    def words(self) -> str:
        """This entry in words; methods override it (a plugin without one reads as ``describe``)."""
        return self.describe()


def layers_words(layers: Sequence[int]) -> str:
    """``in layers 0-5`` for a run of layers, ``in layers 0, 2, 4`` otherwise."""
    if len(layers) == 1:
        return f"in layer {layers[0]}"
    if list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"in layers {layers[0]}-{layers[-1]}"
    return "in layers " + ", ".join(map(str, layers))


def _layers_str(layers: Sequence[int]) -> str:
    return "[" + ",".join(str(i) for i in layers) + "]"


def check_positive(method: str, name: str, value: Any, *, allow_float: bool = False) -> None:
    ok_types = (int, float) if allow_float else (int,)
    if isinstance(value, bool) or not isinstance(value, ok_types) or value <= 0:
        kind = "a positive number" if allow_float else "a positive integer"
        raise ConfigError(f"{method}: {name} must be {kind}, got {value!r}")


def check_targets(method: str, targets: Sequence[str]) -> tuple[str, ...]:
    targets = tuple(targets)
    unknown = [t for t in targets if t not in TARGET_MODULES]
    if unknown or not targets:
        raise ConfigError(
            f"{method}: targets must be a non-empty subset of {list(TARGET_MODULES)}, "
            f"got {list(targets)}"
        )
    return tuple(t for t in TARGET_MODULES if t in targets)  # canonical order


@dataclass(frozen=True)
class AdaptersConfig:
    """One `adapters` config to create: its class name and keyword arguments.

    ``slots`` are the architecture positions it occupies: `adapters.ConfigUnion` takes one config
    per slot, so the builder stacks further configs of a slot as separate adapters, except in
    bottleneck slots, where a stacked adapter silently gets no gradient (``BOTTLENECK_SLOTS``).
    """

    cls: str
    kwargs: dict[str, Any]
    slots: tuple[str, ...]


# Where serial and parallel bottleneck adapters go in a layer, as the space and config name them,
# and the `adapters` slot each occupies.
BOTTLENECK_POSITIONS = {"ffn": ("bottleneck_output",), "attention": ("bottleneck_attention",),
                        "both": ("bottleneck_attention", "bottleneck_output")}
BOTTLENECK_SLOTS = frozenset(s for slots in BOTTLENECK_POSITIONS.values() for s in slots)


def check_choice(method: str, name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{method}: {name} must be one of {list(choices)}, got {value!r}")


@dataclass(frozen=True)
class MethodSpec:
    """Registry entry for one PEFT method."""

    name: str
    config_cls: type[MethodConfig]
    summary: str
    # Parameters a search space may sample, besides placement; the first is the size whose
    # value 0 means "method off" in a space (None when the method has no size, e.g. BitFit).
    params: tuple[str, ...]
    size_param: str | None
    # Whether the method is placed per layer (False: it acts once, e.g. prompt tuning).
    per_layer: bool
    # entries of this method in one PeftConfig -> adapters configs (empty for BitFit).
    to_adapters: Callable[[Sequence[MethodConfig], int, int], list[AdaptersConfig]] = field(repr=False)
    # How many entries of this method a PeftConfig may hold on the same layer.
    one_per_layer: bool = True
    # How many entries of this method one PeftConfig may hold (None: any number).
    max_entries: int | None = None
    # Whether the method wraps its ``targets`` modules in its ``layers`` with `adapters`' LoRA
    # layer (LoRA, (IA)3). `adapters` composes two such adapters on one module in sequence: the
    # second sees the first's output, not the module's input, so LoRA's zero-initialised update
    # zeroes what (IA)3 scales and neither trains. A module in a layer takes one of them at most.
    wraps_modules: bool = False
    # For methods that train existing weights instead of adding modules (BitFit): given the
    # entries, a base parameter's name and its layer index (None outside layers), train it?
    trains_base_param: Callable[[Sequence[MethodConfig], str, int | None], bool] | None = field(
        default=None, repr=False
    )


def reduction_factor(hidden: int, size: int) -> float:
    """The `adapters` reduction factor that yields exactly ``size`` bottleneck units.

    `adapters` sizes a bottleneck as ``int(hidden // factor)``; ``hidden / size`` can land a hair
    below ``size`` in floating point, so aim half a unit above it.
    """
    return hidden / (size + 0.5)


def per_layer_sizes(entries: Sequence[MethodConfig], attr: str) -> dict[int, int]:
    """Layer -> size over several entries of one method (entries are on disjoint layers)."""
    return {layer: getattr(e, attr) for e in entries for layer in e.layers}


def shared_value(entries: Sequence[MethodConfig], attr: str) -> Any:
    """The one value of ``attr`` that entries merged into one `adapters` config must share."""
    values = {getattr(e, attr) for e in entries}
    if len(values) > 1:
        method = entries[0].method
        raise ConfigError(f"{method}: all {method} entries of one config must share one {attr}, "
                          f"got {sorted(map(str, values))}")
    return values.pop()


def bottleneck_kwargs(entries: Sequence[MethodConfig], num_layers: int, hidden: int) -> dict[str, Any]:
    """Several bottleneck entries (different sizes on different layers) as one `adapters` config:
    a per-layer reduction factor, because a ConfigUnion refuses two configs of one kind."""
    sizes = per_layer_sizes(entries, "size")
    factors = {str(layer): reduction_factor(hidden, s) for layer, s in sizes.items()}
    factors["default"] = next(iter(factors.values()))
    return {"reduction_factor": factors, "leave_out": [i for i in range(num_layers) if i not in sizes]}
