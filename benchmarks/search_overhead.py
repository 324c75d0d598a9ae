"""Search orchestration overhead: N identical trials through ``run_search`` (Ray Tune + Optuna + MLflow) vs a plain loop.

Every trial trains the same fixed configuration (hard sharing, fixed sizes, no early
stopping), so its work is fixed; the epoch count is calibrated (from a 1- and a 3-epoch
trial) so a trial takes about ``--trial-seconds``. The same trials are first run in a plain
Python loop (``train_trial`` without Ray or MLflow) in a fresh process, as a user's own
script would run them: each trial's time there is its compute (the first one includes
torch's first-call costs, which every process pays once). Then they run through
``run_search`` with concurrency 1 and 2 (one torch thread per trial, Ray already started:
its start-up is timed on its own, as is creating fresh MLflow and Optuna stores). Reported:

- overhead = search wall / (sum of the trials' compute / concurrency), 1.0 is none;
- steady-state overhead: the time from the first ``concurrency`` completions to the last,
  per trial and worker, over one warm trial's compute (the per-trial cost once the search
  runs; the difference to the overhead is the search's fixed start and end cost, also
  reported);
- speed-up = wall at concurrency 1 / wall at concurrency 2 (and the same in steady state).

    python -m benchmarks.search_overhead [--quick] [--trials N] [--trial-seconds S]
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import machine, parser, run_trials_in_process, write

NAME = "search_overhead"


def fixed_space(tracking_dir: str, epochs: int, trials: int, concurrency: int, samples: int) -> Any:
    """A space with nothing left to choose: every trial does the same work."""
    from mtl_search.search.space import parse_space

    return parse_space({
        "experiment": NAME,
        "data": {"dataset": "synthetic_correlated", "options": {"samples": samples, "seed": 0}},
        "backbone": {"kind": "mlp", "depth": 3, "width": 128},
        "strategies": {"hard_sharing": {"shared_depth": 2, "tower_width": 16}},
        "training": {"epochs": epochs, "patience": epochs, "batch_size": 128, "lr": 1e-3},
        "search": {"trials": trials, "concurrency": concurrency, "sampler": "random", "seed": 0},
        "baseline": False,  # the trials' orchestration alone: no single-task reference trials before them
        "tracking": {"uri": f"sqlite:///{tracking_dir}/mlflow.db"},
    })


def plain_loop(space: Any) -> list[float]:
    """Each trial's seconds when the trials run one after another in this process, without Ray or MLflow."""
    return [trial.seconds for trial in run_trials_in_process(space)]


