"""(IA)3 (Liu et al., 2022): learned rescaling of chosen activations in chosen layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

from autopeft.methods import register_method
from autopeft.methods._base import AdaptersConfig, MethodConfig, MethodSpec, check_targets, layers_words
from autopeft.methods.lora import lora_kwargs


@dataclass(frozen=True)
class IA3Config(MethodConfig):
    method: ClassVar[str] = "ia3"
    targets: tuple[str, ...] = ("key", "value", "intermediate")

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "targets", check_targets(self.method, self.targets))

    def describe(self) -> str:
        return f"ia3({','.join(self.targets)})[{','.join(map(str, self.layers))}]"

    def words(self) -> str:
        return f"(IA)3 scaling of {', '.join(self.targets)} {layers_words(self.layers)}"


def _to_adapters(entries: Sequence[IA3Config], num_layers: int, hidden: int) -> list[AdaptersConfig]:
    # (IA)3 is a LoRA-architecture adapter in `adapters`: it shares LoRA's slot and stacks.
    return [AdaptersConfig("IA3Config", lora_kwargs(e.targets, e.layers, num_layers), ("lora",)) for e in entries]


SPEC = register_method(MethodSpec(
    name="ia3",
    config_cls=IA3Config,
    summary="(IA)3: learned per-channel scaling of the chosen activations in each chosen layer",
    params=("targets",),
    size_param=None,
    per_layer=True,
    to_adapters=_to_adapters,
    one_per_layer=False,
    wraps_modules=True,
))
