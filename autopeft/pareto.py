"""Pareto-front arithmetic: pure functions over objective vectors."""

from __future__ import annotations

import math
from typing import Mapping, Sequence


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


def dominates_beyond_noise(found: Mapping[str, float], base: Mapping[str, float]) -> bool:
    """Pareto dominance over seeds that noise cannot fake (the suite's rule for a win over a
    baseline; ``autopeft hand-picks`` judges by it too): ``mean`` metric >= and ``params`` <=, and
    strictly better in one, where a strictly better metric must beat the other by more than the
    larger of the two ``std`` over seeds (parameter counts are exact, so fewer is strictly fewer)."""
    level = found["mean"] >= base["mean"] - 1e-9  # means of the same accuracies summed in another order
    if not (level and found["params"] <= base["params"]):
        return False
    return found["params"] < base["params"] or found["mean"] - base["mean"] > max(found["std"], base["std"])


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points (NaN points never qualify), in input order."""
    valid = [i for i, p in enumerate(points) if all(math.isfinite(v) for v in p)]
    return [i for i in valid
            if not any(dominates(points[j], points[i], directions) for j in valid if j != i)]


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Volume dominated by ``points`` and bounded by ``reference``, all objectives minimised.

    Exact, by slicing along the last objective (recursively down to one dimension): O(n^d) at
    worst, ample for the tens to hundreds of trials of a search. Points not strictly better than
    the reference in every objective add nothing.
    """
    pts = [tuple(p) for p in points if all(math.isfinite(v) for v in p) and all(v < r for v, r in zip(p, reference))]
    if not pts:
        return 0.0
    if len(reference) == 1:
        return reference[0] - min(p[0] for p in pts)
    pts.sort(key=lambda p: p[-1])
    volume = 0.0
    for i, p in enumerate(pts):
        top = pts[i + 1][-1] if i + 1 < len(pts) else reference[-1]
        if top > p[-1]:
            volume += (top - p[-1]) * hypervolume([q[:-1] for q in pts[:i + 1]], reference[:-1])
    return volume


def hypervolume_history(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[float]:
    """Hypervolume of the first 1, 2, ... points, each objective scaled to [0, 1] over all points.

    Maximised objectives are negated; the reference is 1.1 on every scaled axis (just past the
    worst value seen), so the figure compares progress within one search, not across searches.
    """
    rows = [[-v if d == "max" else v for v, d in zip(p, directions)] for p in points]
    finite = [r for r in rows if all(math.isfinite(v) for v in r)]
    if not finite:
        return [0.0] * len(rows)
    lo = [min(r[k] for r in finite) for k in range(len(directions))]
    hi = [max(r[k] for r in finite) for k in range(len(directions))]
    scaled = [[(v - a) / (b - a) if b > a else 0.0 for v, a, b in zip(r, lo, hi)] for r in rows]
    ref = [1.1] * len(directions)
    return [hypervolume(scaled[:i + 1], ref) for i in range(len(scaled))]


def mark_front(records: list, directions: dict[str, str]) -> list:
    """Set ``record.pareto`` on trial records: True for completed, non-dominated ones."""
    done = [r for r in records if r.status == "COMPLETE"]
    points = [[float(r[k]) if r.get(k) is not None else math.nan for k in directions] for r in done]
    front = set(pareto_front(points, list(directions.values())))
    for r in records:
        r.pareto = False
    for i, r in enumerate(done):
        r.pareto = i in front
    return records
