"""The twelve-task space end to end: wall time, and Δm of the best trial against hard sharing at full depth and the references.

Runs ``search_spaces/many_tasks.yaml`` through ``run_search`` (Ray Tune on a fresh local
Ray, whose start counts; Optuna; MLflow in a scratch store; the single-task references are
trained first, as in every search), then
trains, in this process, hard sharing at full depth (every block shared) with the
references' configuration (the space's midpoints, ``baseline:``), and measures its gains
against the same references. Δm is the mean per-task gain over the references in percent
(positive: better than training each task alone).

    python -m benchmarks.many_tasks            # the README figures
    python -m benchmarks.many_tasks --quick    # a smoke run (used by the tests)
"""
from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks import common

SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "many_tasks.yaml"
QUICK = {"options": {"samples": 300, "tasks_per_group": 2}, "epochs": 2, "trials": 2, "reference_trials": 1}


def load(quick: bool):
    from mtl_search.search.space import parse_space

    raw = yaml.safe_load(SPACE.read_text())
    if quick:
        raw["data"]["options"].update(QUICK["options"])
        raw["training"]["epochs"] = QUICK["epochs"]
        raw["search"]["trials"] = QUICK["trials"]
        raw["baseline"] = {**raw.get("baseline", {}), "trials": QUICK["reference_trials"]}
    return parse_space(raw, SPACE)


def full_depth_hard_sharing(space, references: dict) -> dict:
    """Hard sharing with every block shared, at the fixed reference's configuration (the ranges' midpoints), trained here; its result with gains."""
    from mtl_search.config import NUMBER_KEY, STRATEGY_KEY, param_name
    from mtl_search.search.prepare import prepare
    from mtl_search.search.references import reference_settings
    from mtl_search.search.trial import make_trial_plan, train_trial

    plan, dataset, _ = prepare(space)
    settings = reference_settings(plan)
    depth = plan.backbone_kind.build(plan.problem.input_shape, **settings.backbone).depth
    config = {STRATEGY_KEY: "hard_sharing", NUMBER_KEY: 0,
              param_name("hard_sharing", "shared_depth"): depth, param_name("hard_sharing", "tower_width"): settings.tower_width,
              **{param_name("backbone", k): v for k, v in settings.backbone.items()},
              **{param_name("training", k): v for k, v in settings.training.items()}}
    return train_trial(config, dataset, make_trial_plan(plan, references), report=lambda metrics, checkpoint_dir=None: None)


def run(quick: bool) -> dict:
    import ray

    from mtl_search.search.run import RunOptions, run_search

    space = load(quick)
    start = time.perf_counter()
    started = not ray.is_initialized()
    if started:  # a fresh local instance, never a cluster someone else started on this machine (ray.init's default)
        ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as store:
            record = run_search(space, RunOptions(tracking_uri=f"sqlite:///{store}/mlflow.db"))
            wall = time.perf_counter() - start
    finally:
        if started:
            ray.shutdown()
    finished = [t for t in record.trials if t.status == "finished" and math.isfinite(t.metrics.get("delta_m", math.nan))]
    best = max(finished, key=lambda t: t.metrics["delta_m"])
    hard = full_depth_hard_sharing(space, record.references)
    return {
        "machine": common.machine(), "quick": quick, "tasks": len(record.references["val"]), "trials": len(record.trials),
        "objectives": [o.name for o in record.objectives], "wall_s": wall,
        "references_s": sum(t.metrics.get("train_seconds", 0.0) for t in record.reference_trials),  # their training time
        "reference_trials": len(record.reference_trials),
        "best": {"number": best.number, "strategy": best.strategy, "delta_m": best.metrics["delta_m"],
                 "worst_gain": best.metrics["worst_gain"], "test_delta_m": best.metrics.get("test_delta_m"),
                 "negative_transfer": best.negative_transfer, "gains": best.gains},
        "full_depth_hard_sharing": {"delta_m": hard["delta_m"], "worst_gain": hard["worst_gain"], "test_delta_m": hard["test_delta_m"]},
        "negative_transfer_trials": sum(t.negative_transfer for t in finished), "finished": len(finished),
        "front": [{"number": t.number, "strategy": t.strategy, "delta_m": t.metrics.get("delta_m"), "worst_gain": t.metrics.get("worst_gain"),
                   "params": t.metrics.get("params")} for t in sorted(record.front, key=lambda t: t.number)],
    }


def markdown(r: dict) -> str:
    b, h = r["best"], r["full_depth_hard_sharing"]
    lines = [f"`search_spaces/many_tasks.yaml`{' (quick)' if r['quick'] else ''}: {r['tasks']} tasks, {r['trials']} trials, "
             f"objectives {', '.join(r['objectives'])}; {r['machine']}.", "",
             f"Wall time of the search: {r['wall_s']:.1f} s; the {r.get('reference_trials', r['tasks'])} single-task reference trials "
             f"trained for {r['references_s']:.1f} s.", "",
             "| model | val Δm % | val worst gain % | test Δm % |", "| --- | ---: | ---: | ---: |",
             f"| best trial by Δm (trial {b['number']}, {b['strategy']}) | {b['delta_m']:+.1f} | {b['worst_gain']:+.1f} | {b['test_delta_m']:+.1f} |",
             f"| hard sharing at full depth (the ranges' midpoints) | {h['delta_m']:+.1f} | {h['worst_gain']:+.1f} | {h['test_delta_m']:+.1f} |",
             "| single-task references | 0 | 0 | 0 |", "",
             f"Trials with negative transfer (some task worse than alone): {r['negative_transfer_trials']} of {r['finished']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__).parse_args(argv)
    result = run(args.quick)
    print(common.write("many_tasks" + ("_quick" if args.quick and args.out == common.RESULTS else ""), markdown(result), result, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
