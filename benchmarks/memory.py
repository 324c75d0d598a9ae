"""Peak resident memory of the driver and of a trial's worker, for the quickstart search and for a 1-million-row table.

Each search runs in a fresh process (peaks are per process), which samples its own process
tree every 0.2 s: the driver's peak is its own ``ru_maxrss`` (exact); a trial's is the
largest ``VmHWM`` (the kernel's peak resident size) of the Ray worker processes running
Tune trainables; Ray's own services (GCS, raylet, idle workers ...) and the whole tree are
reported at the tree's sampled peak. The two cases:

- quickstart: ``search_spaces/quickstart.yaml`` with ``--trials`` trials (its data set,
  model sizes and epochs as written);
- table: one hard-sharing trial of one epoch on a Parquet table of ``--rows`` rows x 50
  columns (``benchmarks.table_loading``'s table and search), the data set built on the
  driver and shipped to the worker through Ray's object store.

    python -m benchmarks.memory [--quick] [--rows N] [--trials N]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from .common import machine, parser, process_tree, write

NAME = "memory"
QUICKSTART = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"
TRIAL_WORKER = ("ImplicitFunc", "_Inner", "tune_trainable")  # how Ray names a worker running a Tune function trainable


def quickstart_space(tracking: str, trials: int, quick: bool) -> Any:
    import yaml

    from mtl_search.search.space import parse_space

    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["search"]["trials"] = trials
    raw["tracking"] = {"uri": f"sqlite:///{tracking}/mlflow.db"}
    if quick:
        raw["data"]["options"]["samples"] = 400
        raw["training"]["epochs"] = 1
    return parse_space(raw, QUICKSTART)


def table_space(tracking: str, path: Path) -> Any:
    from mtl_search.search.space import parse_space

    from .table_loading import TASKS

    return parse_space({
        "experiment": NAME, "data": {"parquet": str(path)}, "tasks": TASKS,
        "backbone": {"kind": "mlp", "depth": 2, "width": 64},
        "strategies": {"hard_sharing": {"shared_depth": 1, "tower_width": 16}},
        "training": {"epochs": 1, "batch_size": 4096},
        "search": {"trials": 1, "concurrency": 1},
        "tracking": {"uri": f"sqlite:///{tracking}/mlflow.db"},
    })


def measure(case: str, argument: str, quick: bool) -> dict[str, float]:
    """In this (fresh) process: run the case's search while sampling the process tree; the peaks in MiB."""
    from mtl_search.search.run import RunOptions, run_search

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    peaks = {"trial_worker_mib": 0.0, "ray_services_mib": 0.0, "tree_mib": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            tree = [p for p in process_tree(os.getpid()) if p["pid"] != os.getpid()]
            workers = [p for p in tree if any(name in p["command"] for name in TRIAL_WORKER)]
            peaks["trial_worker_mib"] = max([peaks["trial_worker_mib"], *(p["peak_mib"] for p in workers)])
            total = sum(p["rss_mib"] for p in tree)
            if total + own_rss() > peaks["tree_mib"]:
                peaks["tree_mib"] = total + own_rss()
                peaks["ray_services_mib"] = total - sum(p["rss_mib"] for p in workers)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with tempfile.TemporaryDirectory() as tmp:
        space = quickstart_space(tmp, int(argument), quick) if case == "quickstart" else table_space(tmp, Path(argument))
        record = run_search(space, RunOptions())
    done.set()
    sampler.join()
    failed = [t.error for t in record.trials if t.status != "finished"]
    if failed:
        raise RuntimeError(f"a benchmark trial failed: {failed[0]}")
    return {"driver_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **peaks, "trials": len(record.trials)}


def own_rss() -> float:
    """This process's resident MiB now."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024


def run_fresh(case: str, argument: str, quick: bool) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.memory", "--measure", case, argument] + (["--quick"] if quick else [])
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise RuntimeError(f"the {case} measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(quick: bool, rows: int, trials: int) -> dict:
    from .table_loading import write_files

    load_before = machine()
    results = {"quickstart": run_fresh("quickstart", str(trials), quick)}
    with tempfile.TemporaryDirectory() as tmp:
        path = write_files(rows, Path(tmp))["parquet"]
        results["table"] = {**run_fresh("table", str(path), quick), "rows": rows, "file_mib": path.stat().st_size / 2**20}
    return {"machine_before": load_before, "machine_after": machine(), "results": results}


def markdown(result: dict) -> str:
    quick, table = result["results"]["quickstart"], result["results"]["table"]
    lines = [
        f"Peak resident memory, MiB (each search in a fresh process). Machine: {result['machine_before']}.",
        "",
        "| search | driver peak | one trial's worker peak | Ray services at the tree's peak | whole process tree peak |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| quickstart.yaml, {quick['trials']} trials | {quick['driver_mib']:,.0f} | {quick['trial_worker_mib']:,.0f} | "
        f"{quick['ray_services_mib']:,.0f} | {quick['tree_mib']:,.0f} |",
        f"| {table['rows']:,}-row x 50-column Parquet table ({table['file_mib']:.0f} MiB), 1 trial | {table['driver_mib']:,.0f} | "
        f"{table['trial_worker_mib']:,.0f} | {table['ray_services_mib']:,.0f} | {table['tree_mib']:,.0f} |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parse = parser(__doc__)
    parse.add_argument("--rows", type=int, default=1_000_000)
    parse.add_argument("--trials", type=int, default=4)
    parse.add_argument("--measure", nargs=2, metavar=("CASE", "ARGUMENT"), help=argparse.SUPPRESS)
    args = parse.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(*args.measure, args.quick)))
        return
    rows, trials = (20_000, 1) if args.quick else (args.rows, args.trials)
    result = run(args.quick, rows, trials)
    print(write(NAME, markdown(result), result, args.out))


if __name__ == "__main__":
    main()
