"""Records of finished trials and searches (what observers receive and ``report`` prints), and the front over them."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from . import pareto


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
    placement: dict[str, str] = field(default_factory=dict)  # device and Ray node id where it ran

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
        return {"number": self.number, "run_id": self.run_id, "strategy": self.strategy, "params": self.params,
                "status": self.status, "val": self.val, "test": self.test, "pareto": self.pareto, **self.placement}


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


def mark_front(trials: list[TrialRecord], objectives: list[dict[str, str]], reference: list[float] | None = None) -> tuple[float | None, list[float] | None]:
    """Set ``pareto`` on each trial (finished trials only); return (hypervolume, reference point)."""
    directions = [o["direction"] for o in objectives]
    scored = [(t, t.objective_values(objectives)) for t in trials if t.status == "finished"]
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


def trial_table(record: SearchRecord, only_front: bool = False) -> list[dict[str, Any]]:
    """Flat rows (for CSV and the terminal): number, strategy, status, pareto, val/test per task, the strategy's knobs."""
    rows = []
    for t in sorted(record.trials, key=lambda t: t.number):
        if only_front and not t.pareto:
            continue
        row: dict[str, Any] = {"number": t.number, "strategy": t.strategy, "status": t.status, "pareto": t.pareto}
        row.update({f"val/{k}": v for k, v in t.val.items()})
        row.update({f"test/{k}": v for k, v in t.test.items()})
        row["knobs"] = " ".join(f"{k.split('.', 1)[1]}={_short(v)}" for k, v in t.params.items() if k.startswith(t.strategy + "."))
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


