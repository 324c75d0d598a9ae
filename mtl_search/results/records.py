"""Records of finished trials and searches (what observers receive and ``report`` prints), and the front over them."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from . import pareto
from .metrics import (
    COST_METRICS,
    DELTA_M,
    GAIN,
    GROUP,
    TEST,
    TEST_GAIN,
    VAL,
    WORST_GAIN,
    Objective,
    negative_transfer,
)


def trial_run_name(number: int, strategy: str) -> str:
    """The name of a trial's MLflow run, e.g. ``trial-007-mmoe``."""
    return f"trial-{number:03d}-{strategy}"


@dataclass
class TrialRecord:
    """One trial as recorded: configuration, status, per-task val/test metrics, the other final figures."""

    number: int
    run_id: str
    strategy: str
    params: dict[str, Any]
    status: str  # finished | failed | stopped (ended early by the scheduler or a cancel) | killed (by a crash)
    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # costs, delta_m, worst_gain, group/<name> (metrics.is_trial_figure)
    gains: dict[str, float] = field(default_factory=dict)  # per task: validation gain over its single-task reference, percent
    test_gains: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    checkpoint: str | None = None
    pareto: bool = False
    family: str = ""
    placement: dict[str, str] = field(default_factory=dict)  # device and Ray node id where it ran

    @property
    def run_name(self) -> str:
        """The child run's name in MLflow (what the plots label front points with)."""
        return trial_run_name(self.number, self.strategy)

    @property
    def negative_transfer(self) -> bool:
        """Some task is worse than its single-task reference (on validation)."""
        return negative_transfer(self.gains)

    def value(self, key: str) -> float | None:
        """The figure a result key names (``val/<task>``, ``test/<task>``, ``gain/<task>``, ``delta_m``, ``params``, ...)."""
        for prefix, values in ((VAL, self.val), (TEST, self.test), (GAIN, self.gains), (TEST_GAIN, self.test_gains)):
            if key.startswith(prefix):
                return values.get(key[len(prefix):])
        return self.metrics.get(key)

    def objective_values(self, objectives: list[Objective]) -> list[float] | None:
        """Values of the objectives, or None when the trial has no finite value for one of them."""
        values = []
        for obj in objectives:
            value = self.value(obj.key)
            if value is None or not math.isfinite(value):
                return None
            values.append(float(value))
        return values

    def to_json(self) -> dict[str, Any]:
        data = {"number": self.number, "run_id": self.run_id, "strategy": self.strategy, "family": self.family,
                "params": self.params, "status": self.status, "val": self.val, "test": self.test, "pareto": self.pareto,
                "metrics": self.metrics, "error": self.error, **self.placement}
        if self.gains:
            data.update({"gains": self.gains, "test_gains": self.test_gains, "negative_transfer": self.negative_transfer})
        return data


@dataclass
class SearchRecord:
    """A search: its objectives, trials, front, hypervolume and reference point, and the single-task references' metrics."""

    experiment: str
    search_run_id: str
    objectives: list[Objective]
    trials: list[TrialRecord]
    hypervolume: float | None = None
    reference_point: list[float] | None = None
    aborted: str | None = None  # why the search stopped before its trials were done (search.max_failures)
    interrupted: bool = False  # stopped by Ctrl-C: --resume continues it
    references: dict[str, dict[str, float]] | None = None  # {"val": {task: metric}, "test": {...}}

    @property
    def front(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.pareto]

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "search_run_id": self.search_run_id,
            "objectives": [{"name": o.name, "direction": o.direction} for o in self.objectives],
            "hypervolume": self.hypervolume,
            **({"references": self.references} if self.references else {}),
            "trials": [t.to_json() for t in sorted(self.trials, key=lambda t: t.number)],
        }


def mark_front(trials: list[TrialRecord], objectives: list[Objective], reference: list[float] | None = None) -> tuple[float | None, list[float] | None]:
    """Set ``pareto`` on each trial (finished trials only); return (hypervolume, reference point).

    The hypervolume is :func:`pareto.search_hypervolume`'s: exact where affordable, else the estimator.
    """
    directions = [o.direction for o in objectives]
    scored = _scored(trials, objectives)
    for t in trials:
        t.pareto = False
    if not scored:
        return None, reference
    points = [v for _, v in scored]
    for index in pareto.pareto_front(points, directions):
        scored[index][0].pareto = True
    reference = reference or pareto.default_reference_point(points, directions)
    return pareto.search_hypervolume(points, directions, reference), reference


def _scored(trials: list[TrialRecord], objectives: list[Objective]) -> list[tuple[TrialRecord, list[float]]]:
    scored = [(t, t.objective_values(objectives)) for t in trials if t.status == "finished"]
    return [(t, v) for t, v in scored if v is not None]


