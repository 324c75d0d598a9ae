"""Constraints on a search's results (``search.constraints``): per-task thresholds a trial must meet to be on the front.

::

    search:
      constraints:
        clicked: ">= 0.70"            # the task's validation metric (its `metric`, here auc)
        converted: {auc: ">= 0.60"}   # the same, naming the metric (it must be the task's metric)
        params: "<= 50000"            # a cost figure: params or latency

A finished trial that violates a constraint is *infeasible*: it is kept and shown (the
``feasible`` column of the tables, its violations in the detailed tables, in
``report --format json`` and in the plots' hover text, grey in the front plots) but left out of the Pareto front and the hypervolume. The samplers
that support Optuna's constraints (tpe, nsga2, gp) are told each finished trial's
constraint values (:func:`tell_constraints`), so they steer away from infeasible regions.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import SpaceError, did_you_mean
from ..record import LATENCY, PARAMS, val_key

OPERATORS = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, "<": lambda a, b: a < b}
COST_NAMES = (PARAMS, LATENCY)
_CONDITION = re.compile(r"^\s*(>=|<=|>|<)\s*([-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Constraint:
    """``name`` (a task, or a cost figure) ``op`` ``value``; ``metric`` is the task's metric named in the space, if any."""

    name: str
    op: str
    value: float
    metric: str = ""

    def describe(self) -> str:
        return f"{self.name}{'.' + self.metric if self.metric else ''} {self.op} {self.value:g}"

    def holds(self, value: float | None) -> bool:
        """Whether a trial's ``value`` meets the constraint (a missing or non-finite value does not)."""
        return value is not None and math.isfinite(value) and OPERATORS[self.op](value, self.value)


def parse_condition(text: Any, path: str) -> tuple[str, float]:
    """``">= 0.7"`` -> (">=", 0.7); anything else is a SpaceError at ``path``."""
    match = _CONDITION.match(text) if isinstance(text, str) else None
    if not match:
        raise SpaceError(path, f"expected a condition like \">= 0.70\" (operators >=, <=, >, <), got {text!r}")
    return match.group(1), float(match.group(2))


def parse_constraints(raw: Any) -> list[Constraint]:
    """The ``search.constraints`` mapping, checked for structure (names are checked by :func:`check_constraints`)."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise SpaceError("search.constraints", f"expected a mapping like {{clicked: \">= 0.70\"}}, got {raw!r}")
    constraints = []
    for name, spec in raw.items():
        path = f"search.constraints.{name}"
        if isinstance(spec, dict):
            if len(spec) != 1:
                raise SpaceError(path, f"expected one metric and its condition, like {{auc: \">= 0.70\"}}, got {spec!r}")
            ((metric, condition),) = spec.items()
            op, value = parse_condition(condition, f"{path}.{metric}")
            constraints.append(Constraint(str(name), op, value, str(metric)))
        else:
            op, value = parse_condition(spec, path)
            constraints.append(Constraint(str(name), op, value))
    return constraints


def check_constraints(constraints: list[Constraint], problem: Any) -> None:
    """Every constraint names a task (and that task's metric) or a cost figure of ``problem``'s search."""
    names = [*problem.task_names, *COST_NAMES]
    for c in constraints:
        path = f"search.constraints.{c.name}"
        if c.name not in names:
            raise SpaceError(path, f"unknown task or cost {c.name!r}; {did_you_mean(c.name, names)}")
        if c.metric:
            if c.name in COST_NAMES:
                raise SpaceError(path, f"a cost figure takes a condition directly, like {c.name}: \"<= 1e5\"")
            metric = problem.task(c.name).metric
            if c.metric != metric:
                raise SpaceError(f"{path}.{c.metric}", f"task {c.name!r} is evaluated by {metric}, not {c.metric}; "
                                 f"constrain {metric} (or set tasks.{c.name}.metric)")


def violations(trial: Any, constraints: list[Constraint]) -> list[str]:
    """The constraints a finished trial (a ``TrialRecord``) violates, described (empty: feasible)."""
    out = []
    for c in constraints:
        value = trial.metrics.get(c.name) if c.name in COST_NAMES else trial.val.get(c.name)
        if not c.holds(value):
            out.append(f"{c.describe()} (is {value:.4g})" if value is not None else f"{c.describe()} (no value)")
    return out


def constraint_values(constraints: list[Constraint], result: dict[str, Any]) -> list[float]:
    """Optuna's convention, one value per constraint: <= 0 where it holds, the violation's size otherwise.

    ``result`` is a trial's final report (``val/<task>``, ``params``, ``latency``); a missing
    or non-finite value counts as a violation of 1.
    """
    values = []
    for c in constraints:
        value = result.get(c.name if c.name in COST_NAMES else val_key(c.name))
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            values.append(1.0)
        else:
            values.append(float(c.value - value) if c.op in (">=", ">") else float(value - c.value))
    return values


def tell_constraints(trial: Any, constraints: list[Constraint], result: dict[str, Any]) -> None:
    """Record a finished trial's constraint values on its Optuna ``trial`` (before it is told), where the samplers read them."""
    for c, value in zip(constraints, constraint_values(constraints, result)):
        trial.set_constraint(c.describe(), value)
