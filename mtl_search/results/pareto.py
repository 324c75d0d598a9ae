"""Pareto fronts and hypervolume for any number of objectives with mixed directions, through moocore.

Everything is computed in "minimisation space": maximised objectives are negated first.
Non-dominated filtering, ranks and the exact hypervolume are moocore's
(López-Ibáñez et al., https://multi-objective.github.io/moocore/): 2-D and 3-D in
O(n log n), 4-D by HV4D+, more by WFG-style recursion — exact in any dimension, but its
cost grows exponentially with the number of objectives once most points are on the front.

Reference point (documented default): for each objective, the worst value among the
points, moved further into the bad direction by 10% of the observed range (or by 10% of
its magnitude, or by 1, when the range is zero). A space can fix it with
``search.reference_point``. Points that are not strictly better than the reference point
in every objective contribute nothing.

Hypervolume history. :class:`FrontHistory` takes the points one at a time in finish
order and keeps the current front; a point dominated by the front changes nothing, so
the exact hypervolume is recomputed only when the front changes. Where the exact value
would be too costly (:func:`exact_is_affordable`: more than four objectives and a front
larger than the table ``EXACT_FRONT_LIMIT`` allows) the history uses the Monte-Carlo
estimator of Deng & Zhang (2019, "Approximating hypervolume and hypervolume contributions
using polar coordinates", IEEE TEVC 23(5)): HV ≈ π^{m/2} / (Γ(m/2 + 1) 2^m) · mean_i
max_{y in front} s(w_i, y)^m over directions w_i uniform on the positive unit sphere, where
s(w, y) = min_j (r_j - y_j) / w_j. Its running maxima are updated in O(samples · m) per new
point, so a point's cost does not grow with the front. The directions are drawn from a
fixed seed, so the same points give the same estimate. (moocore's ``hv_approx`` computes the
same estimator, but from scratch on every call.)
"""
from __future__ import annotations

import math
from typing import Sequence

import moocore
import numpy as np

MARGIN = 0.1
# the largest front whose exact hypervolume is computed, per number of objectives (more: the estimator)
EXACT_FRONT_LIMIT = {5: 200, 6: 60, 7: 30, 8: 20}
EXACT_ALWAYS = 4  # up to this many objectives the exact value is always affordable (HV4D+: O(n^2))
ESTIMATOR_SAMPLES = 1 << 14
ESTIMATOR_SEED = 0


def _signs(directions: Sequence[str]) -> np.ndarray:
    if any(d not in ("min", "max") for d in directions):
        raise ValueError(f"directions must be 'min' or 'max', got {list(directions)}")
    return np.array([1.0 if d == "min" else -1.0 for d in directions])


