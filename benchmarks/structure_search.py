"""Structure search: does searching which tasks share which blocks find better models on data with a known structure?

Data: ``synthetic_correlated`` with tasks drawn in 2 clusters (cosine 0.9 within a cluster,
0 across), 4 and 8 tasks. Three spaces, each searched by TPE (the tasks' val MSE as the
objectives) for ``--budget`` trials per seed:

(a) ``families``: today's families, hard sharing (split depth searched) and MMoE;
(b) ``+branching``: the same plus ``branching`` (trees searched through ``tree_code``);
(c) ``groups``: ``task_groups`` over the partitions ``mtl-search groups`` proposes (the best
    for each number of groups, from one joint training with affinity measured; that
    training's time is reported), shared depth searched.

Quality of a trial: the mean over tasks of val MSE / variance of the task's val labels
(the mean normalised val loss; 1.0 is predicting the mean). Reported: the best trial's
quality after k trials (mean over seeds), and the affinity measurement's step cost: the
CPU time of a training step with the lookahead measured against a plain step (hard sharing,
median of repeats).

    python -m benchmarks.structure_search [--quick] [--budget N] [--seeds N] [--tasks 4 8]
"""
from __future__ import annotations

import statistics
import time
from typing import Any

from .common import machine, median_seconds, parser, run_trials_in_process, write

NAME = "structure_search"
ARMS = ("families", "+branching", "groups")


def data_options(tasks: int, samples: int) -> dict[str, Any]:
    return {"tasks": tasks, "clusters": 2, "correlation": 0.9, "across": 0.0, "samples": samples, "input_dim": 24, "seed": 0}


def make_space(arm: str, tasks: int, seed: int, trials: int, samples: int, epochs: int, partitions: list | None = None) -> Any:
    from mtl_search.search.space import parse_space

    families = {"hard_sharing": {}, "mmoe": {"experts": {"int": [2, 8]}, "expert_width": {"choice": [16, 32]}, "expert_depth": 1}}
    strategies = {"families": families, "+branching": {**families, "branching": {}},
                  "groups": {"task_groups": {"partition": {"choice": partitions}} if partitions and len(partitions) > 1
                             else {"task_groups": {"partition": (partitions or ["all"])[0]}}}}[arm]
    return parse_space({
        "experiment": f"{NAME}-{arm}-{tasks}",
        "data": {"dataset": "synthetic_correlated", "options": data_options(tasks, samples)},
        "backbone": {"kind": "mlp", "depth": 3, "width": 32},
        "strategies": strategies,
        "training": {"epochs": epochs, "patience": 3, "batch_size": 128, "lr": 0.005},
        "search": {"trials": trials, "sampler": "tpe", "seed": seed},
    })


def label_variances(tasks: int, samples: int) -> dict[str, float]:
    from mtl_search.search.prepare import prepare

    _, dataset, _ = prepare(make_space("families", tasks, 0, 1, samples, 1))
    return {t.name: float(t.to_units(dataset.val.y[t.name]).var()) for t in dataset.problem.tasks}  # in units, as val/<task>


def quality(result: dict[str, Any], variances: dict[str, float]) -> float:
    return statistics.fmean(result[f"val/{t}"] / v for t, v in variances.items())


def best_so_far(values: list[float]) -> list[float]:
    out, best = [], float("inf")
    for v in values:
        best = min(best, v)
        out.append(best)
    return out


def proposed_partitions(tasks: int, seed: int, samples: int, epochs: int) -> tuple[list, float, list]:
    """The best partition for each number of groups from one joint training, its seconds, and the affinity."""
    from mtl_search.search.grouping import measure_affinity, select_partitions

    space = make_space("families", tasks, seed, 1, samples, epochs)
    start = time.perf_counter()
    measured = measure_affinity(space)
    partitions = select_partitions(measured["affinity"], measured["tasks"], top=1, seed=seed)
    return [p["groups"] for p in partitions], time.perf_counter() - start, measured["affinity"].tolist()


