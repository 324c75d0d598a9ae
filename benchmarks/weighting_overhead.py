"""Per-step cost of every registered loss weighting / gradient aggregator relative to ``equal``.

A hard-sharing model (shared trunk, per-task blocks and towers) on the synthetic correlated
data set; one step = task losses, ``Weighting.backward``, the optimiser step and
``after_step``. Methods are timed in interleaved rounds, in a shuffled order per round (so
drifts in machine load hit all of them alike); each method's time is the median over
rounds, reported as a ratio to ``equal``'s median in the same run.

    python -m benchmarks.weighting_overhead            # the table in benchmarks/README.md
    python -m benchmarks.weighting_overhead --quick    # a smoke run (used by the tests)
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

import torch
from mtl_search_plugins.datasets import synthetic_correlated
from mtl_search_plugins.hard_sharing import HardSharing

from mtl_search import Choice, Fixed, TrainConfig, Trainer
from mtl_search.nn.backbones import build_mlp
from mtl_search.registry import load_registry

FULL = {"tasks": 3, "samples": 4096, "input_dim": 64, "depth": 3, "width": 128, "batch": 256, "steps": 20, "rounds": 15}
QUICK = {"tasks": 2, "samples": 256, "input_dim": 8, "depth": 2, "width": 16, "batch": 64, "steps": 2, "rounds": 2}


def knob_midpoints(cls) -> dict:
    """A representative value of each knob of a weighting class: the middle of a range, the first choice, the constant."""
    values = {}
    for name, knob in cls.knobs.items():
        if isinstance(knob, Choice):
            values[name] = knob.choices[0]
        elif isinstance(knob, Fixed):
            values[name] = knob.value
        else:
            values[name] = type(knob.low)((knob.low + knob.high) / 2)
    return values


def time_steps(trainer: Trainer, model, optimizer, batches: list, steps: int) -> float:
    """Seconds per training step over ``steps`` steps."""
    start = time.perf_counter()
    for batch in batches[:steps]:
        optimizer.zero_grad(set_to_none=True)
        trainer.weighting.backward(model.task_losses(batch), model.regularization(), model)
        optimizer.step()
        trainer.weighting.after_step()
    return (time.perf_counter() - start) / steps


def run(settings: dict) -> dict:
    """Median seconds per step of every weighting and its ratio to ``equal``."""
    torch.manual_seed(0)
    data = synthetic_correlated(correlation=0.5, tasks=settings["tasks"], samples=settings["samples"], input_dim=settings["input_dim"],
                                sin_terms=3, scale=1.0, noise=0.1, seed=0, val=0.1, test=0.1)
    batches = list(data.train.batches(settings["batch"], shuffle=True, generator=torch.Generator().manual_seed(0)))
    batches = (batches * (settings["steps"] // len(batches) + 1))[: settings["steps"]]
    backbone = build_mlp((settings["input_dim"],), depth=settings["depth"], width=settings["width"])
    methods = load_registry().weightings
    setups = {}
    for name, cls in methods.items():
        torch.manual_seed(0)
        model = HardSharing().build(data.problem, backbone, {"shared_depth": settings["depth"], "tower_width": 32})
        trainer = Trainer(data, TrainConfig(lr=1e-3, batch_size=settings["batch"]), cls(data.problem.task_names, **knob_midpoints(cls)))
        optimizer = trainer.make_optimizer(model)
        time_steps(trainer, model, optimizer, batches, 1)  # warm-up (allocations, solver imports)
        setups[name] = (trainer, model, optimizer)
    times: dict[str, list[float]] = {name: [] for name in methods}
    order, shuffler = list(setups), random.Random(0)
    for _ in range(settings["rounds"]):
        shuffler.shuffle(order)  # no method always runs right after the same (cache-evicting) one
        for name in order:
            trainer, model, optimizer = setups[name]
            times[name].append(time_steps(trainer, model, optimizer, batches, settings["steps"]))
    medians = {name: statistics.median(values) for name, values in times.items()}
    shared = sum(p.numel() for p in setups["equal"][1].shared_parameters())
    return {
        "settings": settings,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "shared_parameters": shared,
        "seconds_per_step": medians,
        "ratio_to_equal": {name: medians[name] / medians["equal"] for name in medians},
    }


def markdown(result: dict) -> str:
    """The table benchmarks/README.md quotes."""
    s = result["settings"]
    lines = [
        f"Hard sharing, {s['tasks']} tasks, trunk of {s['depth']} x {s['width']} ({result['shared_parameters']} shared parameters), "
        f"batch {s['batch']}; median of {s['rounds']} rounds x {s['steps']} steps; {result['machine']}.",
        "",
        "| method | step time / equal |",
        "| --- | ---: |",
    ]
    for name, ratio in sorted(result["ratio_to_equal"].items(), key=lambda item: item[1]):
        lines.append(f"| {name} | {ratio:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and few steps (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="folder for the .md and .json results")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one trial = one thread by default (cpus_per_trial: 1)
    try:
        result = run(QUICK if args.quick else FULL)
    finally:
        torch.set_num_threads(threads)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "weighting_overhead" + ("_quick" if args.quick else "")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (args.out / f"{stem}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
