"""LoRA (Hu et al., 2021): low-rank updates of chosen projection matrices in chosen layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

from autopeft.methods import register_method
from autopeft.methods._base import (
    AdaptersConfig, MethodConfig, MethodSpec, check_positive, check_targets, layers_words,
)


@dataclass(frozen=True)
class LoRAConfig(MethodConfig):
    method: ClassVar[str] = "lora"
    rank: int = 8
    alpha: int = 16  # the update is scaled by alpha / rank
    targets: tuple[str, ...] = ("query", "value")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self.method, "rank", self.rank)
        check_positive(self.method, "alpha", self.alpha)
        object.__setattr__(self, "targets", check_targets(self.method, self.targets))

    def describe(self) -> str:
        return f"lora({','.join(self.targets)}){_short(self.layers)} r{self.rank}"

    def words(self) -> str:
        return f"LoRA rank {self.rank} (alpha {self.alpha}) on {', '.join(self.targets)} {layers_words(self.layers)}"


def _short(layers: Sequence[int]) -> str:
    return "[" + ",".join(map(str, layers)) + "]"


def lora_kwargs(targets: Sequence[str], layers: Sequence[int], num_layers: int) -> dict:
    """Map user-facing target names onto `adapters`' LoRA placement switches."""
    attn = [t[0] for t in targets if t in ("query", "key", "value")]  # q / k / v
    return {
        "selfattn_lora": bool(attn),
        "attn_matrices": attn,
        "intermediate_lora": "intermediate" in targets,
        "output_lora": "output" in targets,
        "leave_out": [i for i in range(num_layers) if i not in layers],
    }


def _to_adapters(entries: Sequence[LoRAConfig], num_layers: int, hidden: int) -> list[AdaptersConfig]:
    # LoRA's rank is one number per adapter, so each entry is its own adapter (stacked).
    return [
        AdaptersConfig(
            "LoRAConfig",
            {"r": e.rank, "alpha": e.alpha, **lora_kwargs(e.targets, e.layers, num_layers)},
            ("lora",),
        )
        for e in entries
    ]


SPEC = register_method(MethodSpec(
    name="lora",
    config_cls=LoRAConfig,
    summary="LoRA: low-rank updates of the chosen projections in each chosen layer",
    params=("rank", "alpha", "targets"),
    size_param="rank",
    per_layer=True,
    to_adapters=_to_adapters,
    one_per_layer=False,
    wraps_modules=True,
))