class LiveFront:
    """The front over trials as they finish, one trial at a time (what the driver keeps up to date during a search).

    Each ``add`` compares the new trial with the current front only (no full sort), sets its
    ``pareto`` flag and clears it on the front trials it dominates.
    """

    def __init__(self, objectives: list[Objective], trials: list[TrialRecord] = ()):
        self.objectives = objectives
        self._front = pareto.FrontHistory([o.direction for o in objectives], None, exact=True)
        self._trials: list[TrialRecord] = []
        for trial in trials:
            self.add(trial)

    def add(self, trial: TrialRecord) -> bool:
        """Take the next finished (or not) trial; returns whether it is on the front now."""
        self._trials.append(trial)
        values = trial.objective_values(self.objectives) if trial.status == "finished" else None
        before = set(self._front.front_ids)
        trial.pareto = self._front.add(values)
        for index in before - set(self._front.front_ids):
            self._trials[index].pareto = False
        return trial.pareto

    @property
    def size(self) -> int:
        return len(self._front.front_ids)


def hypervolume_history(trials_in_finish_order: list[TrialRecord], objectives: list[Objective], reference: list[float]) -> list[tuple[float, int]]:
    """(hypervolume, front size) after each trial in finish order, all with the same reference point.

    One incremental pass (:class:`pareto.FrontHistory`): the hypervolume is recomputed only
    when a trial changes the front, or updated in O(1) in the front's size by the estimator.
    """
    expected = len(_scored(trials_in_finish_order, objectives))
    history = pareto.FrontHistory([o.direction for o in objectives], reference, expected_points=expected)
    for trial in trials_in_finish_order:
        history.add(trial.objective_values(objectives) if trial.status == "finished" else None)
    return history.history


def family_record(record: SearchRecord, family: str) -> SearchRecord:
    """The search restricted to one family's trials, with that family's own front and hypervolume
    (against the whole search's reference point, so families compare)."""
    families = sorted({t.family for t in record.trials})
    if family not in families:
        from ..errors import MtlSearchError

        raise MtlSearchError(f"no trial of family {family!r} in this search; families: {', '.join(families) or 'none'}")
    trials = [replace(t) for t in record.trials if t.family == family]
    subset = SearchRecord(record.experiment, record.search_run_id, record.objectives, trials, reference_point=record.reference_point,
                          references=record.references)
    subset.hypervolume, _ = mark_front(trials, record.objectives, record.reference_point)
    return subset


def trial_table(record: SearchRecord, only_front: bool = False, detailed: bool = False) -> list[dict[str, Any]]:
    """Flat rows: number, strategy, family, status, pareto, val/test per task, Δm, worst gain and negative transfer
    (when the search has single-task references), the strategy's knobs.

    ``detailed`` (the table artifacts) adds the run, cost figures, per-task gains, error and
    every sampled parameter as a ``config/<name>`` column.
    """
    rows = []
    for t in sorted(record.trials, key=lambda t: t.number):
        if only_front and not t.pareto:
            continue
        row: dict[str, Any] = {"number": t.number, "strategy": t.strategy, "family": t.family, "status": t.status, "pareto": t.pareto}
        row.update({f"val/{k}": v for k, v in t.val.items()})
        row.update({f"test/{k}": v for k, v in t.test.items()})
        if record.references:
            row.update({DELTA_M: t.metrics.get(DELTA_M), WORST_GAIN: t.metrics.get(WORST_GAIN),
                        "neg_transfer": t.negative_transfer if t.gains else None})
            row.update({o.key: t.metrics.get(o.key) for o in record.objectives if o.key.startswith(GROUP)})
        row["knobs"] = " ".join(f"{k.split('.', 1)[1]}={_short(v)}" for k, v in t.params.items() if k.startswith(t.strategy + "."))
        if detailed:
            row.update({"run_name": t.run_name, "run_id": t.run_id})
            row.update({name: t.metrics.get(name) for name in COST_METRICS})
            row.update({GAIN + k: v for k, v in t.gains.items()})
            row["error"] = (t.error or "").strip().splitlines()[-1] if t.error else ""
            row.update({f"config/{k}": v for k, v in t.params.items()})
        rows.append(row)
    return rows


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A plain fixed-width text table."""
    if not rows:
        return "(no trials)"
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    widths = {c: max(len(c), *(len(cell(r.get(c))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(cell(r.get(c)).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)




def front_summary(record: SearchRecord) -> str:
    """What a finished ``mtl-search run`` prints: the front's table, the trial counts and how to review the search."""
    tasks = sorted({task for t in record.trials for task in t.test})
    columns = ["number", "strategy", *[o.key for o in record.objectives if o.key.startswith(VAL)], *[TEST + t for t in tasks]]
    if record.references:
        columns += [DELTA_M, WORST_GAIN, "neg_transfer"]
    hv = f"{record.hypervolume:.6g}" if record.hypervolume is not None else "n/a"
    counts = {s: sum(t.status == s for t in record.trials) for s in ("failed", "stopped")}
    lines = ["", "Pareto front (validation):", format_table(trial_table(record, only_front=True), columns), "",
             f"{len(record.trials)} trials ({counts['failed']} failed, {counts['stopped']} stopped early), "
             f"front size {len(record.front)}, hypervolume {hv}"]
    if record.aborted:
        lines.append(f"ABORTED: {record.aborted}")
    if record.interrupted:
        lines.append("interrupted: `mtl-search run SPACE --resume` continues the search")
    lines.append("review: mtl-search ui   |   mtl-search report --format json")
    return "\n".join(lines)
