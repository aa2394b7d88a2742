"""Serial bottleneck adapter (Houlsby et al., 2019; Pfeiffer placement: after the FFN)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

from autopeft.methods import register_method
from autopeft.methods._base import (
    AdaptersConfig, MethodConfig, MethodSpec, check_positive, per_layer_sizes, reduction_factor,
)


@dataclass(frozen=True)
class SeqBnConfig(MethodConfig):
    method: ClassVar[str] = "seq_bn"
    size: int = 16  # bottleneck units

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self.method, "size", self.size)

    def describe(self) -> str:
        return f"{super().describe()}x{self.size}"


def _to_adapters(entries: Sequence[SeqBnConfig], num_layers: int, hidden: int) -> list[AdaptersConfig]:
    # Several entries (different sizes on different layers) become one config with a per-layer
    # reduction factor, because a ConfigUnion refuses two SeqBn configs.
    sizes = per_layer_sizes(entries, "size")
    factors = {str(layer): reduction_factor(hidden, s) for layer, s in sizes.items()}
    factors["default"] = next(iter(factors.values()))
    leave_out = [i for i in range(num_layers) if i not in sizes]
    return [AdaptersConfig("SeqBnConfig", {"reduction_factor": factors, "leave_out": leave_out}, "bottleneck_output")]


SPEC = register_method(MethodSpec(
    name="seq_bn",
    config_cls=SeqBnConfig,
    summary="serial bottleneck adapter after each chosen layer's feed-forward block",
    params=("size",),
    size_param="size",
    per_layer=True,
    to_adapters=_to_adapters,
))
