"""Serial bottleneck adapter (Houlsby et al., 2019).

``position`` "ffn" is Pfeiffer et al.'s placement (after the feed-forward block, the default);
"both" is Houlsby's (after attention and after the feed-forward block, two adapters per layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

from autopeft.methods import register_method
from autopeft.methods._base import (
    BOTTLENECK_POSITIONS, AdaptersConfig, MethodConfig, MethodSpec, bottleneck_kwargs, check_choice, check_positive,
    layers_words, shared_value,
)

_WHERE = {"ffn": "after the feed-forward block", "attention": "after attention",
          "both": "after attention and after the feed-forward block"}


@dataclass(frozen=True)
class SeqBnConfig(MethodConfig):
    method: ClassVar[str] = "seq_bn"
    size: int = 16  # bottleneck units
    position: str = "ffn"  # ffn (Pfeiffer) | attention | both (Houlsby)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self.method, "size", self.size)
        check_choice(self.method, "position", self.position, tuple(BOTTLENECK_POSITIONS))

    def describe(self) -> str:
        where = "" if self.position == "ffn" else f"@{self.position}"
        return f"{super().describe()}x{self.size}{where}"

    def words(self) -> str:
        return f"serial adapter of size {self.size} {_WHERE[self.position]} {layers_words(self.layers)}"


def _to_adapters(entries: Sequence[SeqBnConfig], num_layers: int, hidden: int) -> list[AdaptersConfig]:
    position = shared_value(entries, "position")
    kwargs = bottleneck_kwargs(entries, num_layers, hidden)
    if position == "both":
        return [AdaptersConfig("DoubleSeqBnConfig", kwargs, BOTTLENECK_POSITIONS[position])]
    kwargs.update(mh_adapter=position == "attention", output_adapter=position == "ffn")
    return [AdaptersConfig("SeqBnConfig", kwargs, BOTTLENECK_POSITIONS[position])]

SPEC = register_method(MethodSpec(
    name="seq_bn",
    config_cls=SeqBnConfig,
    summary="serial bottleneck adapter after each chosen layer's feed-forward block (or attention, or both)",
    params=("size", "position"),
    size_param="size",
    per_layer=True,
    to_adapters=_to_adapters,
))
