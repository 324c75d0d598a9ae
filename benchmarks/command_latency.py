"""How long the commands a user types take before they answer: ``--help``, ``validate``, ``report``, ``plugins``.

Each command runs in a fresh Python process (``python -m mtl_search.cli ...``, what the
``mtl-search`` console script runs), as a user runs it; the figures per command are the
median over repeats of the wall time and of the process's CPU time (user + system: on a
shared machine, wall time also holds other jobs' load), then, from one run under
``python -X importtime``, the time spent importing and which heavy packages (torch, Ray,
MLflow, Optuna, matplotlib) the command imported at all.

``validate`` checks a small space of two strategies (it builds each at its smallest
configuration, which needs torch); ``report`` reads a store of one search with two trials,
written beforehand with MLflow directly.

    python -m benchmarks.command_latency                      # 5 repeats each
    python -m benchmarks.command_latency --compare ../other   # and the same commands of another checkout, side by side
    python -m benchmarks.command_latency --quick              # 1 repeat, for the test suite

Writes ``command_latency.md`` and ``command_latency.json`` to ``--out`` (default benchmarks/results).
"""
from __future__ import annotations

import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import machine, parser, write

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "mlflow", "optuna", "matplotlib")
SPACE = "data: {dataset: synthetic_correlated, options: {samples: 400}}\nstrategies: {hard_sharing: {}, mmoe: {}}\n"
STORE_SCRIPT = """
import json, sys
from mtl_search.record import Objective
from mtl_search.results.search_run import Tracker
uri = sys.argv[1]
tracker = Tracker(uri, "demo")
objectives = [Objective("y1", "val/y1", "min"), Objective("y2", "val/y2", "min")]
parent = tracker.start_search("search-1", objectives, {"trials": 2}, "", tags={"mtl_search.task_metrics": json.dumps({"y1": "mse", "y2": "mse"})})
for number, (strategy, y1, y2) in enumerate([("hard_sharing", 0.5, 0.3), ("mmoe", 0.25, 0.6)]):
    run = tracker.start_trial(parent, number, strategy, {"strategy": strategy}, strategy)
    for key, value in (("val/y1", y1), ("val/y2", y2), ("test/y1", y1), ("test/y2", y2)):
        tracker.client.log_metric(run, key, value)
    tracker.client.set_tag(run, "mtl_search.pareto", "true")
    tracker.client.set_terminated(run, "FINISHED")
tracker.client.set_terminated(parent, "FINISHED")
"""


def commands(folder: Path) -> dict[str, list[str]]:
    """The measured command lines (arguments after ``mtl-search``)."""
    uri = f"sqlite:///{folder / 'mlflow' / 'mlflow.db'}"
    return {"--help": ["--help"], "validate": ["validate", str(folder / "space.yaml")],
            "report": ["report", "--tracking-uri", uri], "plugins": ["plugins"]}


def environment(code: Path | None) -> dict[str, str]:
    """The environment that makes ``python -m mtl_search.cli`` run the checkout at ``code`` (default: this one)."""
    env = dict(os.environ)
    root = code or ROOT
    shim = root / ".shim"
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (root, shim) if p.exists())
    return env


def run_once(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one fresh ``python -m mtl_search.cli ARGS``; raises when it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mtl_search.cli", *args], env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"mtl-search {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)$")


def import_profile(args: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Seconds spent importing (sum over the top-level imports) and the heavy packages imported, from ``-X importtime``."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "mtl_search.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True)
    total, names = 0, set()
    for line in done.stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            names.add(match.group(4))
            if not match.group(3):  # a top-level import: its cumulative time holds its children's
                total += int(match.group(2))
    return {"import_s": total / 1e6, "heavy": [m for m in HEAVY if m in names]}


def measure(checkouts: dict[str, Path | None], folder: Path, repeats: int) -> dict[str, dict[str, dict[str, Any]]]:
    """``{checkout label: {command: figures}}``; the checkouts' runs alternate, so a change in the machine's load hits both alike."""
    envs = {label: environment(code) for label, code in checkouts.items()}
    results: dict[str, dict[str, dict[str, Any]]] = {label: {} for label in checkouts}
    for name, args in commands(folder).items():
        runs: dict[str, list[tuple[float, float]]] = {label: [] for label in checkouts}
        for _ in range(repeats):
            for label, env in envs.items():
                runs[label].append(run_once(args, env, folder))
        for label, env in envs.items():
            results[label][name] = {"wall_s": statistics.median(w for w, _ in runs[label]),
                                    "cpu_s": statistics.median(c for _, c in runs[label]),
                                    **import_profile(args, env, folder), "repeats": repeats}
    return results


def commit_of(code: Path) -> str:
    """The checkout's commit (short), or "unknown"."""
    done = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> str:
    parse = parser(__doc__)
    parse.add_argument("--repeats", type=int, default=5)
    parse.add_argument("--compare", type=Path, help="another checkout of mtl-search, measured the same way (column 'other')")
    args = parse.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "space.yaml").write_text(SPACE)
        subprocess.run([sys.executable, "-c", STORE_SCRIPT, f"sqlite:///{folder / 'mlflow' / 'mlflow.db'}"],
                       env=environment(None), check=True, capture_output=True)
        load_before = machine()
        checkouts: dict[str, Path | None] = {"this": None}
        if args.compare:
            checkouts["other"] = args.compare.resolve()
        results = measure(checkouts, folder, repeats)
    lines = ["Each command in a fresh process (`python -m mtl_search.cli ...`), median of "
             f"{repeats} run(s); CPU = the process's user + system time; imports from one run under `-X importtime`.",
             f"Machine: {load_before}", ""]
    header = "| command | wall s | CPU s | importing s | heavy packages imported |"
    rule = "| --- | ---: | ---: | ---: | --- |"
    if args.compare:
        header += " other: wall s | other: CPU s | other: heavy packages imported |"
        rule += " ---: | ---: | --- |"
    lines += [header, rule]
    for name, row in results["this"].items():
        line = f"| `{name}` | {row['wall_s']:.2f} | {row['cpu_s']:.2f} | {row['import_s']:.2f} | {', '.join(row['heavy']) or 'none'} |"
        if args.compare:
            other = results["other"][name]
            line += f" {other['wall_s']:.2f} | {other['cpu_s']:.2f} | {', '.join(other['heavy']) or 'none'} |"
        lines.append(line)
    if args.compare:
        lines += ["", f"this: commit {commit_of(ROOT)}; other: commit {commit_of(args.compare)} (runs of the two alternate)"]
    return write("command_latency", "\n".join(lines) + "\n",
                 {"machine": load_before, "repeats": repeats, "compare": str(args.compare) if args.compare else None, **results}, args.out)


if __name__ == "__main__":
    print(main())
