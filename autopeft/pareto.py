"""Pareto-front arithmetic: pure functions over objective vectors."""

from __future__ import annotations

import math
from typing import Sequence


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """True if ``a`` is at least as good as ``b`` everywhere and better somewhere."""
    better = False
    for x, y, d in zip(a, b, directions):
        if d == "max":
            x, y = -x, -y
        if x > y:
            return False
        if x < y:
            better = True
    return better


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points (NaN points never qualify), in input order."""
    valid = [i for i, p in enumerate(points) if all(math.isfinite(v) for v in p)]
    return [i for i in valid
            if not any(dominates(points[j], points[i], directions) for j in valid if j != i)]
