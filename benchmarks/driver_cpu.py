"""Driver CPU of a search with 12 objectives against the same search with 2: the bookkeeping must not grow with them.

``python -m benchmarks.driver_cpu [--quick]``: a 12-task ``synthetic_correlated`` search
(hard sharing, random sampler, the same seed, so the same trials), once with all twelve
tasks as objectives and once with two, each in a fresh process; the driver's CPU time
(every thread of the driver process: Tune's loop, the MLflow writer, the front, the review
plots) from the search's start to its end. Target: 12 objectives within 5 % of 2.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from .common import machine, parser, write

CHILD = r"""
import json, os, sys, time
from pathlib import Path
from mtl_search.search.run import RunOptions, run_search
from mtl_search.search.space import load_space
space = load_space(Path(sys.argv[1]))
cpu, wall = time.process_time(), time.perf_counter()
record = run_search(space, RunOptions())
print("RESULT " + json.dumps({"driver_cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall,
                              "trials": len(record.trials), "front": len(record.front)}))
"""


def one(objectives: int, trials: int, folder: Path) -> dict:
    tasks = [f"y{i}" for i in range(1, 13)]
    space = folder / f"space_{objectives}.yaml"
    space.write_text(textwrap.dedent(f"""\
        experiment: driver_cpu_{objectives}
        data: {{dataset: synthetic_correlated, options: {{tasks: 12, samples: 1500, input_dim: 32, seed: 0}}}}
        backbone: {{kind: mlp, depth: 2, width: 16}}
        strategies: {{hard_sharing: {{}}}}
        baseline: false
        training: {{epochs: 3, batch_size: 256}}
        search: {{trials: {trials}, concurrency: 2, seed: 0, sampler: random, objectives: {json.dumps(tasks[:objectives])}}}
        """))
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    out = subprocess.run([sys.executable, "-c", CHILD, str(space)], cwd=folder, capture_output=True, text=True, env=env, timeout=1200)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return {"objectives": objectives, **json.loads(next(line[7:] for line in out.stdout.splitlines() if line.startswith("RESULT ")))}


def main(argv: list[str] | None = None) -> str:
    args = parser(__doc__).parse_args(argv)
    trials = 4 if args.quick else 16
    with tempfile.TemporaryDirectory() as tmp:
        rows = [one(m, trials, Path(tmp)) for m in (2, 12)]
    ratio = rows[1]["driver_cpu_s"] / rows[0]["driver_cpu_s"]
    lines = [f"Driver CPU of a {trials}-trial, 12-task search (hard sharing, random sampler, same seed) with 2 and with 12 objectives, "
             f"each in a fresh process (`python -m benchmarks.driver_cpu`). Machine: {machine()}.", "",
             "| objectives | driver CPU (s) | wall (s) | trials | front size |", "| ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['objectives']} | {r['driver_cpu_s']:.2f} | {r['wall_s']:.1f} | {r['trials']} | {r['front']} |" for r in rows]
    lines += ["", f"12 objectives / 2 objectives: {ratio:.3f} (target: at most 1.05)."]
    return write("driver_cpu", "\n".join(lines) + "\n", {"trials": trials, "rows": rows, "ratio": ratio}, args.out)


if __name__ == "__main__":
    print(main())
