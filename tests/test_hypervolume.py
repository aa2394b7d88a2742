"""Hypervolume (pure functions): hand-computed areas and volumes, and Optuna's private version."""

from __future__ import annotations

import random

import pytest

from autopeft.pareto import hypervolume, hypervolume_history


def test_two_dimensions_by_hand():
    assert hypervolume([(1, 2), (2, 1)], (3, 3)) == pytest.approx(3.0)
    assert hypervolume([(1, 2), (2, 1), (2.5, 2.5)], (3, 3)) == pytest.approx(3.0)  # dominated: nothing
    assert hypervolume([(4, 0)], (3, 3)) == 0.0  # beyond the reference: nothing
    assert hypervolume([], (1, 1)) == 0.0


def test_three_dimensions_by_hand():
    assert hypervolume([(0, 0, 0)], (1, 1, 1)) == pytest.approx(1.0)
    # two boxes, 0.5 and 0.25, overlapping in 0.125
    assert hypervolume([(0, 0, 0.5), (0.5, 0.5, 0)], (1, 1, 1)) == pytest.approx(0.625)


def test_matches_optuna_private_implementation():
    np = pytest.importorskip("numpy")
    try:
        from optuna._hypervolume import compute_hypervolume
    except ImportError:  # private API: its absence is not our failure
        pytest.skip("optuna._hypervolume.compute_hypervolume is gone")
    rng = random.Random(0)
    for dims in (2, 3):
        pts = [tuple(rng.random() for _ in range(dims)) for _ in range(12)]
        ref = (1.1,) * dims
        assert hypervolume(pts, ref) == pytest.approx(compute_hypervolume(np.array(pts), np.array(ref)))


def test_history_is_monotone_and_handles_directions():
    points = [[0.6, 5000], [0.7, 1000], [0.65, 8000], [0.8, 90000]]
    hv = hypervolume_history(points, ["max", "min"])
    assert len(hv) == 4 and hv[0] > 0
    assert all(b >= a for a, b in zip(hv, hv[1:]))
    assert hv[2] == hv[1]  # a dominated trial adds nothing
