"""One trial off a search's front, chosen by a documented rule: the knee, a weighted sum, after constraints.

Every objective is min-max normalised over the candidates (the front's trials that meet the
constraints) and flipped so that 1 is best: u_j = (y_j - worst_j) / (best_j - worst_j); an
objective constant over the candidates counts 1 for all.

- knee (default): the candidate farthest, on the ideal point's side, from the hyperplane
  through the m extreme candidates (for each objective the one best in it; with two
  objectives the line through the ends of the front). Das 1999 (normal-boundary
  intersection); Branke, Deb, Dierolf & Osswald, PPSN 2004. Where the extremes do not span a
  hyperplane the plane sum_j u_j = 1 is used.
- weights: the largest sum_j w_j u_j, the weights normalised to sum to 1 (an objective
  without a weight gets 0).
- constraints (``minimum``/``maximum``): a bound on the raw value of an objective, a task's
  validation metric or a cost (``params``, ``latency``, ``train_seconds``); only front
  trials within every bound are candidates.

Ties go to the lower trial number. See docs/methods.md (picking one trial off the front).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..errors import MtlSearchError
from ..record import COST_METRICS, Objective, TrialRecord, val_key
from .records import SearchRecord, format_value, metric_label


@dataclass(frozen=True)
class Pick:
    """The chosen trial, the rule that chose it, its value under that rule and how many front trials were candidates."""

    trial: TrialRecord
    rule: str  # "knee" | "weights"
    score: float
    candidates: int


def parse_assignments(text: str, option: str) -> dict[str, float]:
    """``t1=0.5,t2=0.5`` as ``{t1: 0.5, t2: 0.5}``; a malformed item is an error naming ``option`` and the item."""
    out: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not name or not math.isfinite(number):
            raise MtlSearchError(f"{option}: expected NAME=NUMBER[,NAME=NUMBER...], got {item!r}")
        if name in out:
            raise MtlSearchError(f"{option}: {name!r} is given twice")
        out[name] = number
    return out


def pick(record: SearchRecord, weights: Mapping[str, float] | None = None, minimum: Mapping[str, float] | None = None,
         maximum: Mapping[str, float] | None = None) -> Pick:
    """The front trial of ``record`` chosen by the knee (no ``weights``) or the best weighted sum, among those within the bounds.

    ``weights`` name objectives; ``minimum``/``maximum`` name objectives, tasks (their
    validation metric) or costs. Raises MtlSearchError naming an unknown name, a negative or all-zero
    weight, or bounds no front trial meets.
    """
    objectives = record.objectives
    names = [o.name for o in objectives]
    bounds = _bound_keys(record, {**(minimum or {}), **(maximum or {})})
    if weights is not None:
        _check_weights(weights, names)
    candidates = [t for t in sorted(record.front, key=lambda t: t.number)
                  if all(_within(t.value(bounds[n]), v, "min") for n, v in (minimum or {}).items())
                  and all(_within(t.value(bounds[n]), v, "max") for n, v in (maximum or {}).items())]
    if not record.front:
        raise MtlSearchError(f"search run {record.search_run_id} of experiment {record.experiment!r} has no trial on its front")
    if not candidates:
        limits = [f"{n}>={v:g}" for n, v in (minimum or {}).items()] + [f"{n}<={v:g}" for n, v in (maximum or {}).items()]
        raise MtlSearchError(f"no trial of the front ({len(record.front)} trials) meets {', '.join(limits)}")
    u = normalised([t.objective_values(objectives) for t in candidates], objectives)
    if weights is not None:
        total = sum(weights.values())
        scores = u @ np.array([weights.get(n, 0.0) / total for n in names])
        rule = "weights"
    else:
        scores = knee_distances(u)
        rule = "knee"
    best = int(np.argmax(scores))  # the first maximum: the lowest trial number
    return Pick(candidates[best], rule, float(scores[best]), len(candidates))


def normalised(points: list[list[float]], objectives: list[Objective]) -> np.ndarray:
    """Min-max normalised objective values, 1 best and 0 worst over ``points``; a constant objective is 1."""
    arr = np.asarray(points, dtype=float).reshape(len(points), len(objectives))
    signs = np.array([1.0 if o.direction == "max" else -1.0 for o in objectives])
    arr = arr * signs  # larger is better
    low, high = arr.min(axis=0), arr.max(axis=0)
    span = high - low
    return np.where(span > 0, (arr - low) / np.where(span > 0, span, 1.0), 1.0)


def knee_distances(u: np.ndarray) -> np.ndarray:
    """Signed distance of each normalised point to the hyperplane through the extremes, positive on the ideal point's side."""
    n, m = u.shape
    extremes = u[[int(np.argmax(u[:, j])) for j in range(m)]]
    normal = np.ones(m)
    if m > 1 and np.linalg.matrix_rank(extremes) == m:
        candidate = np.linalg.solve(extremes, np.ones(m))  # the plane normal . u = 1 through every extreme
        if candidate @ np.ones(m) > 1 + 1e-12:  # the ideal point (all ones) lies on its positive side
            normal = candidate
    return (u @ normal - 1.0) / np.linalg.norm(normal)


def _bound_keys(record: SearchRecord, bounds: Mapping[str, float]) -> dict[str, str]:
    """The result key each bounded name reads: an objective's key, else a task's validation metric or a cost (``params`` ...)."""
    keys = {o.name: o.key for o in record.objectives}
    tasks = {t: val_key(t) for t in record.task_metrics if t not in keys}
    tasks.update({c: c for c in COST_METRICS if c not in keys})
    unknown = [n for n in bounds if n not in keys and n not in tasks]
    if unknown:
        raise MtlSearchError(f"--min/--max: unknown name{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                             f"objectives: {', '.join(keys)}" + (f"; tasks and costs: {', '.join(tasks)}"))
    return {n: keys.get(n) or tasks[n] for n in bounds}


def _check_weights(weights: Mapping[str, float], names: list[str]) -> None:
    unknown = [n for n in weights if n not in names]
    if unknown:
        raise MtlSearchError(f"--weights: unknown objective{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                             f"objectives: {', '.join(names)}")
    negative = [f"{n}={w:g}" for n, w in weights.items() if w < 0]
    if negative:
        raise MtlSearchError(f"--weights: a weight must be >= 0, got {', '.join(negative)}")
    if not any(w > 0 for w in weights.values()):
        raise MtlSearchError("--weights: at least one weight must be > 0")


def _within(value: float | None, bound: float, kind: str) -> bool:
    if value is None or not math.isfinite(value):
        return False
    return value >= bound if kind == "min" else value <= bound


def pick_line(chosen: Pick, record: SearchRecord, tracking_uri: str | None = None) -> str:
    """The chosen trial as ``pick`` prints it: number, strategy, run id, its objective values and how to predict with it
    (naming ``tracking_uri`` when the store is not the default one)."""
    values = ", ".join(f"{metric_label(o.name, record.task_metrics)} {format_value(chosen.trial.value(o.key))}" for o in record.objectives)
    return (f"trial {chosen.trial.number} {chosen.trial.strategy} (run {chosen.trial.run_id}): {values}\n"
            f"chosen by {chosen.rule} among {chosen.candidates} of {len(record.front)} front trials of search run "
            f"{record.search_run_id} (experiment {record.experiment!r})\n"
            f"predict: mtl-search predict {chosen.trial.run_id} ROWS.csv" + (f" --tracking-uri {tracking_uri}" if tracking_uri else ""))
