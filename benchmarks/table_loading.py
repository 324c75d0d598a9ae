"""Load time and peak memory of a user's table: 1 million rows x 50 columns, CSV and Parquet.

Each measurement runs in a fresh process (peak resident memory is per process): the time
of a plain pyarrow read of the whole file (the floor), then the time of ``load_table``
(projection, labels, masks, split, training statistics, the feature tensor) and the
process's peak resident memory (and how much of it loading added over the imports).
Reported as ratios within the run: load time over the plain read, and memory added by
loading over the size of the tensors the search holds.

    python -m benchmarks.table_loading           # 1,000,000 rows (about a minute on 2 cores)
    python -m benchmarks.table_loading --quick   # 20,000 rows, for the test suite
    python -m benchmarks.table_loading --search  # and a one-trial search on the Parquet table (memory of the whole process tree)

Writes ``table_loading.md`` and ``table_loading.json`` to ``--out`` (default benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import tree_rss_mib

NUMERIC, CATEGORICAL = 44, 4  # + 2 targets = 50 columns
TASKS = {"clicked": {"kind": "binary"}, "revenue": {"kind": "regression"}}


def make_table(rows: int, seed: int = 0):
    """A synthetic table: numeric features (2% missing), text categories, a binary and a regression target (10% unlabelled)."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    columns = {}
    for i in range(NUMERIC):
        values = rng.normal(size=rows)
        columns[f"n{i}"] = pa.array(values, mask=rng.random(rows) < 0.02)
    for i in range(CATEGORICAL):
        columns[f"c{i}"] = pa.DictionaryArray.from_arrays(rng.integers(0, 20, rows), [f"level{j}" for j in range(20)]).cast(pa.string())
    signal = columns["n0"].fill_null(0).to_numpy()
    columns["clicked"] = pa.array((signal + rng.normal(size=rows) > 0).astype(np.int64), mask=rng.random(rows) < 0.1)
    columns["revenue"] = pa.array(2 * signal + rng.normal(size=rows), mask=rng.random(rows) < 0.1)
    return pa.table(columns)


def write_files(rows: int, folder: Path) -> dict[str, Path]:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    table = make_table(rows)
    paths = {"csv": folder / "table.csv", "parquet": folder / "table.parquet"}
    pcsv.write_csv(table, paths["csv"])
    pq.write_table(table, paths["parquet"])
    return paths


