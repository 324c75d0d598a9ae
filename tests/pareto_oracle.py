"""The test oracle: a plain, hand-written non-dominated sort and exact hypervolume (slicing), to check moocore's against.

Not used by the package (``mtl_search.results.pareto`` computes through moocore); kept small
and obviously correct rather than fast. Everything is computed in "minimisation space":
maximised objectives are negated first.

Reference point (documented default): for each objective, the worst value among the
points, moved further into the bad direction by 10% of the observed range (or by 10% of
its magnitude, or by 1, when the range is zero). A space can fix it with
``search.reference_point``. Points that are not strictly better than the reference point
in every objective contribute nothing.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

MARGIN = 0.1


def _as_min(points: Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    arr = np.asarray(points, dtype=float).reshape(len(points), len(directions))
    signs = np.array([1.0 if d == "min" else -1.0 for d in directions])
    if any(d not in ("min", "max") for d in directions):
        raise ValueError(f"directions must be 'min' or 'max', got {list(directions)}")
    return arr * signs


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """True when ``a`` is no worse than ``b`` in every objective and better in one."""
    x, y = _as_min([a, b], directions)
    return bool(np.all(x <= y) and np.any(x < y))


def non_dominated_sort(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[list[int]]:
    """Fronts as lists of point indices: front 0 is the Pareto front. Points with NaN go last, alone."""
    if len(points) == 0:
        return []
    arr = _as_min(points, directions)
    valid = [i for i in range(len(arr)) if np.all(np.isfinite(arr[i]))]
    remaining = set(valid)
    fronts: list[list[int]] = []
    while remaining:
        front = [i for i in sorted(remaining)
                 if not any(np.all(arr[j] <= arr[i]) and np.any(arr[j] < arr[i]) for j in remaining if j != i)]
        fronts.append(front)
        remaining -= set(front)
    invalid = [i for i in range(len(arr)) if i not in set(valid)]
    if invalid:
        fronts.append(invalid)
    return fronts


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points (duplicates of a front point are all on the front)."""
    fronts = non_dominated_sort(points, directions)
    if not fronts:
        return []
    arr = _as_min(points, directions)
    return fronts[0] if np.all(np.isfinite(arr[fronts[0]])) else []


def default_reference_point(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[float]:
    """The worst value per objective pushed out by 10% of the range (see the module docstring)."""
    arr = _as_min(points, directions)
    arr = arr[np.all(np.isfinite(arr), axis=1)]
    if len(arr) == 0:
        raise ValueError("no finite point to place a reference point from")
    worst, best = arr.max(axis=0), arr.min(axis=0)
    span = worst - best
    pad = np.where(span > 0, MARGIN * span, np.where(worst != 0, MARGIN * np.abs(worst), 1.0))
    ref_min = worst + pad
    signs = np.array([1.0 if d == "min" else -1.0 for d in directions])
    return (ref_min * signs).tolist()


def hypervolume(points: Sequence[Sequence[float]], directions: Sequence[str], reference: Sequence[float]) -> float:
    """Exact hypervolume dominated by ``points`` and bounded by ``reference`` (any dimension).

    2 objectives: a sweep; more: slicing along the last objective, recursing on the rest.
    """
    if len(points) == 0:
        return 0.0
    arr = _as_min(points, directions)
    ref = _as_min([reference], directions)[0]
    arr = arr[np.all(np.isfinite(arr), axis=1) & np.all(arr < ref, axis=1)]
    if len(arr) == 0:
        return 0.0
    return float(_hv(arr, ref))


def _hv(arr: np.ndarray, ref: np.ndarray) -> float:
    if arr.shape[1] == 1:
        return float(ref[0] - arr[:, 0].min())
    if arr.shape[1] == 2:
        order = np.argsort(arr[:, 0], kind="stable")
        volume, best_y = 0.0, ref[1]
        for x, y in arr[order]:
            if y < best_y:
                volume += (ref[0] - x) * (best_y - y)
                best_y = y
        return volume
    order = np.argsort(arr[:, -1], kind="stable")
    arr = arr[order]
    volume = 0.0
    for i in range(len(arr)):
        upper = arr[i + 1, -1] if i + 1 < len(arr) else ref[-1]
        height = upper - arr[i, -1]
        if height > 0:
            volume += height * _hv(arr[: i + 1, :-1], ref[:-1])
    return volume
