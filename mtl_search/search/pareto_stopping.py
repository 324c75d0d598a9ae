"""Multi-objective asynchronous successive halving: ``search.early_stopping: pareto``.

MO-ASHA (Schmucker, Donini, Zafar, Salinas & Archambeau 2021, "Multi-objective
Asynchronous Successive Halving", arXiv:2106.12639) is ASHA (Li et al. 2020, "A System for
Massively Parallel Hyperparameter Tuning", MLSys) whose rungs rank trials by several
objectives instead of one. A trial reaching a rung (epoch ``grace_period · η^k``) has its
objective values recorded there; it goes on if it is in the top ``1/η`` of every trial
recorded at that rung so far (itself included), ranked by

1. non-dominated sorting (the Pareto rank of its values among the rung's; moocore), then
2. inside a front, the NSGA-II crowding distance (Deb et al. 2002), larger first: the
   extremes of a front (a trial best on one task) have an infinite distance and come first.

Otherwise it is stopped. The decision is asynchronous, as in ASHA: a trial is compared
with the trials that reached the rung before it, never waits for later ones, and a trial
once promoted is never stopped at that rung again.

Deviations from the paper and its reference implementation (Syne Tune's ``MOASHA``):

- Tie-breaking inside a front by crowding distance, one of the paper's variants (its
  NSGA-II-style sort); Syne Tune's default is the ε-net strategy.
- "Top 1/η": a trial goes on when fewer than ``ceil(n/η)`` of the rung's ``n`` trials rank
  strictly ahead of it (Syne Tune: when at most ``n/η`` do, which keeps one more trial at an
  even ``n``). The first trial at a rung always goes on.
- One bracket (Ray's ``ASHAScheduler`` default, and the paper's experiments), and rungs
  strictly below ``max_t``: a trial that has trained every epoch is never stopped before
  it reports its result.
- Objectives with no per-epoch value (``latency`` is measured once, after training) are
  left out of the rungs by the caller (:func:`mtl_search.search.tune.make_scheduler`).
  A value that is not finite ranks behind every finite one.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from ..record import EPOCH
from ..results.pareto import as_minimisation, non_dominated_sort


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each row of one front (minimisation space): the sum over objectives of the
    normalised gap between its two neighbours; the extremes of any objective, and fronts of up to two points, get inf."""
    n, m = points.shape
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, math.inf)
    for j in range(m):
        order = np.argsort(points[:, j], kind="stable")
        column = points[order, j]
        span = column[-1] - column[0]
        distance[order[0]] = distance[order[-1]] = math.inf
        if span > 0:
            distance[order[1:-1]] += (column[2:] - column[:-2]) / span
    return distance


def rung_ranking(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[tuple[int, float]]:
    """Each point's sort key at a rung, smaller first: (its front, minus its crowding distance inside that front).

    Points with a non-finite value form the last front, with no crowding (distance 0).
    """
    keys: list[tuple[int, float]] = [(0, 0.0)] * len(points)
    if not len(points):
        return keys
    arr = as_minimisation(points, directions)
    for rank, front in enumerate(non_dominated_sort(points, directions)):
        members = arr[front]
        finite = bool(np.all(np.isfinite(members)))
        crowding = crowding_distance(members) if finite else np.zeros(len(front))
        for index, distance in zip(front, crowding):
            keys[index] = (rank, -float(distance))
    return keys


def promoted(points: Sequence[Sequence[float]], directions: Sequence[str], reduction_factor: float) -> bool:
    """Whether the last point goes on from its rung: fewer than ``ceil(n/η)`` of the ``n`` points rank strictly ahead of it."""
    keys = rung_ranking(points, directions)
    ahead = sum(key < keys[-1] for key in keys[:-1])
    return ahead < math.ceil(len(points) / reduction_factor)


def rung_levels(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The rungs: ``grace_period · η^k`` for every k with a level below ``max_t``."""
    if grace_period < 1 or reduction_factor <= 1:
        raise ValueError(f"grace_period must be >= 1 and reduction_factor > 1, got {grace_period} and {reduction_factor}")
    levels, level = [], float(grace_period)
    while level < max_t:
        levels.append(int(round(level)))
        level *= reduction_factor
    return levels


class ParetoSuccessiveHalving(FIFOScheduler):
    """MO-ASHA as a Ray Tune scheduler (see the module docstring): rungs rank trials by Pareto rank, then crowding distance.

    ``objectives``: the result keys the rungs read, each with its direction (``min``/``max``);
    ``time_attr``: the result key counting training (the trainer's ``epoch``). A result
    without ``time_attr`` (a trial's final result) passes through.
    """

    def __init__(self, objectives: Sequence[tuple[str, str]], max_t: int, grace_period: int = 1, reduction_factor: float = 2,
                 time_attr: str = EPOCH):
        super().__init__()
        if not objectives:
            raise ValueError("the Pareto rule needs at least one objective")
        self.keys = [key for key, _ in objectives]
        self.directions = [direction for _, direction in objectives]
        as_minimisation([[0.0] * len(self.keys)], self.directions)  # checks the directions
        self.time_attr, self.reduction_factor = time_attr, reduction_factor
        self.levels = rung_levels(grace_period, reduction_factor, max_t)
        self.rungs: dict[int, dict[str, list[float]]] = {level: {} for level in self.levels}  # level -> trial id -> values
        self.stopped = 0

    def decide(self, trial_id: str, epoch: float, result: dict[str, Any]) -> str:
        """The rung rule for one result of trial ``trial_id`` at ``epoch``: record it at the highest rung it has reached
        and not been recorded at, and say whether it goes on (CONTINUE) or not (STOP)."""
        for level in reversed(self.levels):
            recorded = self.rungs[level]
            if epoch < level or trial_id in recorded:
                continue
            values = [_number(result.get(key)) for key in self.keys]
            points = [*recorded.values(), values]
            recorded[trial_id] = values
            if not promoted(points, self.directions, self.reduction_factor):
                self.stopped += 1
                return TrialScheduler.STOP
            break
        return TrialScheduler.CONTINUE

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if self.time_attr not in result:
            return TrialScheduler.CONTINUE
        return self.decide(trial.trial_id, float(result[self.time_attr]), result)

    def debug_string(self) -> str:
        sizes = ", ".join(f"epoch {level}: {len(self.rungs[level])}" for level in self.levels)
        return f"Using Pareto successive halving (MO-ASHA): {self.stopped} stopped; trials per rung: {sizes}"


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan
