"""Registry of PEFT methods: one small file per method, registered by name on import.

Adding a method = one file defining its config dataclass and a ``MethodSpec``, plus one line
in ``_BUILTIN`` below. Methods outside this package load from the modules named in the
``AUTOPEFT_PLUGINS`` environment variable (comma-separated), which Ray trials inherit.
"""

from __future__ import annotations

import importlib
import os

from autopeft.errors import ConfigError
from autopeft.methods._base import TARGET_MODULES, AdaptersConfig, MethodConfig, MethodSpec

_REGISTRY: dict[str, MethodSpec] = {}
_BUILTIN = ("seq_bn", "par_bn", "prefix", "lora", "ia3", "bitfit", "prompt")


def register_method(spec: MethodSpec) -> MethodSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"PEFT method {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown PEFT method {name!r}; known methods: {sorted(_REGISTRY)}") from None


def available_methods() -> dict[str, MethodSpec]:
    return dict(_REGISTRY)


for _name in _BUILTIN:
    importlib.import_module(f"autopeft.methods.{_name}")

for _plugin in filter(None, (m.strip() for m in os.environ.get("AUTOPEFT_PLUGINS", "").split(","))):
    try:
        importlib.import_module(_plugin)
    except ImportError as exc:
        raise ConfigError(f"AUTOPEFT_PLUGINS names {_plugin!r}, which cannot be imported: {exc}") from None

__all__ = [
    "TARGET_MODULES",
    "AdaptersConfig",
    "MethodConfig",
    "MethodSpec",
    "available_methods",
    "get_method",
    "register_method",
]
