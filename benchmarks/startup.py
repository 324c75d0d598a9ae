"""A search's fixed start-up cost, phase by phase: from the command to the first trial training.

A fresh Python process runs a 1-trial, 2-epoch search of 2,000 rows (two tasks) the way
``mtl-search run`` does, twice: with a fresh MLflow store, then a second search into the
same store (a user's usual case); the driver's steps are timed by
wrapping them (``prepare``, the tracker and its search run, the single-task references,
Ray's start, which runs while a thread of its own sets up the stores and the references, and
Tune until the trial starts) and the trial's start of training is the arrival
of its first epoch less that epoch's own time (Tune's ``time_this_iter_s``). The process
is started by this harness, so the first phase includes the interpreter's start.

    python -m benchmarks.startup            # the README figures
    python -m benchmarks.startup --quick    # a smoke run (used by the tests)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common

SPACE = """
experiment: startup
data: {{dataset: synthetic_correlated, options: {{tasks: 2, samples: {samples}, input_dim: 16, seed: 0}}}}
backbone: {{kind: mlp, depth: 2, width: 32}}
strategies: {{hard_sharing: {{}}}}
training: {{epochs: 2, batch_size: 256, lr: 0.005}}
search: {{trials: 1, concurrency: 1, seed: 0}}
baseline: {{mode: fixed}}  # start-up to the first trial: the references trained on the driver beside Ray's start
"""

CHILD = r"""
import json, sys, time
marks = {"python": time.time()}
import mtl_search.search.run as run
marks["imports"] = time.time()
from mtl_search.search.space import load_space

def timed(owner, name, label):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        finally:
            marks.setdefault(label, time.time())
    setattr(owner, name, wrapper)

timed(run, "prepare", "prepare")
timed(run.Tracker, "start_search", "tracker")
timed(run, "fixed_references", "references")
timed(run, "ensure_ray", "ray_ready")
timed(run.Background, "result", "ray")
timed(run.TrialLogger, "on_trial_start", "trial_started")
original_result = run.TrialLogger.on_trial_result
def result(self, iteration, trials, trial, result, **info):
    if "epoch" in result and "first_epoch" not in marks:
        marks["first_epoch"] = time.time()
        marks["epoch_s"] = float(result.get("time_this_iter_s", 0.0))
    return original_result(self, iteration, trials, trial, result, **info)
run.TrialLogger.on_trial_result = result
space = load_space(sys.argv[1])
run.run_search(space, run.RunOptions(tracking_uri=sys.argv[2]))
marks["done"] = time.time()
print("MARKS " + json.dumps(marks))
"""

PHASES = [("imports", "interpreter start and imports"), ("prepare", "plugins, data set, space check"),
          ("tracker", "MLflow store and search run"), ("references", "single-task references"),
          ("ray", "Ray's start, beyond the set-up beside it"), ("trial_started", "Tune set-up and the trial's actor start"),
          ("training", "until the trial function runs")]


def measure(samples: int, tmp: str) -> dict:
    """One search in a fresh process, its store in ``tmp``; seconds per phase from the command to the first trial training."""
    space = Path(tmp) / "space.yaml"
    space.write_text(SPACE.format(samples=samples))
    # RAY_ADDRESS=local: a fresh Ray, as on a machine without a cluster (ray.init would join one started by `ray start`)
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"), "RAY_ADDRESS": "local"}
    start = time.time()
    cpu_before = os.times()
    out = subprocess.run([sys.executable, "-c", CHILD, str(space), f"sqlite:///{tmp}/mlflow.db"], capture_output=True,
                         text=True, cwd=tmp, env=env, timeout=900)
    cpu = os.times()
    if out.returncode != 0:
        raise RuntimeError(f"the search failed:\n{out.stderr[-3000:]}")
    marks = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("MARKS "))[6:])
    marks["training"] = marks["first_epoch"] - marks["epoch_s"]
    points, previous, phases = {"start": start, **marks}, start, {}
    for key, _ in PHASES:
        phases[key] = points[key] - previous
        previous = points[key]
    return {"phases": phases, "ray_start_s": marks["ray_ready"] - marks["prepare"], "to_training_s": marks["training"] - start, "total_s": marks["done"] - start,
            "children_cpu_s": (cpu.children_user - cpu_before.children_user) + (cpu.children_system - cpu_before.children_system)}


def markdown(result: dict) -> str:
    fresh, again = result["fresh_store"], result["existing_store"]
    lines = [f"A 1-trial, 2-epoch search of {result['samples']} rows in a fresh process; {result['machine']}.", "",
             "| phase | fresh MLflow store (s) | second search, same store (s) |", "| --- | ---: | ---: |"]
    lines += [f"| {label} | {fresh['phases'][key]:.2f} | {again['phases'][key]:.2f} |" for key, label in PHASES]
    lines += [f"| **command to first trial training** | **{fresh['to_training_s']:.2f}** | **{again['to_training_s']:.2f}** |", "",
              f"Ray's start itself took {fresh['ray_start_s']:.2f} s / {again['ray_start_s']:.2f} s (from the end of the space "
              "check), while the MLflow and reference phases ran on a thread beside it; its row is what it took beyond them. "
              f"Whole search {fresh['total_s']:.1f} s / {again['total_s']:.1f} s wall; CPU of the process tree started here "
              f"{fresh['children_cpu_s']:.1f} s / {again['children_cpu_s']:.1f} s (Ray's own daemons are not its children)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__).parse_args(argv)
    samples = 300 if args.quick else 2000
    with tempfile.TemporaryDirectory() as tmp:
        fresh = measure(samples, tmp)
        again = measure(samples, tmp)
    result = {"machine": common.machine(), "samples": samples, "fresh_store": fresh, "existing_store": again}
    print(common.write("startup" + ("_quick" if args.quick and args.out == common.RESULTS else ""), markdown(result), result, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
