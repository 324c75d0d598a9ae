"""Records of finished trials and searches (what observers receive and ``report`` prints), and the front over them."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import NUMBER_KEY, REFERENCE_TASK_KEY, REPEAT_KEY, STRATEGY_KEY
from ..record import (
    COST_METRICS,
    DELTA_M,
    EPOCH,
    GAIN,
    GBDT_GAIN,
    GROUP,
    METRIC_DIRECTIONS,
    TEST,
    TEST_DELTA_M,
    TEST_GAIN,
    VAL,
    WORST_GAIN,
    Objective,
    Spread,
    TrialRecord,
)
from . import pareto
from .metrics import relative_gain, repeat_gains, spread

SIGNIFICANT_DIGITS = 4  # every value printed for a user: the same number of significant digits


def format_value(value: Any) -> str:
    """A value as printed in tables and progress lines: floats with ``SIGNIFICANT_DIGITS`` significant digits."""
    if isinstance(value, float):
        return f"{value:#.{SIGNIFICANT_DIGITS}g}".rstrip(".") if math.isfinite(value) else str(value)
    return "" if value is None else str(value)


def metric_label(name: str, task_metrics: dict[str, str] | None = None) -> str:
    """An objective or task named with its metric, ``y1 mse``; a cost objective (``params``) as it is."""
    metric = (task_metrics or {}).get(name)
    return f"{name} {metric}" if metric else name


def column_label(column: str, task_metrics: dict[str, str] | None = None) -> str:
    """A table column as printed: ``val/y1`` -> ``val y1 mse``, ``gbdt_gain/y1`` -> ``y1 vs gbdt %``; other columns unchanged."""
    split, _, task = column.partition("/")
    if split in ("val", "test") and task:
        return f"{split} {metric_label(task, task_metrics)}"
    if column.startswith(GBDT_GAIN):
        return f"{task} vs gbdt %"
    return column


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
    task_metrics: dict[str, str] = field(default_factory=dict)  # task -> the metric of its val/test values (mse, auc ...)
    references: dict[str, dict[str, float]] | None = None  # {"val": {task: metric}, "test": {...}}
    reference_trials: list[TrialRecord] = field(default_factory=list)  # the searched references' trials (baseline mode search)
    reference_runs: dict[str, str] = field(default_factory=dict)  # task -> the run id of its chosen reference trial
    repeats: list[TrialRecord] = field(default_factory=list)  # the front trials and chosen references trained again (search.repeats)
    gbdt: dict[str, Any] | None = None  # the GBDT comparison row (search/gbdt.py): {"val": {task: m}, "test": {...}, "seconds": s}
    strategies: list[str] = field(default_factory=list)  # the space's strategies, those that got no trial too

    @property
    def front(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.pareto]

    def gbdt_gains(self, trial: TrialRecord, split: str = "val") -> dict[str, float]:
        """Per task, ``trial``'s gain over the GBDT row on ``split`` (percent, :func:`relative_gain`); empty without the row."""
        if not self.gbdt:
            return {}
        values = trial.val if split == "val" else trial.test
        return {task: relative_gain(float(values.get(task, math.nan)), float(reference), METRIC_DIRECTIONS[self.task_metrics[task]])
                for task, reference in self.gbdt[split].items() if task in self.task_metrics}

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "search_run_id": self.search_run_id,
            "objectives": [{"name": o.name, "direction": o.direction} for o in self.objectives],
            "hypervolume": self.hypervolume,
            "task_metrics": self.task_metrics,
            **({"references": self.references} if self.references else {}),
            **({"reference_trials": [t.to_json() | {"task": t.reference_task} for t in self.reference_trials]} if self.reference_trials else {}),
            **({"repeats": [t.to_json() | {"repeat_of": t.repeat_of, "repeat": t.repeat} for t in self.repeats]} if self.repeats else {}),
            **({"gbdt": self.gbdt} if self.gbdt else {}),
            "trials": [self._trial_json(t) for t in sorted(self.trials, key=lambda t: t.number)],
        }

    def _trial_json(self, trial: TrialRecord) -> dict[str, Any]:
        data = trial.to_json()
        if self.gbdt and trial.status == "finished":
            data.update({"gbdt_gains": self.gbdt_gains(trial), "gbdt_test_gains": self.gbdt_gains(trial, "test")})
        return data


