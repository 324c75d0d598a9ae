"""Fronts and hypervolume (moocore) against hand-made sets and the hand-written oracle; the incremental history."""
from __future__ import annotations

import itertools

import numpy as np
import pareto_oracle as oracle
import pytest

from mtl_search.record import Objective, TrialRecord
from mtl_search.results import pareto
from mtl_search.results.records import LiveFront, hypervolume_history, mark_front


def test_front_with_mixed_directions():
    # objective 0 minimised, objective 1 maximised
    points = [[1.0, 5.0], [2.0, 6.0], [2.0, 4.0], [3.0, 7.0], [0.5, 1.0], [3.0, 6.5]]
    assert sorted(pareto.pareto_front(points, ["min", "max"])) == [0, 1, 3, 4]
    # flipping the second direction changes the front
    assert sorted(pareto.pareto_front(points, ["min", "min"])) == [4]


def test_fronts_are_layered_and_duplicates_share_a_front():
    points = [[1, 1], [1, 1], [2, 2], [3, 1], [3, 3]]
    assert pareto.non_dominated_sort(points, ["min", "min"]) == [[0, 1], [2, 3], [4]]


def test_nan_points_never_enter_the_front():
    points = [[float("nan"), 0.0], [1.0, 1.0]]
    assert pareto.pareto_front(points, ["min", "min"]) == [1]
    assert pareto.non_dominated_sort(points, ["min", "min"]) == [[1], [0]]


def test_dominates():
    assert pareto.dominates([1, 1], [2, 1], ["min", "min"])
    assert not pareto.dominates([1, 1], [1, 1], ["min", "min"])
    assert pareto.dominates([1, 3], [1, 2], ["min", "max"])


def test_hypervolume_known_values():
    # staircase of (1,3), (2,2), (3,1) against reference (4,4): 3 + 2 + 1 = 6
    assert pareto.hypervolume([[1, 3], [2, 2], [3, 1], [3.5, 3.5]], ["min", "min"], [4, 4]) == pytest.approx(6.0)
    # accuracy maximised with reference 0, loss minimised with reference 1: 0.9*0.5 + 0.5*0.3
    assert pareto.hypervolume([[0.9, 0.5], [0.5, 0.2]], ["max", "min"], [0.0, 1.0]) == pytest.approx(0.6)
    assert pareto.hypervolume([[5, 5]], ["min", "min"], [4, 4]) == 0.0


def test_hypervolume_inclusion_exclusion_4d():
    points = [[0.2, 0.5, 0.1, 0.7], [0.6, 0.1, 0.4, 0.2], [0.3, 0.3, 0.9, 0.1]]
    total = 0.0
    for r in range(1, len(points) + 1):
        for subset in itertools.combinations(points, r):
            total += (-1) ** (r + 1) * np.prod(1.0 - np.max(subset, axis=0))
    assert pareto.hypervolume(points, ["min"] * 4, [1.0] * 4) == pytest.approx(total)


def test_default_reference_point_pads_the_worst_value():
    assert pareto.default_reference_point([[1, 10], [3, 20]], ["min", "max"]) == pytest.approx([3.2, 9.0])


def _random_set(rng: np.random.Generator, m: int, n: int) -> tuple[np.ndarray, list[str]]:
    directions = list(rng.choice(["min", "max"], size=m))
    points = rng.uniform(0, 1, size=(n, m)).round(2)  # rounding makes ties and duplicates
    return points, directions


@pytest.mark.parametrize("m", [2, 3, 4, 5, 6])
def test_moocore_front_ranks_and_hypervolume_equal_the_oracle(m):
    rng = np.random.default_rng(m)
    for _ in range(3):
        points, directions = _random_set(rng, m, 25 if m < 6 else 14)
        assert pareto.non_dominated_sort(points, directions) == oracle.non_dominated_sort(points, directions)
        assert sorted(pareto.pareto_front(points, directions)) == sorted(oracle.pareto_front(points, directions))
        reference = pareto.default_reference_point(points, directions)
        assert reference == pytest.approx(oracle.default_reference_point(points, directions))
        assert pareto.hypervolume(points, directions, reference) == pytest.approx(oracle.hypervolume(points, directions, reference), rel=1e-9)


