"""Prompt tuning (Lester et al., 2021): trainable soft tokens prepended to the input embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

from autopeft.errors import ConfigError
from autopeft.methods import register_method
from autopeft.methods._base import AdaptersConfig, MethodConfig, MethodSpec, check_positive


@dataclass(frozen=True)
class PromptConfig(MethodConfig):
    method: ClassVar[str] = "prompt"
    length: int = 8  # soft prompt tokens

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self.method, "length", self.length)
        if self.layers:
            raise ConfigError("prompt: prompt tuning acts on the input embeddings; it takes no layers")

    def describe(self) -> str:
        return f"prompt x{self.length}"

    def words(self) -> str:
        return f"soft prompt of {self.length} tokens"


def _to_adapters(entries: Sequence[PromptConfig], num_layers: int, hidden: int) -> list[AdaptersConfig]:
    (e,) = entries
    return [AdaptersConfig("PromptTuningConfig", {"prompt_length": e.length}, ("prompt",))]


SPEC = register_method(MethodSpec(
    name="prompt",
    config_cls=PromptConfig,
    summary="prompt tuning: trainable soft tokens prepended to the input",
    params=("length",),
    size_param="length",
    per_layer=False,
    to_adapters=_to_adapters,
    max_entries=1,
))