def mark_front(trials: list[TrialRecord], objectives: list[Objective], reference: list[float] | None = None,
               constraints: list[Any] | None = None) -> tuple[float | None, list[float] | None]:
    """Set ``pareto`` on each trial (finished, feasible trials only); return (hypervolume, reference point).

    ``constraints`` (``search.constraints``, :mod:`mtl_search.results.constraints`) set each
    finished trial's ``violations``; a trial with violations (set now or recorded before) is
    left out of the front and the hypervolume, and stays in the record, marked infeasible.
    The hypervolume is :func:`pareto.search_hypervolume`'s: exact where affordable, else the estimator.
    """
    directions = [o.direction for o in objectives]
    if constraints:
        from .constraints import violations

        for t in trials:
            t.violations = violations(t, constraints) if t.status == "finished" else None
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
    scored = [(t, t.objective_values(objectives)) for t in trials if t.status == "finished" and not t.violations]
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
        values = trial.objective_values(self.objectives) if trial.status == "finished" and not trial.violations else None
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
                          task_metrics=record.task_metrics, references=record.references, gbdt=record.gbdt)
    subset.hypervolume, _ = mark_front(trials, record.objectives, record.reference_point)
    return subset


def trial_table(record: SearchRecord, only_front: bool = False, detailed: bool = False) -> list[dict[str, Any]]:
    """Flat rows: number, run id (what ``predict`` takes), strategy, family, status, pareto, val/test per task, Δm,
    worst gain and negative transfer (when the search has single-task references), the per-task validation
    gain over the GBDT row (``gbdt_gain/<task>``, with ``baseline.gbdt``), the strategy's knobs.

    ``detailed`` (the table artifacts) adds the run name, cost figures, per-task gains, error and
    every sampled parameter as a ``config/<name>`` column.
    """
    rows = []
    for t in sorted(record.trials, key=lambda t: t.number):
        if only_front and not t.pareto:
            continue
        row: dict[str, Any] = {"number": t.number, "run_id": t.run_id, "strategy": t.strategy, "family": t.family,
                               "status": t.status, "pareto": t.pareto}
        if any(u.violations is not None for u in record.trials):  # the search had constraints
            row["feasible"] = None if t.violations is None else not t.violations
        row.update({VAL + k: v for k, v in t.val.items()})
        row.update({TEST + k: v for k, v in t.test.items()})
        if record.references:
            row.update({DELTA_M: t.metrics.get(DELTA_M), WORST_GAIN: t.metrics.get(WORST_GAIN),
                        "neg_transfer": t.negative_transfer if t.gains else None})
            row.update({o.key: t.metrics.get(o.key) for o in record.objectives if o.key.startswith(GROUP)})
        if any(u.noise for u in record.trials):  # search.repeats: the spread over seeds of the front trials
            row.update(noise_columns(t))
        if record.gbdt:
            row.update({GBDT_GAIN + k: v for k, v in record.gbdt_gains(t).items()} if t.status == "finished" else {})
        row["knobs"] = " ".join(f"{k.split('.', 1)[1]}={_short(v)}" for k, v in t.params.items() if k.startswith(t.strategy + "."))
        if detailed:
            row.update({"run_name": t.run_name, "run_id": t.run_id})
            row.update({name: t.metrics.get(name) for name in COST_METRICS})
            row.update({GAIN + k: v for k, v in t.gains.items()})
            row["error"] = (t.error or "").strip().splitlines()[-1] if t.error else ""
            if t.violations:
                row["violations"] = "; ".join(t.violations)
            row.update({f"config/{k}": v for k, v in t.params.items()})
        rows.append(row)
    return rows