def test_contributions_are_the_volume_lost_without_the_point():
    rng = np.random.default_rng(1)
    points, directions = _random_set(rng, 3, 12)
    reference = pareto.default_reference_point(points, directions)
    total = oracle.hypervolume(points, directions, reference)
    for i, c in enumerate(pareto.hypervolume_contributions(points, directions, reference)):
        rest = np.delete(points, i, axis=0)
        assert c == pytest.approx(total - oracle.hypervolume(rest, directions, reference), abs=1e-12)


@pytest.mark.parametrize("m", [2, 3, 5])
def test_incremental_history_equals_recomputation_over_every_prefix(m):
    rng = np.random.default_rng(10 + m)
    points, directions = _random_set(rng, m, 30)
    points[4] = np.nan  # a failed trial's values: a step that changes nothing
    reference = pareto.default_reference_point(points[np.isfinite(points).all(axis=1)], directions)
    history = pareto.FrontHistory(directions, reference, exact=True)
    for k, point in enumerate(points, 1):
        on_front = history.add(point)
        prefix = points[:k]
        front = oracle.pareto_front(prefix, directions)
        assert sorted(history.front_ids) == sorted(front)
        assert on_front == (k - 1 in front)
        assert history.history[-1][0] == pytest.approx(oracle.hypervolume(prefix, directions, reference), rel=1e-9)
        assert history.history[-1][1] == len(front)


def test_estimated_history_tracks_the_exact_hypervolume():
    rng = np.random.default_rng(3)
    points, directions = _random_set(rng, 5, 40)
    reference = pareto.default_reference_point(points, directions)
    estimated = pareto.FrontHistory(directions, reference, exact=False)
    for point in points:
        estimated.add(point)
    exact = pareto.hypervolume(points, directions, reference)
    assert estimated.hypervolume == pytest.approx(exact, rel=0.05)
    values = [hv for hv, _ in estimated.history]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert pareto.search_hypervolume(points, directions, reference) == pytest.approx(exact)  # 40 points in 5-D: exact


OBJECTIVES = [Objective("a", "val/a", "min"), Objective("b", "val/b", "max"), Objective("params", "params", "min")]


def _trials(rng: np.random.Generator, n: int) -> list[TrialRecord]:
    trials = []
    for i in range(n):
        status = "failed" if i % 7 == 3 else "finished"
        a, b, p = rng.uniform(size=3).round(2)
        trials.append(TrialRecord(i, f"r{i}", "s", {}, status, val={"a": a, "b": b} if status == "finished" else {}, metrics={"params": p}))
    return trials


def test_live_front_equals_mark_front_after_every_trial():
    rng = np.random.default_rng(5)
    trials = _trials(rng, 30)
    live, copies = LiveFront(OBJECTIVES), [TrialRecord(t.number, t.run_id, t.strategy, {}, t.status, dict(t.val), metrics=dict(t.metrics)) for t in trials]
    for k, trial in enumerate(trials, 1):
        live.add(trial)
        mark_front(copies[:k], OBJECTIVES)
        assert [t.pareto for t in trials[:k]] == [t.pareto for t in copies[:k]]
        assert live.size == sum(t.pareto for t in copies[:k])


def test_hypervolume_history_of_records_equals_recomputation():
    rng = np.random.default_rng(6)
    trials = _trials(rng, 20)
    _, reference = mark_front(trials, OBJECTIVES)
    history = hypervolume_history(trials, OBJECTIVES, reference)
    directions = [o.direction for o in OBJECTIVES]
    for k in range(1, len(trials) + 1):
        points = [t.objective_values(OBJECTIVES) for t in trials[:k] if t.status == "finished"]
        expected = oracle.hypervolume(points, directions, reference) if points else 0.0
        assert history[k - 1] == (pytest.approx(expected), len(oracle.pareto_front(points, directions)) if points else 0)
