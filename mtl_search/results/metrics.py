"""The gains over single-task references, and the spread of a figure over repeated seeds.

The names the figures travel under are :mod:`mtl_search.record`'s.

Gains (Maninis et al. 2019, "Attentive single-tasking of multiple tasks", CVPR; as in
LibMTL): task t's relative gain over its single-task reference is

    gain_t = (-1)^{l_t} (M_t - M_ref,t) / |M_ref,t| · 100  (percent)

with l_t = 1 when lower is better (``min``), so a positive gain is always an improvement;
Δm = (1/T) Σ_t gain_t (``delta_m``), and ``worst_gain`` = min_t gain_t. A trial with any
negative gain shows negative transfer. The papers divide by M_ref,t; the absolute value
here only matters for a negative reference metric (none of the built-in metrics), where it
keeps "positive is better". A reference of exactly 0 gives no gain (NaN).

A group objective (``Objective.tasks``) is the mean gain over its tasks: the Δm of a subset.

Noise (``search.repeats: K``): a front trial and each task's reference are trained again
with K − 1 more seeds; repeat r of the trial is compared with repeat r of the references,
giving K values of each gain and of Δm (:func:`repeat_gains`). :func:`spread` gives their
mean ± sample standard deviation, and calls the mean significant when a two-sided
one-sample t-test rejects zero at the 5 % level: |mean| > t(0.975, K − 1) · std / √K.
With repeats, negative transfer is flagged only for a task whose gain is significantly below 0.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

from ..record import DELTA_M, GAIN, TEST_DELTA_M, TEST_GAIN, TEST_WORST_GAIN, WORST_GAIN, Spread, group_key


def relative_gain(value: float, reference: float, direction: str) -> float:
    """Percent improvement of ``value`` over ``reference`` for a metric improving in ``direction`` (see the module docstring)."""
    if direction not in ("min", "max"):
        raise ValueError(f"direction must be 'min' or 'max', got {direction!r}")
    if not (math.isfinite(value) and math.isfinite(reference)) or reference == 0:
        return float("nan")
    sign = -1.0 if direction == "min" else 1.0
    return sign * (value - reference) / abs(reference) * 100.0


def _summaries(gains: Mapping[str, float]) -> tuple[float, float]:
    values = list(gains.values())
    if not values or not all(math.isfinite(v) for v in values):
        return float("nan"), float("nan")
    return sum(values) / len(values), min(values)


def _split_gains(directions: Mapping[str, str], metrics: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float]:
    return {t: relative_gain(float(metrics.get(t, math.nan)), float(reference.get(t, math.nan)), d) for t, d in directions.items()}


def val_gain_metrics(directions: Mapping[str, str], val: Mapping[str, float], references: Mapping[str, Mapping[str, float]],
                     groups: Mapping[str, Iterable[str]] = {}) -> dict[str, float]:
    """The validation half of :func:`gain_metrics` (per-task gains, Δm, worst gain, group gains): what every epoch reports."""
    gains = _split_gains(directions, val, references.get("val", {}))
    out = {GAIN + t: g for t, g in gains.items()}
    out[DELTA_M], out[WORST_GAIN] = _summaries(gains)
    for name, tasks in groups.items():
        out[group_key(name)] = _summaries({t: gains[t] for t in tasks})[0]
    return out


def gain_metrics(directions: Mapping[str, str], val: Mapping[str, float], test: Mapping[str, float],
                 references: Mapping[str, Mapping[str, float]], groups: Mapping[str, Iterable[str]] = {}) -> dict[str, float]:
    """Per-task gains, Δm, worst gain (val and test) and group mean gains, as result keys.

    ``directions`` maps task to ``min``/``max``; ``references`` is ``{"val": {task: metric}, "test": {...}}``.
    """
    out = val_gain_metrics(directions, val, references, groups)
    gains = _split_gains(directions, test, references.get("test", {}))
    out.update({TEST_GAIN + t: g for t, g in gains.items()})
    out[TEST_DELTA_M], out[TEST_WORST_GAIN] = _summaries(gains)
    return out


SIGNIFICANCE_LEVEL = 0.05  # two-sided


def spread(values: Iterable[float]) -> Spread:
    """Mean ± std of ``values`` (NaNs left out); significant when a two-sided t-test of mean = 0 rejects at 5 %."""
    from scipy import stats

    finite = [float(v) for v in values if math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return Spread(math.nan, math.nan, 0, False)
    mean = sum(finite) / n
    if n < 2:
        return Spread(mean, math.nan, n, False)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1))
    if std == 0:
        return Spread(mean, 0.0, n, mean != 0)
    bound = float(stats.t.ppf(1 - SIGNIFICANCE_LEVEL / 2, n - 1)) * std / math.sqrt(n)
    return Spread(mean, std, n, abs(mean) > bound)


def repeat_gains(directions: Mapping[str, str], trial_runs: list[Mapping[str, float]],
                 reference_runs: Mapping[str, list[float]]) -> dict[str, list[float]]:
    """Per task (and ``delta_m``) the gains of repeat r of a trial over repeat r of each reference, r = 0, 1, ...

    ``trial_runs[r]`` maps task to the trial's metric with seed r; ``reference_runs[task][r]``
    is the task's reference metric with seed r. Pairs exist up to the shortest list.
    """
    count = min([len(trial_runs), *(len(reference_runs.get(t, [])) for t in directions)])
    out: dict[str, list[float]] = {t: [] for t in directions}
    out[DELTA_M] = []
    for r in range(count):
        gains = {t: relative_gain(float(trial_runs[r].get(t, math.nan)), float(reference_runs[t][r]), d) for t, d in directions.items()}
        for t, g in gains.items():
            out[t].append(g)
        out[DELTA_M].append(_summaries(gains)[0])
    return out