def step_cost(tasks: int, repeats: int) -> dict[str, float]:
    """CPU seconds of one training step on a batch of 128, plain and with the lookahead affinity measured."""
    import torch
    from mtl_search_plugins.hard_sharing import HardSharing

    from mtl_search import TrainConfig, Trainer
    from mtl_search.nn.backbones import build_mlp
    from mtl_search.search.prepare import prepare
    from mtl_search.training.weighting import Equal

    _, data, _ = prepare(make_space("families", tasks, 0, 1, 400, 1))
    batch = next(data.train.batches(128))
    out = {}
    for label, every in (("plain", 0), ("affinity", 1)):
        torch.manual_seed(0)
        model = HardSharing().build(data.problem, build_mlp((24,), depth=3, width=32), {"shared_depth": 3, "tower_width": 16})
        trainer = Trainer(data, TrainConfig(affinity_every=every), Equal(data.problem.task_names))
        optimizer = trainer.make_optimizer(model)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            losses = model.task_losses(batch)
            if trainer.affinity is not None:
                trainer.affinity.observe(model, batch, losses, optimizer)
            trainer.weighting.backward(losses, model.regularization(), model)
            optimizer.step()

        out[label] = median_seconds(step, repeats, clock=time.process_time)
    out["ratio"] = out["affinity"] / out["plain"]
    return out


def run(task_counts: list[int], budget: int, seeds: int, samples: int, epochs: int, repeats: int) -> dict:
    load_before = machine()
    rows = []
    for tasks in task_counts:
        variances = label_variances(tasks, samples)
        for arm in ARMS:
            curves, seconds, extra = [], [], []
            for seed in range(seeds):
                partitions = None
                if arm == "groups":
                    partitions, grouping_seconds, affinity = proposed_partitions(tasks, seed, samples, epochs)
                    extra.append({"partitions": partitions, "grouping_seconds": grouping_seconds, "affinity": affinity})
                start = time.perf_counter()
                done = run_trials_in_process(make_space(arm, tasks, seed, budget, samples, epochs, partitions))
                seconds.append(time.perf_counter() - start)
                curves.append(best_so_far([quality(trial.result, variances) for trial in done]))
            rows.append({"tasks": tasks, "arm": arm, "best_so_far": curves, "search_seconds": seconds, "groups": extra})
    costs = {str(t): step_cost(t, repeats) for t in task_counts}
    return {"machine_before": load_before, "machine_after": machine(), "tasks": task_counts, "budget": budget, "seeds": seeds,
            "samples": samples, "epochs": epochs, "rows": rows, "affinity_step_cost": costs}


def markdown(result: dict) -> str:
    budget = result["budget"]
    checkpoints = sorted({k for k in (1, 5, 10, 20, 30) if k <= budget} | {budget})
    lines = [
        f"Best trial's mean normalised val loss (val MSE / label variance, mean over tasks; lower is better) after k TPE trials, "
        f"mean over {result['seeds']} seed(s); synthetic_correlated, 2 clusters (cosine 0.9 within, 0 across), "
        f"{result['samples']:,} rows, mlp 3 x 32, up to {result['epochs']} epochs per trial.",
        f"Machine: {result['machine_before']}.",
        "",
        "| tasks | space | " + " | ".join(f"{k} trials" for k in checkpoints) + " | search s (mean) |",
        "| ---: | --- | " + " | ".join("---:" for _ in checkpoints) + " | ---: |",
    ]
    for r in result["rows"]:
        means = [statistics.fmean(c[k - 1] for c in r["best_so_far"]) for k in checkpoints]
        lines.append(f"| {r['tasks']} | {r['arm']} | " + " | ".join(f"{m:.4f}" for m in means)
                     + f" | {statistics.fmean(r['search_seconds']):.1f} |")
    lines += ["", "Partitions proposed by the groups step (best for 2 groups, per seed) and its one joint training's seconds:", ""]
    for r in result["rows"]:
        for seed, g in enumerate(r["groups"]):
            two = next((p for p in g["partitions"] if len(p) == 2), None)
            lines.append(f"- {r['tasks']} tasks, seed {seed}: {two} ({g['grouping_seconds']:.1f} s)")
    lines += ["", "Affinity measurement's step cost (CPU time of one step, batch 128, hard sharing, lookahead every step):", "",
              "| tasks | plain step ms | with affinity ms | ratio |", "| ---: | ---: | ---: | ---: |"]
    for tasks, c in result["affinity_step_cost"].items():
        lines.append(f"| {tasks} | {c['plain'] * 1e3:.2f} | {c['affinity'] * 1e3:.2f} | {c['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parse = parser(__doc__)
    parse.add_argument("--budget", type=int, default=20)
    parse.add_argument("--seeds", type=int, default=3)
    parse.add_argument("--tasks", type=int, nargs="+", default=[4, 8])
    parse.add_argument("--samples", type=int, default=2000)
    parse.add_argument("--epochs", type=int, default=10)
    args = parse.parse_args(argv)
    if args.quick:
        result = run([4], 2, 1, 200, 1, 2)
    else:
        result = run(args.tasks, args.budget, args.seeds, args.samples, args.epochs, 20)
    print(write(NAME, markdown(result), result, args.out))


if __name__ == "__main__":
    main()
