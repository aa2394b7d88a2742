"""Prefix tuning (Li & Liang, 2021): trainable key/value prefixes in each chosen layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

from autopeft.methods import register_method
from autopeft.methods._base import AdaptersConfig, MethodConfig, MethodSpec, check_positive, layers_words


@dataclass(frozen=True)
class PrefixConfig(MethodConfig):
    method: ClassVar[str] = "prefix"
    length: int = 16  # prefix tokens
    # True trains the prefixes directly; False trains them through an MLP (better optimisation,
    # many more trainable parameters while training; they fold away for inference).
    flat: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self.method, "length", self.length)

    def describe(self) -> str:
        return f"{super().describe()}x{self.length}" + (" flat" if self.flat else "")

    def words(self) -> str:
        how = "trained directly" if self.flat else "trained through an MLP"
        return f"prefix of {self.length} tokens ({how}) {layers_words(self.layers)}"


def _to_adapters(entries: Sequence[PrefixConfig], num_layers: int, hidden: int) -> list[AdaptersConfig]:
    (e,) = entries
    kwargs = {
        "prefix_length": e.length,
        "flat": e.flat,
        "leave_out": [i for i in range(num_layers) if i not in e.layers],
    }
    return [AdaptersConfig("PrefixTuningConfig", kwargs, ("prefix",))]


SPEC = register_method(MethodSpec(
    name="prefix",
    config_cls=PrefixConfig,
    summary="prefix tuning: trainable attention key/value prefixes in each chosen layer",
    params=("length", "flat"),
    size_param="length",
    per_layer=True,
    to_adapters=_to_adapters,
    max_entries=1,
))