def fresh_loop(space: Any) -> list[float]:
    """``plain_loop`` in a new Python process, so the first trial pays what it pays in a user's script."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(plain_loop, (space,))


def side_by_side_loops(tmp: str, epochs: int, trials: int, samples: int) -> float:
    """Wall seconds of two fresh processes running half the trials each at once, without Ray: what 2 cores give two trials."""
    import multiprocessing

    halves = (trials // 2, trials - trials // 2)
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        jobs = [pool.apply_async(plain_loop, (fixed_space(tmp, epochs, n, 1, samples),)) for n in halves]
        for job in jobs:
            job.get()
    return time.perf_counter() - start


def calibrate(tmp: str, trial_seconds: float, samples: int) -> int:
    """The epoch count that makes a (warm) trial last about ``trial_seconds``: per-epoch and fixed cost from a 1- and a 3-epoch trial."""
    plain_loop(fixed_space(tmp, 1, 1, 1, samples))  # first-call costs
    one, three = (plain_loop(fixed_space(tmp, epochs, 1, 1, samples))[0] for epochs in (1, 3))
    per_epoch = max((three - one) / 2, 1e-3)
    return max(1, round((trial_seconds - (one - per_epoch)) / per_epoch))


def search_wall(space: Any) -> dict[str, Any]:
    """Wall seconds of ``run_search`` and when (seconds from its call) each trial finished."""
    from mtl_search.search.run import RunOptions, run_search

    finished: list[float] = []
    start = time.perf_counter()

    def echo(line: str) -> None:
        if line.startswith("["):  # "[k/N] trial ...: finished"
            finished.append(time.perf_counter() - start)

    record = run_search(space, RunOptions(), progress=echo)
    wall = time.perf_counter() - start
    failed = [t.error for t in record.trials if t.status != "finished"]
    if failed:
        raise RuntimeError(f"a benchmark trial failed: {failed[0]}")
    return {"wall_s": wall, "finished_at_s": finished, "train_s_in_search": [t.metrics.get("train_seconds") for t in record.trials]}


def run(trials: int, trial_seconds: float, samples: int) -> dict:
    import optuna
    import ray

    from mtl_search.results.search_run import Tracker
    from mtl_search.results.store import sqlite_uri
    from mtl_search.search.run import ensure_ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    load_before = machine()
    with tempfile.TemporaryDirectory() as tmp:
        epochs = calibrate(tmp, trial_seconds, samples)
        compute = fresh_loop(fixed_space(tmp, epochs, trials, 1, samples))
        trial_compute = statistics.median(compute)  # a warm trial
        loops_wall = side_by_side_loops(tmp, epochs, trials, samples)
        started_here = not ray.is_initialized()  # a caller's Ray (the test suite's) is left running
        start = time.perf_counter()
        ensure_ray(None)
        ray_start = time.perf_counter() - start
        start = time.perf_counter()
        # a user's stores exist after the first search: time their creation apart
        Tracker(sqlite_uri(Path(tmp) / "mlflow.db"), NAME)
        optuna.storages.RDBStorage(sqlite_uri(Path(tmp) / "optuna.db"))  # where a search beside that store keeps its study
        store_creation = time.perf_counter() - start
        rows = []
        for concurrency in (1, 2):
            timing = search_wall(fixed_space(tmp, epochs, trials, concurrency, samples))
            ideal = sum(compute) / concurrency
            finished = timing["finished_at_s"]
            # after the first `concurrency` completions, the other trials finish in rounds of `concurrency`
            rounds = (trials - concurrency) / concurrency
            steady = (finished[-1] - finished[concurrency - 1]) / rounds / trial_compute if rounds > 0 else float("nan")
            rows.append({"concurrency": concurrency, **timing, "ideal_s": ideal, "overhead": timing["wall_s"] / ideal,
                         "overhead_with_ray_start": (timing["wall_s"] + ray_start) / ideal, "steady_overhead": steady,
                         "until_first_trial_s": finished[0] - trial_compute, "after_last_trial_s": timing["wall_s"] - finished[-1]})
        if started_here:
            ray.shutdown()
    return {"machine_before": load_before, "machine_after": machine(), "trials": trials, "epochs": epochs, "samples": samples,
            "trial_compute_s": compute, "ray_start_s": ray_start, "store_creation_s": store_creation, "rows": rows,
            "speed_up": rows[0]["wall_s"] / rows[1]["wall_s"], "side_by_side_wall_s": loops_wall,
            "side_by_side_speed_up": sum(compute) / loops_wall,
            "steady_speed_up": 2 * rows[0]["steady_overhead"] / rows[1]["steady_overhead"]}


def markdown(result: dict) -> str:
    compute = result["trial_compute_s"]
    lines = [
        f"{result['trials']} identical trials of {statistics.median(compute):.1f} s each (median in a plain loop in a fresh process, whose first "
        f"trial took {compute[0]:.1f} s; hard sharing, {result['epochs']} epochs of {result['samples']:,} rows), one torch thread per trial, "
        "Ray started and the MLflow and Optuna stores created beforehand.",
        f"Machine: {result['machine_before']} (before); load after: {result['machine_after'].rsplit('average', 1)[-1].strip()}",
        "",
        "| concurrency | search wall s | sum of trial compute / concurrency s | overhead | overhead incl. Ray start | steady-state overhead per trial | start until first trial s | after last trial s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {r['concurrency']} | {r['wall_s']:.1f} | {r['ideal_s']:.1f} | {r['overhead']:.2f} | {r['overhead_with_ray_start']:.2f} | "
              f"{r['steady_overhead']:.2f} | {r['until_first_trial_s']:.1f} | {r['after_last_trial_s']:.1f} |" for r in result["rows"]]
    lines += ["", f"Speed-up with 2 concurrent trials: {result['speed_up']:.2f}x over the whole search, {result['steady_speed_up']:.2f}x in "
              f"steady state (after the first trials finish). Once per search process: Ray start-up {result['ray_start_s']:.1f} s; "
              f"creating fresh MLflow and Optuna stores {result['store_creation_s']:.1f} s.",
              "", f"The machine's own ceiling: two plain loops side by side in two fresh processes (half the trials each, no Ray) took "
              f"{result['side_by_side_wall_s']:.1f} s, a speed-up of {result['side_by_side_speed_up']:.2f}x over one loop; the search's speed-up "
              f"is {result['speed_up'] / result['side_by_side_speed_up']:.0%} of it."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parse = parser(__doc__)
    parse.add_argument("--trials", type=int, default=12)
    parse.add_argument("--trial-seconds", type=float, default=10.0)
    args = parse.parse_args(argv)
    trials, seconds, samples = (3, 0.5, 2000) if args.quick else (args.trials, args.trial_seconds, 20000)
    result = run(trials, seconds, samples)
    print(write(NAME, markdown(result), result, args.out))


if __name__ == "__main__":
    main()