def as_minimisation(points: Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    """The points as an (n, m) float array with maximised objectives negated."""
    signs = _signs(directions)
    return np.asarray(points, dtype=float).reshape(len(points), len(directions)) * signs


def _finite_rows(arr: np.ndarray) -> np.ndarray:
    return np.all(np.isfinite(arr), axis=1)


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """True when ``a`` is no worse than ``b`` in every objective and better in one."""
    x, y = as_minimisation([a, b], directions)
    return bool(np.all(x <= y) and np.any(x < y))


def non_dominated_sort(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[list[int]]:
    """Fronts as lists of point indices (moocore's Pareto ranks): front 0 is the Pareto front. Points with NaN go last, alone."""
    if len(points) == 0:
        return []
    arr = as_minimisation(points, directions)
    finite = _finite_rows(arr)
    valid = np.flatnonzero(finite)
    fronts: list[list[int]] = []
    if len(valid):
        ranks = moocore.pareto_rank(arr[valid])
        fronts = [valid[ranks == r].tolist() for r in range(int(ranks.max()) + 1)]
    invalid = np.flatnonzero(~finite).tolist()
    return fronts + ([invalid] if invalid else [])


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated finite points (duplicates of a front point are all on the front)."""
    if len(points) == 0:
        return []
    arr = as_minimisation(points, directions)
    valid = np.flatnonzero(_finite_rows(arr))
    if not len(valid):
        return []
    return valid[moocore.is_nondominated(arr[valid], keep_weakly=True)].tolist()


def default_reference_point(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[float]:
    """The worst value per objective pushed out by 10% of the range (see the module docstring)."""
    arr = as_minimisation(points, directions)
    arr = arr[_finite_rows(arr)]
    if len(arr) == 0:
        raise ValueError("no finite point to place a reference point from")
    worst, best = arr.max(axis=0), arr.min(axis=0)
    span = worst - best
    pad = np.where(span > 0, MARGIN * span, np.where(worst != 0, MARGIN * np.abs(worst), 1.0))
    return ((worst + pad) * _signs(directions)).tolist()


def _inside(arr: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return arr[_finite_rows(arr) & np.all(arr < ref, axis=1)]


def hypervolume(points: Sequence[Sequence[float]], directions: Sequence[str], reference: Sequence[float]) -> float:
    """Exact hypervolume dominated by ``points`` and bounded by ``reference`` (moocore; any dimension)."""
    if len(points) == 0:
        return 0.0
    ref = as_minimisation([reference], directions)[0]
    arr = _inside(as_minimisation(points, directions), ref)
    if len(arr) == 0:
        return 0.0
    return float(moocore.hypervolume(arr, ref=ref))


def hypervolume_contributions(points: Sequence[Sequence[float]], directions: Sequence[str], reference: Sequence[float]) -> list[float]:
    """The hypervolume each point adds to the others (moocore; a point a remaining one dominates adds 0)."""
    ref = as_minimisation([reference], directions)[0]
    arr = as_minimisation(points, directions)
    keep = _finite_rows(arr) & np.all(arr < ref, axis=1)
    out = np.zeros(len(arr))
    if keep.any():
        out[keep] = moocore.hv_contributions(arr[keep], ref=ref, ignore_dominated=False)
    return out.tolist()


def exact_is_affordable(objectives: int, front_size: int) -> bool:
    """Whether the exact hypervolume of a front this size is cheap enough to recompute as a search runs."""
    return objectives <= EXACT_ALWAYS or front_size <= EXACT_FRONT_LIMIT.get(objectives, 15)


class FrontHistory:
    """The front and hypervolume after each added point, updated incrementally (see the module docstring).

    ``exact=None`` chooses once, from the number of objectives and ``expected_points``
    (an upper bound on the front): exact while :func:`exact_is_affordable`, else the
    Deng–Zhang estimator. ``add`` returns whether the point is on the front now.
    """

    def __init__(self, directions: Sequence[str], reference: Sequence[float] | None, exact: bool | None = None,
                 expected_points: int = 0, samples: int = ESTIMATOR_SAMPLES, seed: int = ESTIMATOR_SEED):
        self.directions = list(directions)
        self.signs = _signs(directions)
        m = len(self.directions)
        # no reference: the front only (hypervolume stays 0)
        self.ref = None if reference is None else np.asarray(reference, dtype=float).reshape(m) * self.signs
        self.exact = exact_is_affordable(m, expected_points) if exact is None else exact
        self.front = np.empty((0, m))  # minimisation space
        self.front_ids: list[int] = []
        self.history: list[tuple[float, int]] = []
        self.hypervolume = 0.0
        self._count = 0
        if not self.exact and self.ref is not None:
            w = np.abs(np.random.default_rng(seed).standard_normal((samples, m)))
            self._w = w / np.linalg.norm(w, axis=1, keepdims=True)
            self._best = np.zeros(samples)
            self._constant = math.pi ** (m / 2) / (math.gamma(m / 2 + 1) * 2 ** m)

    def add(self, point: Sequence[float] | None) -> bool:
        """Add the next point (None or a non-finite point counts as a step that changes nothing)."""
        index, self._count = self._count, self._count + 1
        on_front = False
        if point is not None:
            y = np.asarray(point, dtype=float) * self.signs
            if np.all(np.isfinite(y)):
                on_front = self._insert(index, y)
        self.history.append((self.hypervolume, len(self.front_ids)))
        return on_front

    def _insert(self, index: int, y: np.ndarray) -> bool:
        front = self.front
        if len(front) and np.any(np.all(front <= y, axis=1) & np.any(front < y, axis=1)):
            return False  # dominated: front and hypervolume unchanged
        keep = ~(np.all(y <= front, axis=1) & np.any(y < front, axis=1))
        self.front = np.vstack([front[keep], y])
        self.front_ids = [i for i, k in zip(self.front_ids, keep) if k] + [index]
        if self.ref is not None and np.all(y < self.ref):
            if self.exact:
                self.hypervolume = float(moocore.hypervolume(_inside(self.front, self.ref), ref=self.ref))
            else:
                s = np.min((self.ref - y) / self._w, axis=1)
                np.maximum(self._best, s, out=self._best)
                self.hypervolume = float(self._constant * np.mean(self._best ** len(self.ref)))
        return True


def search_hypervolume(points: Sequence[Sequence[float]], directions: Sequence[str], reference: Sequence[float]) -> float:
    """A search's hypervolume: exact while :func:`exact_is_affordable` for this many points, else the estimator.

    The same rule and estimator as :class:`FrontHistory` with ``expected_points=len(points)``,
    so it equals the last value of that history.
    """
    if exact_is_affordable(len(directions), len(points)):
        return hypervolume(points, directions, reference)
    history = FrontHistory(directions, reference, exact=False)
    for point in points:
        history.add(point)
    return history.hypervolume
