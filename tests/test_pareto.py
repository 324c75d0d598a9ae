"""Non-dominated sorting and hypervolume on hand-made point sets."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from mtl_search.results import pareto


def test_front_with_mixed_directions():
    # objective 0 minimised, objective 1 maximised
    points = [[1.0, 5.0], [2.0, 6.0], [2.0, 4.0], [3.0, 7.0], [0.5, 1.0], [3.0, 6.5]]
    assert sorted(pareto.pareto_front(points, ["min", "max"])) == [0, 1, 3, 4]
    # flipping the second direction changes the front
    assert sorted(pareto.pareto_front(points, ["min", "min"])) == [4]


def test_fronts_are_layered_and_duplicates_share_a_front():
    points = [[1, 1], [1, 1], [2, 2], [3, 1], [3, 3]]
    fronts = pareto.non_dominated_sort(points, ["min", "min"])
    assert fronts == [[0, 1], [2, 3], [4]]


def test_nan_points_never_enter_the_front():
    points = [[float("nan"), 0.0], [1.0, 1.0]]
    assert pareto.pareto_front(points, ["min", "min"]) == [1]


def test_dominates():
    assert pareto.dominates([1, 1], [2, 1], ["min", "min"])
    assert not pareto.dominates([1, 1], [1, 1], ["min", "min"])
    assert pareto.dominates([1, 3], [1, 2], ["min", "max"])


def test_hypervolume_2d_known_value():
    # staircase of (1,3), (2,2), (3,1) against reference (4,4): 3 + 2 + 1 = 6
    points = [[1, 3], [2, 2], [3, 1], [3.5, 3.5]]
    assert pareto.hypervolume(points, ["min", "min"], [4, 4]) == pytest.approx(6.0)


def test_hypervolume_with_a_maximised_objective():
    # accuracy maximised with reference 0, loss minimised with reference 1
    points = [[0.9, 0.5], [0.5, 0.2]]
    # minimisation space: (-0.9, 0.5), (-0.5, 0.2), ref (0, 1): 0.9*0.5 + 0.5*0.3 = 0.6
    assert pareto.hypervolume(points, ["max", "min"], [0.0, 1.0]) == pytest.approx(0.6)


def test_hypervolume_3d_known_values():
    assert pareto.hypervolume([[0, 0, 0]], ["min"] * 3, [1, 2, 3]) == pytest.approx(6.0)
    # two unit-offset boxes: union of [0,2]x[1,2]x[0,2] and [1,2]x[0,2]x[0,2] ... computed by inclusion-exclusion
    points = [[0, 1, 0], [1, 0, 0]]
    assert pareto.hypervolume(points, ["min"] * 3, [2, 2, 2]) == pytest.approx(2 * 1 * 2 + 1 * 2 * 2 - 1 * 1 * 2)


def test_hypervolume_matches_monte_carlo_in_3d():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 1, size=(12, 3))
    ref = [1.0, 1.0, 1.0]
    exact = pareto.hypervolume(points, ["min"] * 3, ref)
    samples = rng.uniform(0, 1, size=(200_000, 3))
    dominated = np.zeros(len(samples), dtype=bool)
    for p in points:
        dominated |= np.all(samples >= p, axis=1)
    assert exact == pytest.approx(dominated.mean(), abs=0.01)


def test_hypervolume_inclusion_exclusion_4d():
    points = [[0.2, 0.5, 0.1, 0.7], [0.6, 0.1, 0.4, 0.2], [0.3, 0.3, 0.9, 0.1]]
    ref = [1.0] * 4
    total = 0.0
    for r in range(1, len(points) + 1):
        for subset in itertools.combinations(points, r):
            corner = np.max(subset, axis=0)
            total += (-1) ** (r + 1) * np.prod(np.array(ref) - corner)
    assert pareto.hypervolume(points, ["min"] * 4, ref) == pytest.approx(total)


def test_points_beyond_the_reference_contribute_nothing():
    assert pareto.hypervolume([[5, 5]], ["min", "min"], [4, 4]) == 0.0


def test_default_reference_point_pads_the_worst_value():
    ref = pareto.default_reference_point([[1, 10], [3, 20]], ["min", "max"])
    assert ref == pytest.approx([3.2, 9.0])
