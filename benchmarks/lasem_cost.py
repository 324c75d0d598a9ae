"""Cost of LASEM's per-batch EM relative to one forward pass, for L = 3, 4, 6 blocks.

For each depth L (one group per block, 2^L configurations per task) it times, on one batch:

- ``forward``: the selected model's inference pass (every task through one configuration);
- ``e_step``: every configuration of every task, eval mode, no gradient, with shared
  prefixes (group g runs once per distinct prefix, all prefixes in one batched call);
- ``e_step_naive``: the same outputs computed one configuration at a time (L blocks each);
- ``em_step``: a whole training step: E-step, M-step pass, backward and optimiser step.

Each figure is the median of repeats divided by the median ``forward`` time of the same
run. ``python -m benchmarks.lasem_cost [--quick] [--out DIR]`` writes ``lasem_cost.md``
and ``lasem_cost.json`` to DIR (default ``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from mtl_search_plugins.selective_transfer import Lasem, configuration_bits

from mtl_search import Problem, Split, Task
from mtl_search.nn.backbones import build_mlp

from .common import median_seconds

DEPTHS = (3, 4, 6)


def measure(depth: int, width: int, batch: int, tasks: int, repeats: int) -> dict[str, float]:
    """Times of one depth as ratios to the selected model's forward pass."""
    torch.manual_seed(0)
    problem = Problem((width,), tuple(Task(f"y{t}", "regression") for t in range(tasks)))
    model = Lasem().build(problem, build_mlp((width,), depth=depth, width=width),
                          {"groups": depth, "tower_width": 16, "prior": "running_mean", "mode": "joint"})
    data = Split(torch.randn(batch, width), {t: torch.randn(batch) for t in problem.task_names})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    bits = configuration_bits(depth).tolist()

    def forward() -> None:
        with torch.no_grad():
            model(data.x)

    def e_step() -> None:
        with torch.no_grad():
            for task in problem.task_names:
                model.configuration_outputs(data.x, task)

    def e_step_naive() -> None:
        with torch.no_grad():
            for task in problem.task_names:
                for config in bits:
                    h = data.x
                    for unit in model.units_of(task, config):
                        h = unit(h)
                    model.towers[task](h)

    def em_step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        sum(model.task_losses(data).values()).backward()
        optimizer.step()
        model.eval()

    model.eval()
    base = median_seconds(forward, repeats)
    return {
        "depth": depth,
        "configurations": 2**depth,
        "e_step": median_seconds(e_step, repeats) / base,
        "e_step_naive": median_seconds(e_step_naive, repeats) / base,
        "em_step": median_seconds(em_step, repeats) / base,
    }


def table(rows: list[dict[str, float]], setting: str) -> str:
    lines = [
        f"LASEM cost per batch, relative to one forward pass of the selected model ({setting})",
        "",
        "| L | configurations per task | E-step, shared prefixes | E-step, one configuration at a time | whole EM training step |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {r['depth']} | {r['configurations']} | {r['e_step']:.1f}x | {r['e_step_naive']:.1f}x | {r['em_step']:.1f}x |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (a smoke run, for tests)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    width, batch, tasks, repeats = (8, 16, 2, 2) if args.quick else (64, 256, 2, 30)
    torch.set_num_threads(1)
    rows = [measure(depth, width, batch, tasks, repeats) for depth in DEPTHS]
    setting = f"width {width}, batch {batch}, {tasks} tasks, median of {repeats}, 1 thread, {platform.machine()} CPU"
    args.out.mkdir(parents=True, exist_ok=True)
    markdown = table(rows, setting)
    (args.out / "lasem_cost.md").write_text(markdown)
    (args.out / "lasem_cost.json").write_text(json.dumps({"setting": setting, "rows": rows}, indent=2))
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
