"""Driver bookkeeping per finished trial: the live front, then the final front, hypervolume and its history.

What the driver does for a search of n trials with m objectives: one ``LiveFront.add``
per finished trial (the front the progress lines show), then once at the end
``mark_front`` (front and hypervolume) and ``hypervolume_history``. The figure is that
total CPU time divided by n, and the slowest single ``add``. Objective values are uniform
in [0, 1]^m with mixed directions (at many objectives almost every trial is on the front:
the hard case). The hand-written code these replaced (the tests' oracle, recomputing the
front and hypervolume after every trial and the history over every prefix) is timed where
it finishes in seconds, for comparison.

    python -m benchmarks.bookkeeping            # the README table
    python -m benchmarks.bookkeeping --quick    # a smoke run (used by the tests)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import common
from mtl_search.record import Objective, TrialRecord
from mtl_search.results import pareto
from mtl_search.results.records import LiveFront, hypervolume_history, mark_front

FULL = {"trials": [10, 100, 1000], "objectives": [2, 4, 8, 12], "old_cells": [(10, 2), (100, 2), (10, 4)]}
QUICK = {"trials": [10, 30], "objectives": [2, 4], "old_cells": [(10, 2)]}
TARGET_MS = 10.0


def make_trials(n: int, m: int, seed: int = 0) -> tuple[list[TrialRecord], list[Objective]]:
    """n finished trials with uniform objective values; objectives alternate min and max."""
    rng = np.random.default_rng(seed)
    objectives = [Objective(f"o{j}", f"val/o{j}", "min" if j % 2 == 0 else "max") for j in range(m)]
    values = rng.uniform(size=(n, m))
    trials = [TrialRecord(i, f"run{i}", "s", {}, "finished", val={f"o{j}": float(values[i, j]) for j in range(m)}) for i in range(n)]
    return trials, objectives


def measure(n: int, m: int) -> dict:
    """CPU seconds of the live adds, the final front and the history; ms per trial."""
    trials, objectives = make_trials(n, m)
    clock = time.process_time
    live, adds = LiveFront(objectives), []
    for trial in trials:
        start = clock()
        live.add(trial)
        adds.append(clock() - start)
    start = clock()
    hv, reference = mark_front(trials, objectives)
    final = clock() - start
    start = clock()
    history = hypervolume_history(trials, objectives, reference)
    history_s = clock() - start
    total = sum(adds) + final + history_s
    return {"trials": n, "objectives": m, "front": live.size, "exact": pareto.exact_is_affordable(m, n), "hypervolume": hv,
            "live_s": sum(adds), "max_add_ms": 1000 * max(adds), "final_s": final, "history_s": history_s,
            "ms_per_trial": 1000 * total / n, "history_last": history[-1][0]}


def measure_old(n: int, m: int) -> dict:
    """The replaced code path (oracle): front + hypervolume after every trial, then the history over every prefix."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import pareto_oracle as oracle

    trials, objectives = make_trials(n, m)
    directions = [o.direction for o in objectives]
    points = [t.objective_values(objectives) for t in trials]
    start = time.process_time()
    for k in range(1, n + 1):
        oracle.pareto_front(points[:k], directions)
        oracle.hypervolume(points[:k], directions, oracle.default_reference_point(points[:k], directions))
    reference = oracle.default_reference_point(points, directions)
    for k in range(1, n + 1):
        oracle.pareto_front(points[:k], directions)
        oracle.hypervolume(points[:k], directions, reference)
    return {"trials": n, "objectives": m, "ms_per_trial": 1000 * (time.process_time() - start) / n}


def markdown(result: dict) -> str:
    lines = [f"Driver bookkeeping CPU time per finished trial (live front + final front, hypervolume and history, "
             f"divided by the trials); uniform objective values, mixed directions; {result['machine']}.", "",
             "| trials | objectives | front size | hypervolume | ms per trial | slowest live add (ms) | under 10 ms |",
             "| ---: | ---: | ---: | --- | ---: | ---: | --- |"]
    for r in result["rows"]:
        lines.append(f"| {r['trials']} | {r['objectives']} | {r['front']} | {'exact' if r['exact'] else 'estimated'} | "
                     f"{r['ms_per_trial']:.3f} | {r['max_add_ms']:.3f} | {'yes' if r['ms_per_trial'] < TARGET_MS else 'NO'} |")
    if result["old"]:
        lines += ["", "The replaced hand-written code on the same points:", "", "| trials | objectives | ms per trial |", "| ---: | ---: | ---: |"]
        lines += [f"| {r['trials']} | {r['objectives']} | {r['ms_per_trial']:.1f} |" for r in result["old"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__).parse_args(argv)
    settings = QUICK if args.quick else FULL
    rows = [measure(n, m) for m in settings["objectives"] for n in settings["trials"]]
    old = [measure_old(n, m) for n, m in settings["old_cells"]]
    result = {"machine": common.machine(), "settings": settings, "target_ms": TARGET_MS, "rows": rows, "old": old}
    print(common.write("bookkeeping" + ("_quick" if args.quick and args.out == common.RESULTS else ""), markdown(result), result, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
