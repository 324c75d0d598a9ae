"""Search efficiency: hypervolume against trials for the tpe, nsga2 and random samplers on synthetic_correlated.

A small space (hard sharing vs MMoE, widths, learning rate) on the MMoE synthetic data set
with two tasks; objectives: the two tasks' validation MSE. Each sampler runs ``--seeds``
searches of ``--budget`` trials; a long random search (another seed) gives the reference
front, and its worst point pushed out by 10% is the reference point of every hypervolume.
Reported: the mean fraction of the reference hypervolume reached after k trials, and the
budget at which each seed first reaches 95% of it (median over seeds; a seed that does not
reach it within the budget counts as more than the budget). The trials run in this process through the search's own
define-by-run space and samplers (Optuna without Ray or MLflow, whose cost
``search_overhead`` measures), one after another.

    python -m benchmarks.search_efficiency [--quick] [--budget N] [--reference N] [--seeds N]
"""
from __future__ import annotations

import statistics
from typing import Any

from .common import machine, parser, run_trials_in_process, write

NAME = "search_efficiency"
SAMPLERS = ("tpe", "nsga2", "random")
TARGET = 0.95


def efficiency_space(sampler: str, seed: int, trials: int, samples: int, epochs: int) -> Any:
    from mtl_search.search.space import parse_space

    return parse_space({
        "experiment": NAME,
        "data": {"dataset": "synthetic_correlated", "options": {"samples": samples, "correlation": 0.5, "seed": 0}},
        "backbone": {"kind": "mlp", "depth": 2, "width": {"choice": [16, 32, 64]}},
        "strategies": {"hard_sharing": {}, "mmoe": {"experts": {"int": [2, 8]}, "expert_width": {"choice": [8, 16, 32]}, "expert_depth": 1}},
        "training": {"epochs": epochs, "patience": 3, "batch_size": 128, "lr": {"loguniform": [1e-3, 3e-2]}},
        "search": {"trials": trials, "sampler": sampler, "seed": seed},
    })


def objective_points(space: Any) -> list[list[float]]:
    """Each trial's (val y1, val y2), in trial order."""
    return [[trial.result["val/y1"], trial.result["val/y2"]] for trial in run_trials_in_process(space)]


def hypervolume_curve(points: list[list[float]], reference: list[float]) -> list[float]:
    """Hypervolume of the first k points, for k = 1 .. len(points)."""
    from mtl_search.results.pareto import hypervolume

    return [hypervolume(points[:k], ["min", "min"], reference) for k in range(1, len(points) + 1)]


def trials_to_reach(curve: list[float], target: float) -> int | None:
    """The first trial count whose hypervolume reaches ``target``; None if the curve never does."""
    return next((k for k, value in enumerate(curve, start=1) if value >= target), None)


def run(budget: int, reference_trials: int, seeds: int, samples: int, epochs: int) -> dict:
    from mtl_search.results.pareto import (
        default_reference_point,
        hypervolume,
        pareto_front,
    )

    load_before = machine()
    reference_points = objective_points(efficiency_space("random", 1000, reference_trials, samples, epochs))
    front = [reference_points[i] for i in pareto_front(reference_points, ["min", "min"])]
    reference = default_reference_point(reference_points, ["min", "min"])
    reference_hv = hypervolume(front, ["min", "min"], reference)
    rows = []
    for sampler in SAMPLERS:
        curves = [hypervolume_curve(objective_points(efficiency_space(sampler, seed, budget, samples, epochs)), reference)
                  for seed in range(seeds)]
        fractions = [[value / reference_hv for value in curve] for curve in curves]
        reached = [trials_to_reach(f, TARGET) for f in fractions]
        rows.append({"sampler": sampler, "fraction_of_reference": fractions, "trials_to_95": reached,
                     "median_trials_to_95": statistics.median(r if r is not None else budget + 1 for r in reached)})
    return {"machine_before": load_before, "machine_after": machine(), "budget": budget, "reference_trials": reference_trials,
            "seeds": seeds, "samples": samples, "epochs": epochs, "reference_point": reference, "reference_hypervolume": reference_hv,
            "reference_front": front, "rows": rows}


def markdown(result: dict) -> str:
    budget = result["budget"]
    checkpoints = sorted({k for k in (5, 10, 20, 30, 40, 60, 80) if k <= budget} | {budget})
    lines = [
        f"Hypervolume (val MSE of y1, y2) as a fraction of a {result['reference_trials']}-trial random search's, mean over "
        f"{result['seeds']} seeds; synthetic_correlated p = 0.5, {result['samples']:,} rows, up to {result['epochs']} epochs per trial.",
        f"Machine: {result['machine_before']}.",
        "",
        "| sampler | " + " | ".join(f"{k} trials" for k in checkpoints) + " | trials to 95% (per seed) | median |",
        "| --- | " + " | ".join("---:" for _ in checkpoints) + " | --- | ---: |",
    ]
    for r in result["rows"]:
        means = [statistics.fmean(f[k - 1] for f in r["fraction_of_reference"]) for k in checkpoints]
        per_seed = ", ".join(str(k) if k is not None else f">{budget}" for k in r["trials_to_95"])
        median = r["median_trials_to_95"]
        lines.append(f"| {r['sampler']} | " + " | ".join(f"{m:.3f}" for m in means)
                     + f" | {per_seed} | {f'{median:g}' if median <= budget else f'>{budget}'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parse = parser(__doc__)
    parse.add_argument("--budget", type=int, default=30)
    parse.add_argument("--reference", type=int, default=120)
    parse.add_argument("--seeds", type=int, default=3)
    args = parse.parse_args(argv)
    sizes = (4, 6, 1, 400, 1) if args.quick else (args.budget, args.reference, args.seeds, 3000, 10)
    result = run(*sizes)
    print(write(NAME, markdown(result), result, args.out))


if __name__ == "__main__":
    main()
