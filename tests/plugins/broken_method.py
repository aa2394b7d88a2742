"""A PEFT method whose builder raises: loaded through AUTOPEFT_PLUGINS to inject a trial failure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from autopeft.methods import MethodConfig, MethodSpec, register_method


@dataclass(frozen=True)
class BrokenConfig(MethodConfig):
    method: ClassVar[str] = "broken"


def _to_adapters(entries, num_layers, hidden):
    raise ValueError("the broken test method cannot be built (injected failure)")


register_method(MethodSpec(name="broken", config_cls=BrokenConfig, summary="always fails to build",
                           params=(), size_param=None, per_layer=False, to_adapters=_to_adapters))