def noise_columns(trial: TrialRecord) -> dict[str, Any]:
    """A repeated trial's Δm as ``mean ± std`` over its seeds, and the tasks whose gain is beyond noise (``+``/``-``)."""
    spread = trial.noise.get(DELTA_M)
    if spread is None:
        return {"delta_m ± std": None, "beyond noise": None}
    beyond = [f"{key[len(GAIN):]}{'+' if s.mean > 0 else '-'}" for key, s in trial.noise.items() if key.startswith(GAIN) and s.significant]
    return {"delta_m ± std": f"{spread.mean:+.2f} ± {spread.std:.2f} (n={spread.n}){' *' if spread.significant else ''}",
            "beyond noise": " ".join(beyond) or "none"}


def repeat_noise(trial: TrialRecord, repeats: list[TrialRecord], chosen: dict[str, TrialRecord], directions: dict[str, str]) -> dict[str, Spread]:
    """The spread over seeds of a front trial's gains and Δm (val and test), from its repeats and its references' repeats.

    Seed r of the trial (r = 0: the trial itself) is compared with seed r of each task's
    chosen reference trial; only seeds that finished for the trial and every reference count.
    """
    def runs(original: TrialRecord) -> dict[int, TrialRecord]:
        found = {r.repeat: r for r in repeats if r.repeat_of == original.run_id and r.status == "finished"}
        return {0: original, **found}

    mine, theirs = runs(trial), {task: runs(reference) for task, reference in chosen.items()}
    seeds = sorted(set(mine).intersection(*(set(r) for r in theirs.values())))
    noise: dict[str, Spread] = {}
    for split, prefix, summary in (("val", GAIN, DELTA_M), ("test", TEST_GAIN, TEST_DELTA_M)):
        gains = repeat_gains(directions, [getattr(mine[k], split) for k in seeds],
                             {task: [getattr(runs_of[k], split).get(task, math.nan) for k in seeds] for task, runs_of in theirs.items()})
        noise.update({prefix + task: spread(values) for task, values in gains.items() if task != DELTA_M})
        noise[summary] = spread(gains[DELTA_M])
    return noise


def gbdt_row(record: SearchRecord) -> list[dict[str, Any]]:
    """The GBDT comparison as a table row beside the trials' (``number`` gbdt), or no row without one."""
    if not record.gbdt:
        return []
    return [{"number": "gbdt", "strategy": "hist_gradient_boosting",
             **{VAL + k: v for k, v in record.gbdt["val"].items()}, **{TEST + k: v for k, v in record.gbdt["test"].items()}}]


