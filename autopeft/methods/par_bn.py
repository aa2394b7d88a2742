"""Parallel bottleneck adapter (He et al., 2022), beside the attention block by default.

Beside attention rather than the FFN (He et al.'s placement, ``position: ffn``): `adapters` cannot
put a serial and a parallel adapter at the same position in one model — a ConfigUnion refuses it
and a Stack silently leaves the serial adapter without gradient — and hybrids with ``seq_bn``
(after the FFN) are the point of the search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

from autopeft.methods import register_method
from autopeft.methods._base import (
    BOTTLENECK_POSITIONS, AdaptersConfig, MethodConfig, MethodSpec, bottleneck_kwargs, check_choice, check_positive,
    layers_words, shared_value,
)

POSITIONS = ("attention", "ffn")


@dataclass(frozen=True)
class ParBnConfig(MethodConfig):
    method: ClassVar[str] = "par_bn"
    size: int = 16  # bottleneck units
    scaling: float = 4.0  # output scale, as in He et al.
    position: str = "attention"  # attention | ffn

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self.method, "size", self.size)
        check_positive(self.method, "scaling", self.scaling, allow_float=True)
        check_choice(self.method, "position", self.position, POSITIONS)

    def describe(self) -> str:
        where = "" if self.position == "attention" else f"@{self.position}"
        return f"{super().describe()}x{self.size}{where}"

    def words(self) -> str:
        beside = "attention" if self.position == "attention" else "the feed-forward block"
        return f"parallel adapter of size {self.size} beside {beside} {layers_words(self.layers)}"


def _to_adapters(entries: Sequence[ParBnConfig], num_layers: int, hidden: int) -> list[AdaptersConfig]:
    position = shared_value(entries, "position")
    kwargs = {
        **bottleneck_kwargs(entries, num_layers, hidden),
        "mh_adapter": position == "attention",
        "output_adapter": position == "ffn",
        "scaling": shared_value(entries, "scaling"),
    }
    return [AdaptersConfig("ParBnConfig", kwargs, BOTTLENECK_POSITIONS[position])]

SPEC = register_method(MethodSpec(
    name="par_bn",
    config_cls=ParBnConfig,
    summary="parallel bottleneck adapter beside each chosen layer's attention (or feed-forward) block",
    params=("size", "scaling", "position"),
    size_param="size",
    per_layer=True,
    to_adapters=_to_adapters,
))
