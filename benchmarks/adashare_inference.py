"""AdaShare inference cost: a skipped block is not computed, tasks with the same executed blocks share them.

Times the forward pass of one AdaShare model under several fixed policies, as ratios to
"every task executes every block" (which, with shared prefixes, computes each block once),
and to the relaxed search-time forward that runs every block once per task.

    python -m benchmarks.adashare_inference [--quick]

Writes benchmarks/results/adashare_inference.md and .json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from mtl_search_plugins.adashare import AdaShare

from mtl_search import Problem, Task
from mtl_search.nn.backbones import build_residual_mlp

RESULTS = Path(__file__).resolve().parent / "results"


def _policies(tasks: int, depth: int) -> dict[str, torch.Tensor]:
    every = torch.ones(tasks, depth, dtype=torch.bool)
    half = every.clone()
    half[:, depth // 2 :] = False
    private_tops = half.clone()  # in the top half each task executes its own block
    for t in range(tasks):
        private_tops[t, depth // 2 + t % (depth - depth // 2)] = True
    return {
        "every block, every task": every,
        "top half skipped by all": half,
        "top half, one different block per task": private_tops,
        "every block skipped": torch.zeros(tasks, depth, dtype=torch.bool),
    }


def _seconds(model: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        model(x)
    return time.perf_counter() - start


def run(quick: bool) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tasks, depth, width, batch = (3, 4, 128, 512) if quick else (4, 8, 256, 2048)
    repeats = 7 if quick else 21
    problem = Problem((64,), tuple(Task(f"y{i + 1}", "regression") for i in range(tasks)))
    model = AdaShare().build(problem, build_residual_mlp((64,), depth=depth, width=width), {"tower_width": 16}).eval()
    x = torch.randn(batch, 64)

    policies = _policies(tasks, depth)
    times: dict[str, list[float]] = {name: [] for name in ["relaxed", *policies]}
    for _ in range(repeats + 1):  # round robin, so drift in the machine's load hits every policy alike
        model.train()
        model.searching = True  # relaxed forward: every block once per task
        times["relaxed"].append(_seconds(model, x))
        model.eval()
        for name, policy in policies.items():
            model.set_policy(policy)
            times[name].append(_seconds(model, x))
    median = {name: statistics.median(values[1:]) for name, values in times.items()}  # the first round warms up
    relaxed = median.pop("relaxed")
    rows = []
    for name, policy in policies.items():
        model.set_policy(policy)
        rows.append({"policy": name, "params": model.inference_parameters(), "seconds": median[name]})
    base = rows[0]["seconds"]
    for row in rows:
        row["time_vs_every_block"] = row["seconds"] / base
    return {
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared), no GPU, 1 torch thread",
        "tasks": tasks, "depth": depth, "width": width, "batch": batch, "repeats": repeats,
        "relaxed_vs_every_block": relaxed / base,
        "rows": rows,
    }


def write(result: dict) -> str:
    lines = [
        f"AdaShare inference, {result['tasks']} tasks, residual_mlp depth {result['depth']} width {result['width']}, "
        f"batch {result['batch']}, median of {result['repeats']} ({result['machine']})",
        "",
        "| fixed policy | parameters used | time / every block |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {r['policy']} | {r['params']} | {r['time_vs_every_block']:.2f} |" for r in result["rows"]]
    lines += ["", f"Relaxed search-time forward (every block once per task): {result['relaxed_vs_every_block']:.2f} x every block."]
    table = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "adashare_inference.md").write_text(table)
    (RESULTS / "adashare_inference.json").write_text(json.dumps(result, indent=2))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller model and fewer repeats")
    print(write(run(parser.parse_args().quick)))


if __name__ == "__main__":
    main()
