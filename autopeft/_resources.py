"""Where the shipped YAML registries (``tasks/``, ``search_spaces/``) live.

A wheel carries them under ``autopeft/_data``; a source checkout (editable install) has them at
the repository root. One lookup serves both so no other module guesses paths.
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def resource_dir(kind: str) -> Path:
    """Folder of the shipped registry ``kind`` ("tasks" or "search_spaces")."""
    for candidate in (_PKG / "_data" / kind, _PKG.parent / kind):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"autopeft's {kind}/ folder is missing from the installation ({_PKG})")


def registry_entries(kind: str, suffixes: tuple[str, ...] = (".yaml", ".yml")) -> dict[str, Path]:
    """Name → file for every entry of a registry folder (the name is the file stem)."""
    folder = resource_dir(kind)
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix in suffixes}
