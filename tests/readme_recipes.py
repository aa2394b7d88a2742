"""The README's code blocks that tests run as written: each follows an HTML comment marker."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(marker: str, lang: str = "python") -> str:
    """The ``lang`` code block right after ``<!-- marker -->`` in the README."""
    match = re.search(rf"<!-- {marker} -->\s*```{lang}\n(.*?)```", README.read_text(), re.S)
    assert match, f"README holds a {lang} block after <!-- {marker} -->"
    return match.group(1)