def measure(path: Path, fmt: str) -> dict[str, float]:
    """In this (fresh) process: plain read time, load_table time, peak memory, tensor size."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from mtl_search.data.tables import TableSpec, load_table

    if fmt == "parquet":
        pq.read_schema(path)  # pyarrow imports its dataset modules on first use: keep that out of the timing
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # after the imports (torch ...)
    start = time.perf_counter()
    raw = pq.read_table(path) if fmt == "parquet" else pcsv.read_csv(path)
    read_seconds = time.perf_counter() - start
    del raw
    start = time.perf_counter()
    data = load_table(TableSpec(format=fmt, path=path), TASKS)
    load_seconds = time.perf_counter() - start
    tensors = sum(t.numel() * t.element_size() for s in (data.train, data.val, data.test)
                  for t in (s.x, *s.y.values(), *s.mask.values()))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"read_s": read_seconds, "load_s": load_seconds, "peak_mib": peak, "added_mib": peak - baseline,
            "tensor_mib": tensors / 2**20, "rows": len(data.train) + len(data.val) + len(data.test), "width": data.problem.input_shape[0]}


def measure_search(path: Path, fmt: str) -> dict[str, float]:
    """In this (fresh) process: one hard-sharing trial of one epoch on the table, through Ray Tune and MLflow.

    Returns the search's wall seconds, the trial's train seconds and the peak resident memory
    of this process tree (driver, Ray's services and the trial's worker), sampled every 0.2 s.
    """
    import os
    import threading

    from mtl_search.search.run import RunOptions, run_search
    from mtl_search.search.space import parse_space

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], tree_rss_mib(os.getpid()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with tempfile.TemporaryDirectory() as tmp:
        space = parse_space({
            "experiment": "table_loading", "data": {fmt: str(path)}, "tasks": TASKS,
            "backbone": {"kind": "mlp", "depth": 2, "width": 64},
            "strategies": {"hard_sharing": {"shared_depth": 1, "tower_width": 16}},
            "training": {"epochs": 1, "batch_size": 4096},
            "search": {"trials": 1, "concurrency": 1},
            "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db"},
        })
        start = time.perf_counter()
        record = run_search(space, RunOptions())
        wall = time.perf_counter() - start
    done.set()
    sampler.join()
    trial = record.trials[0]
    if trial.status != "finished":
        raise RuntimeError(f"the benchmark's trial failed: {trial.error}")
    return {"search_s": wall, "train_s": trial.metrics["train_seconds"], "peak_tree_mib": peak[0]}


def run(rows: int, repeats: int, out: Path, search: bool = False) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_files(rows, Path(tmp))
        for fmt, path in paths.items():
            samples = []
            for _ in range(repeats):
                done = subprocess.run([sys.executable, "-m", "benchmarks.table_loading", "--measure", str(path), fmt],
                                      capture_output=True, text=True, check=True)
                samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
            median = {k: statistics.median(s[k] for s in samples) for k in ("read_s", "load_s", "peak_mib", "added_mib", "tensor_mib")}
            results.append({"format": fmt, "rows": samples[0]["rows"], "columns": NUMERIC + CATEGORICAL + len(TASKS),
                            "file_mib": path.stat().st_size / 2**20, **median,
                            "load_over_read": median["load_s"] / median["read_s"], "added_over_tensors": median["added_mib"] / median["tensor_mib"]})
        if search:
            done = subprocess.run([sys.executable, "-m", "benchmarks.table_loading", "--measure-search", str(paths["parquet"]), "parquet"],
                                  capture_output=True, text=True, check=True)
            results[-1].update(json.loads(done.stdout.strip().splitlines()[-1]))
    report = {"machine": f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}", "repeats": repeats, "results": results}
    (out / "table_loading.json").write_text(json.dumps(report, indent=2))
    (out / "table_loading.md").write_text(markdown(report))
    return report


def markdown(report: dict) -> str:
    lines = [f"Median of {report['repeats']} fresh processes; {report['machine']}.", "",
             "| format | rows x columns | file MiB | plain pyarrow read s | load_table s | load / read | peak memory MiB | added by loading MiB | tensors MiB | added / tensors |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["results"]:
        lines.append(f"| {r['format']} | {r['rows']:,} x {r['columns']} | {r['file_mib']:.0f} | {r['read_s']:.2f} | {r['load_s']:.2f} | "
                     f"{r['load_over_read']:.1f} | {r['peak_mib']:.0f} | {r['added_mib']:.0f} | {r['tensor_mib']:.0f} | {r['added_over_tensors']:.1f} |")
    for r in report["results"]:
        if "search_s" in r:
            lines.append(f"\nOne search of one hard-sharing trial, one epoch, on the {r['format']} table (Ray Tune + MLflow, one run): "
                         f"{r['search_s']:.0f} s wall, of which {r['train_s']:.0f} s training; peak resident memory of the whole "
                         f"process tree (driver, Ray, worker) {r['peak_tree_mib']:,.0f} MiB.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 rows, one repeat")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--search", action="store_true", help="also run a one-trial search on the Parquet table")
    parser.add_argument("--measure", nargs=2, metavar=("PATH", "FORMAT"), help=argparse.SUPPRESS)
    parser.add_argument("--measure-search", nargs=2, metavar=("PATH", "FORMAT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure or args.measure_search:
        what, (path, fmt) = (measure, args.measure) if args.measure else (measure_search, args.measure_search)
        print(json.dumps(what(Path(path), fmt)))
        return
    report = run(20_000 if args.quick else args.rows, 1 if args.quick else args.repeats, args.out, args.search)
    print(markdown(report))


if __name__ == "__main__":
    main()