def _short(value: Any) -> str:
    return format_value(value) if isinstance(value, float) else str(value)


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None, task_metrics: dict[str, str] | None = None) -> str:
    """A plain fixed-width text table; ``val/<task>`` and ``test/<task>`` headers name the task's metric (``val y1 mse``)."""
    if not rows:
        return "(no trials)"
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    headers = {c: column_label(c, task_metrics) for c in columns}
    widths = {c: max(len(headers[c]), *(len(format_value(r.get(c))) for r in rows)) for c in columns}
    lines = ["  ".join(headers[c].ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(format_value(r.get(c)).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def _tasks(record: SearchRecord) -> list[str]:
    """The search's tasks in their problem's order where known (``task_metrics``), else by name."""
    seen = {k for t in record.trials for k in (*t.val, *t.test)}
    return [k for k in record.task_metrics if k in seen] + sorted(seen - set(record.task_metrics))


def best_per_strategy(record: SearchRecord) -> list[dict[str, Any]]:
    """One row per strategy (of the space too, when it got no trial): its trials, how many finished and reached the front,
    and its best value of each objective.

    The best value of an objective is taken over the strategy's finished trials (in the
    objective's direction), with the number of the trial reaching it. With several
    objectives no single trial is best, so each objective's best is shown.
    """
    rows = []
    for strategy in sorted({t.strategy for t in record.trials} | set(record.strategies)):
        members = [t for t in record.trials if t.strategy == strategy]
        row: dict[str, Any] = {"strategy": strategy, "trials": len(members),
                               "finished": sum(t.status == "finished" for t in members),
                               "on front": sum(t.pareto for t in members)}
        for obj in record.objectives:
            scored = [(values[0], t) for t in members if t.status == "finished" and (values := t.objective_values([obj]))]
            label = f"best {metric_label(obj.name, record.task_metrics)}"
            if scored:
                value, trial = (min if obj.direction == "min" else max)(scored, key=lambda pair: pair[0])
                row[label] = f"{format_value(float(value))} (trial {trial.number})"
            else:
                row[label] = "n/a"
        if record.references:  # the gain over the single-task references
            gains = [(t.metrics[DELTA_M], t) for t in members if t.status == "finished" and DELTA_M in t.metrics]
            row[f"best {DELTA_M} %"] = f"{format_value(float(max(gains, key=lambda pair: pair[0])[0]))} (trial {max(gains, key=lambda pair: pair[0])[1].number})" if gains else "n/a"
        rows.append(row)
    return rows


def reference_table(record: SearchRecord) -> list[dict[str, Any]]:
    """One row per task: its single-task reference's validation and test metric, and (searched references) the trial chosen."""
    if not record.references:
        return []
    rows = []
    for task in record.task_metrics or sorted(record.references.get("val", {})):
        trials = [t for t in record.reference_trials if t.reference_task == task]
        chosen = [t for t in trials if t.run_id == record.reference_runs.get(task)]
        rows.append({"task": task, "metric": record.task_metrics.get(task, ""),
                     "val": record.references.get("val", {}).get(task), "test": record.references.get("test", {}).get(task),
                     "reference trials": f"{sum(t.status == 'finished' for t in trials)} of {len(trials)} finished" if trials else "fixed",
                     "chosen": chosen[0].run_name if chosen else ""})
    return rows


def final_summary(record: SearchRecord) -> str:
    """What ``mtl-search run`` prints when the search ends.

    The front (validation objectives, cost objectives, test values of every task; each
    column names its metric; the run ids ``predict`` takes; with ``baseline.gbdt`` each
    trial's per-task gain over the GBDT row, and that row below the trials), the best value of each
    objective per strategy below it, then the counts line (trials, failures, front size,
    hypervolume); ``mtl-search run`` adds where to look next.
    """
    costs = [o.name for o in record.objectives if o.name in COST_METRICS]
    columns = ["number", "run_id", "strategy", *[o.key for o in record.objectives if o.key.startswith(VAL)],
               *costs, *[TEST + t for t in _tasks(record)]]
    if record.references:
        columns += [DELTA_M, WORST_GAIN, "neg_transfer"]
    if any(t.noise for t in record.front):
        columns += list(noise_columns(record.front[0]))
    if record.gbdt:
        columns += [GBDT_GAIN + t for t in _tasks(record)]
    front = trial_table(record, only_front=True)
    for row, trial in zip(front, sorted(record.front, key=lambda t: t.number)):
        row.update({name: trial.metrics.get(name) for name in costs})
    front += gbdt_row(record)
    hv = format_value(float(record.hypervolume)) if record.hypervolume is not None else "n/a"
    counts = {s: sum(t.status == s for t in record.trials) for s in ("failed", "stopped")}
    lines = []
    if record.references:
        lines += ["Single-task references (Δm is measured against them):", format_table(reference_table(record)), ""]
    lines += ["Pareto front (validation):", format_table(front, columns, record.task_metrics), "",
              "Best per strategy (validation):", format_table(best_per_strategy(record)), "",
             f"{len(record.trials)} trials ({counts['failed']} failed, {counts['stopped']} stopped early), "
             f"front size {len(record.front)}, hypervolume {hv}"]
    if record.aborted:
        lines.append(f"ABORTED: {record.aborted}")
    if record.interrupted:
        lines.append("interrupted: `mtl-search run SPACE --resume` continues the search")
    return "\n".join(lines)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def error_summary(error: str | None) -> str:
    """The last line of a traceback (the exception and its message), terminal colour codes removed."""
    lines = [line for line in _ANSI.sub("", error or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "unknown error"


def trial_label(config: dict[str, Any]) -> str:
    """How the console names a trial from its configuration: ``trial 2 mmoe``, ``reference y1 0``, ``trial 2 mmoe, repeat 1``."""
    if config.get(REFERENCE_TASK_KEY) is not None:
        label = f"reference {config[REFERENCE_TASK_KEY]} {config.get(NUMBER_KEY)}"
    else:
        label = f"trial {config.get(NUMBER_KEY)} {config.get(STRATEGY_KEY)}"
    return f"{label}, repeat {config[REPEAT_KEY]}" if config.get(REPEAT_KEY) else label


def epoch_line(config: dict[str, Any], result: dict[str, Any], epochs: int, task_metrics: dict[str, str] | None = None) -> str:
    """The console line of a trained epoch: ``trial 2 mmoe: epoch 3 of 15 (y1 mse 0.4675, y2 mse 0.3470)``."""
    values = ", ".join(f"{metric_label(k[len(VAL):], task_metrics)} {format_value(float(v))}" for k, v in result.items()
                       if k.startswith(VAL) and isinstance(v, (int, float)) and math.isfinite(v))
    line = f"{trial_label(config)}: epoch {result.get(EPOCH)} of {epochs}"
    return f"{line} ({values})" if values else line


def trial_line(record: TrialRecord, done: int, total: int, front_size: int | None, task_metrics: dict[str, str] | None = None,
               traceback_at: str | None = None) -> str:
    """The console line of a trial that ended.

    ``[3/8] trial 2 mmoe: finished (y1 mse 0.4675, y2 mse 0.3470) | front size 2``; a failed
    trial shows its error's last line and ``traceback_at``, where its full traceback is stored.
    A repeat (``front_size`` None) has no front to show.
    """
    line = _ended(record, done, total, task_metrics, traceback_at)
    if DELTA_M in record.metrics:
        line += f" Δm {record.metrics[DELTA_M]:+.2f}%" + (" (negative transfer)" if record.negative_transfer else "")
    return line if front_size is None else f"{line} | front size {front_size}"


def reference_line(record: TrialRecord, done: int, total: int, best: float | None, task_metrics: dict[str, str] | None = None,
                   traceback_at: str | None = None) -> str:
    """The console line of a single-task reference trial that ended, with its task's best so far:
    ``[3/8] reference y1 1: finished (y1 mse 0.2871) | best y1 mse 0.2871``."""
    line = _ended(record, done, total, task_metrics, traceback_at)
    task = record.reference_task or ""
    return f"{line} | best {metric_label(task, task_metrics)} {format_value(best) if best is not None else 'n/a'}"


def _ended(record: TrialRecord, done: int, total: int, task_metrics: dict[str, str] | None, traceback_at: str | None) -> str:
    names = {NUMBER_KEY: record.number, STRATEGY_KEY: record.strategy, REFERENCE_TASK_KEY: record.reference_task, REPEAT_KEY: record.repeat}
    line = f"[{done}/{total}] {trial_label(names)}: {record.status}"
    values = ", ".join(f"{metric_label(k, task_metrics)} {format_value(float(v))}" for k, v in record.val.items()
                       if isinstance(v, (int, float)) and math.isfinite(v))
    if values:
        line += f" ({values})"
    elif record.error:
        line += f": {error_summary(record.error)}" + (f" (full traceback: {traceback_at})" if traceback_at else "")
    return line
