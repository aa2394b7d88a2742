"""BitFit (Ben Zaken et al., 2022): train the existing bias terms of chosen layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

from autopeft.methods import register_method
from autopeft.methods._base import MethodConfig, MethodSpec, layers_words


@dataclass(frozen=True)
class BitFitConfig(MethodConfig):
    method: ClassVar[str] = "bitfit"

    def words(self) -> str:
        return f"BitFit (the biases) {layers_words(self.layers)}"


def _trains_base_param(entries: Sequence[BitFitConfig], name: str, layer: int | None) -> bool:
    return name.endswith(".bias") and layer is not None and any(layer in e.layers for e in entries)


SPEC = register_method(MethodSpec(
    name="bitfit",
    config_cls=BitFitConfig,
    summary="BitFit: train the bias terms already in each chosen layer (adds no modules)",
    params=(),
    size_param=None,
    per_layer=True,
    to_adapters=lambda entries, num_layers, hidden: [],
    trains_base_param=_trains_base_param,
))
