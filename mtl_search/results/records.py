"""Records of finished trials and searches (what observers receive and ``report`` prints), and the front over them."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from . import pareto

COST_METRICS = ("params", "latency", "train_seconds")  # a trial's final figures besides per-task metrics

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
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    checkpoint: str | None = None
    pareto: bool = False
    family: str = ""
    placement: dict[str, str] = field(default_factory=dict)  # device and Ray node id where it ran
    violations: list[str] | None = None  # the search.constraints it violates (empty: feasible); None: no constraints

    @property
    def run_name(self) -> str:
        """The child run's name in MLflow (what the plots label front points with)."""
        return trial_run_name(self.number, self.strategy)

    def objective_values(self, objectives: list[dict[str, str]]) -> list[float] | None:
        """Values of the objectives, or None when the trial has no finite value for one of them."""
        values = []
        for obj in objectives:
            value = self.val.get(obj["name"]) if obj["key"].startswith("val/") else self.metrics.get(obj["name"])
            if value is None or not math.isfinite(value):
                return None
            values.append(float(value))
        return values

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, "run_id": self.run_id, "strategy": self.strategy, "family": self.family,
                "params": self.params, "status": self.status, "val": self.val, "test": self.test, "pareto": self.pareto,
                "metrics": self.metrics, "error": self.error, **self.placement,
                **({"feasible": not self.violations, "violations": self.violations} if self.violations is not None else {})}


@dataclass
class SearchRecord:
    """A search: its objectives (name, key, direction), trials, front, hypervolume and reference point."""

    experiment: str
    search_run_id: str
    objectives: list[dict[str, str]]
    trials: list[TrialRecord]
    hypervolume: float | None = None
    reference_point: list[float] | None = None
    aborted: str | None = None  # why the search stopped before its trials were done (search.max_failures)
    interrupted: bool = False  # stopped by Ctrl-C: --resume continues it

    @property
    def front(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.pareto]

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "search_run_id": self.search_run_id,
            "objectives": [{"name": o["name"], "direction": o["direction"]} for o in self.objectives],
            "hypervolume": self.hypervolume,
            "trials": [t.to_json() for t in sorted(self.trials, key=lambda t: t.number)],
        }


def mark_front(trials: list[TrialRecord], objectives: list[dict[str, str]], reference: list[float] | None = None,
               constraints: list[Any] | None = None) -> tuple[float | None, list[float] | None]:
    """Set ``pareto`` on each trial (finished, feasible trials only); return (hypervolume, reference point).

    ``constraints`` (``search.constraints``, :mod:`mtl_search.results.constraints`) set each
    finished trial's ``violations``; a trial with violations (set now or recorded before) is
    left out of the front and the hypervolume, and stays in the record, marked infeasible.
    """
    directions = [o["direction"] for o in objectives]
    if constraints:
        from .constraints import violations

        for t in trials:
            t.violations = violations(t, constraints) if t.status == "finished" else None
    scored = [(t, t.objective_values(objectives)) for t in trials if t.status == "finished" and not t.violations]
    scored = [(t, v) for t, v in scored if v is not None]
    for t in trials:
        t.pareto = False
    if not scored:
        return None, reference
    points = [v for _, v in scored]
    for index in pareto.pareto_front(points, directions):
        scored[index][0].pareto = True
    reference = reference or pareto.default_reference_point(points, directions)
    return pareto.hypervolume(points, directions, reference), reference


def hypervolume_history(trials_in_finish_order: list[TrialRecord], objectives: list[dict[str, str]], reference: list[float]) -> list[tuple[float, int]]:
    """(hypervolume, front size) after each finished trial, all with the same reference point."""
    directions = [o["direction"] for o in objectives]
    history, points = [], []
    for trial in trials_in_finish_order:
        values = trial.objective_values(objectives) if trial.status == "finished" else None
        if values is not None:
            points.append(values)
        front = pareto.pareto_front(points, directions) if points else []
        history.append((pareto.hypervolume(points, directions, reference) if points else 0.0, len(front)))
    return history


def family_record(record: SearchRecord, family: str) -> SearchRecord:
    """The search restricted to one family's trials, with that family's own front and hypervolume
    (against the whole search's reference point, so families compare)."""
    families = sorted({t.family for t in record.trials})
    if family not in families:
        from ..errors import MtlSearchError

        raise MtlSearchError(f"no trial of family {family!r} in this search; families: {', '.join(families) or 'none'}")
    trials = [replace(t) for t in record.trials if t.family == family]
    subset = SearchRecord(record.experiment, record.search_run_id, record.objectives, trials, reference_point=record.reference_point)
    subset.hypervolume, _ = mark_front(trials, record.objectives, record.reference_point)
    return subset


def trial_table(record: SearchRecord, only_front: bool = False, detailed: bool = False) -> list[dict[str, Any]]:
    """Flat rows: number, strategy, family, status, pareto, val/test per task, the strategy's knobs.

    ``detailed`` (the table artifacts) adds the run, cost figures, error and every sampled
    parameter as a ``config/<name>`` column.
    """
    rows = []
    for t in sorted(record.trials, key=lambda t: t.number):
        if only_front and not t.pareto:
            continue
        row: dict[str, Any] = {"number": t.number, "strategy": t.strategy, "family": t.family, "status": t.status, "pareto": t.pareto}
        if any(u.violations is not None for u in record.trials):  # the search had constraints
            row["feasible"] = None if t.violations is None else not t.violations
        row.update({f"val/{k}": v for k, v in t.val.items()})
        row.update({f"test/{k}": v for k, v in t.test.items()})
        row["knobs"] = " ".join(f"{k.split('.', 1)[1]}={_short(v)}" for k, v in t.params.items() if k.startswith(t.strategy + "."))
        if detailed:
            row.update({"run_name": t.run_name, "run_id": t.run_id})
            row.update({name: t.metrics.get(name) for name in COST_METRICS})
            row["error"] = (t.error or "").strip().splitlines()[-1] if t.error else ""
            if t.violations:
                row["violations"] = "; ".join(t.violations)
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
    columns = ["number", "strategy", *[f"val/{o['name']}" for o in record.objectives if o["key"].startswith("val/")],
               *[f"test/{t}" for t in tasks]]
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
