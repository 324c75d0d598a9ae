"""Is Δm fair? No-sharing trials against searched and fixed single-task references, on three data sets.

For each data set two real searches run (Ray Tune, Optuna, MLflow in a scratch store), each
with searched references (the default: each task's reference trials get one strategy's
budget, ⌈trials / strategies⌉):

- **no sharing**: only ``hard_sharing: {shared_depth: 0}`` — every task its own network, the
  same recipe as the references. A fair yardstick puts these trials' Δm around 0 (a trial is
  one draw, its references the best of K on validation, so slightly below 0 is expected);
- **sharing**: the data set's sharing strategies; the best Δm on the front.

The no-sharing search also repeats its front trials and the chosen references with more
seeds (``search.repeats``): their Δm as mean ± std over seeds shows how much of a single
trial's Δm is seed noise.

Both searches' trials are also measured against the fixed reference (``baseline: {mode:
fixed}``, the midpoints of the ranges, trained once per task), which is what Δm used to be
measured against. The table gives the Δm of the no-sharing trials (median and range) and of
the best sharing trial against each yardstick, and the references' share of the searches'
wall time (from the reference runs' start and end times in MLflow).

``python -m benchmarks.reference_fairness [--quick]``; results in benchmarks/results.
"""
from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common

REPO = Path(__file__).resolve().parents[1]

CASES = {
    "synthetic (correlation 0.5)": {
        "data": {"dataset": "synthetic_correlated", "options": {"correlation": 0.5, "tasks": 2, "samples": 6000, "seed": 0}},
        "backbone": {"kind": "mlp", "depth": 2, "width": {"choice": [32, 64]}},
        "training": {"batch_size": 256},
        "sharing": {"hard_sharing": {"shared_depth": {"int": [1, 2]}}, "mmoe": {"experts": {"int": [2, 8]}, "expert_width": {"choice": [16, 32]}, "expert_depth": 1}},
        "quick": {"samples": 600},
    },
    "digits images (two digits)": {
        "data": {"dataset": "multi_digits", "options": {"samples": 3000, "overlap": 0.25, "shift": 1, "noise": 0.05, "seed": 0}},
        "backbone": {"kind": "conv", "channels": [16, 32], "kernel": 3, "pool": "max", "features": "flatten"},
        "training": {"batch_size": 128},
        "sharing": {"hard_sharing": {"shared_depth": {"int": [1, 2]}}, "mmoe": {"experts": {"int": [2, 4]}, "expert_width": 64}},
        "quick": {"samples": 400},
    },
    "table (search_spaces/data/tabular.csv)": {
        "data": {"csv": str(REPO / "search_spaces" / "data" / "tabular.csv"), "exclude": ["id"], "group_column": "user",
                 "split": {"val": 0.15, "test": 0.15, "seed": 0}},
        "tasks": {"revenue": {"kind": "regression", "metric": "mae"}, "clicked": {"kind": "binary", "metric": "auc"},
                  "segment": {"kind": "multiclass", "metric": "accuracy"}},
        "inputs": {"encoding": "embedding", "embedding_dim": {"int": [2, 8]}},
        "backbone": {"kind": "mlp", "depth": 2, "width": {"choice": [32, 64]}},
        "training": {"batch_size": 128},
        "sharing": {"hard_sharing": {"shared_depth": {"int": [1, 2]}}, "mmoe": {"experts": {"int": [2, 6]}, "expert_width": {"choice": [16, 32]}, "expert_depth": 1}},
        "quick": {},
    },
}


def _space(case: dict[str, Any], name: str, strategies: dict, trials: int, epochs: int, quick: bool, repeats: int = 0) -> dict:
    data = copy.deepcopy(case["data"])
    if quick and "options" in data:
        data["options"].update(case["quick"])
    space = {
        "experiment": name, "data": data, "backbone": case["backbone"], "strategies": strategies,
        "training": {"epochs": epochs, "patience": 3, "lr": {"loguniform": [1.0e-3, 1.0e-2]}, **case["training"]},
        "search": {"trials": trials, "concurrency": 2, "seed": 0, **({"repeats": repeats} if repeats else {})},
    }
    for key in ("tasks", "inputs"):
        if key in case:
            space[key] = case[key]
    return space


def _run(raw: dict, store: str) -> tuple[Any, Any, float]:
    from mtl_search.search.run import RunOptions, run_search
    from mtl_search.search.space import parse_space

    start = time.perf_counter()
    record = run_search(parse_space(raw), RunOptions(tracking_uri=store))
    return record, parse_space(raw), time.perf_counter() - start


def _fixed_references(raw: dict) -> tuple[dict, dict[str, str]]:
    """The fixed yardstick: the same space with ``baseline: {mode: fixed}``, trained once per task here."""
    from mtl_search.search.prepare import prepare
    from mtl_search.search.references import train_references
    from mtl_search.search.space import parse_space

    fixed = {**raw, "baseline": {"mode": "fixed"}, "search": {k: v for k, v in raw["search"].items() if k != "repeats"}}
    plan, dataset, _ = prepare(parse_space(fixed))
    return train_references(plan, dataset, echo=lambda line: None), {t.name: t.direction for t in plan.problem.tasks}


def _delta_m(trial: Any, references: dict, directions: dict[str, str]) -> float:
    from mtl_search.record import DELTA_M
    from mtl_search.results.metrics import gain_metrics

    return gain_metrics(directions, trial.val, trial.test, references)[DELTA_M]


def _reference_share(store: str, record: Any) -> float:
    """The reference trials' wall-clock span over the search run's, from MLflow's start and end times."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    parent = client.get_run(record.search_run_id)
    runs = [client.get_run(t.run_id) for t in record.reference_trials]
    span = max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)
    return span / (parent.info.end_time - parent.info.start_time)


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def run_case(label: str, case: dict, quick: bool, store: str) -> dict[str, Any]:
    trials, epochs, repeats = (3, 2, 2) if quick else (8, 15, 3)
    slug = "".join(c for c in label.split(" (")[0] if c.isalnum())
    none_raw = _space(case, f"fair-{slug}-none", {"hard_sharing": {"shared_depth": 0}}, trials, epochs, quick, repeats)
    sharing_raw = _space(case, f"fair-{slug}-sharing", case["sharing"], trials, epochs, quick)
    unshared, _, unshared_s = _run(none_raw, store)
    shared, _, shared_s = _run(sharing_raw, store)
    fixed, directions = _fixed_references(none_raw)
    finished = [t for t in unshared.trials if t.status == "finished"]
    sharing = [t for t in shared.trials if t.status == "finished"]
    best = max(sharing, key=lambda t: t.metrics["delta_m"])
    return {
        "data set": label,
        "no sharing, searched references": _summary([t.metrics["delta_m"] for t in finished]),
        "no sharing, fixed reference": _summary([_delta_m(t, fixed, directions) for t in finished]),
        "best sharing, searched references": best.metrics["delta_m"],
        "best sharing, fixed reference": max(_delta_m(t, fixed, directions) for t in sharing),
        "best sharing trial": f"{best.strategy} (trial {best.number})",
        "no sharing front over seeds": [{"trial": t.number, **t.noise["delta_m"].to_json()} for t in unshared.front if t.noise],
        "reference share of wall time": {"no sharing": _reference_share(store, unshared), "sharing": _reference_share(store, shared)},
        "seconds": {"no sharing": unshared_s, "sharing": shared_s},
        "references": {"searched": unshared.references, "fixed": fixed},
        "budget": {"trials": trials, "reference trials per task": {"no sharing": len(unshared.reference_trials) // len(directions),
                                                                   "sharing": len(shared.reference_trials) // len(directions)},
                   "epochs": epochs, "repeats": repeats},
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Machine: {result['machine']}.", "",
             "| data set | no-sharing Δm %, searched references: median [min, max] | no-sharing Δm %, fixed reference | "
             "best sharing Δm %, searched | best sharing Δm %, fixed | no-sharing front Δm % over seeds (mean ± std) | "
             "references' share of wall time (no sharing / sharing) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["rows"]:
        tuned, fixed = row["no sharing, searched references"], row["no sharing, fixed reference"]
        share = row["reference share of wall time"]
        lines.append(f"| {row['data set']} | {tuned['median']:+.1f} [{tuned['min']:+.1f}, {tuned['max']:+.1f}] (n={tuned['n']}) | "
                     f"{fixed['median']:+.1f} [{fixed['min']:+.1f}, {fixed['max']:+.1f}] | "
                     f"{row['best sharing, searched references']:+.1f} ({row['best sharing trial']}) | {row['best sharing, fixed reference']:+.1f} | "
                     + "; ".join(f"{s['mean']:+.1f} ± {s['std']:.1f}{' *' if s['significant'] else ''}" for s in row["no sharing front over seeds"])
                     + f" | {share['no sharing']:.0%} / {share['sharing']:.0%} |")
    budget = result["rows"][0]["budget"]
    per_task = budget["reference trials per task"]
    lines += ["", f"Each search: {budget['trials']} trials; reference trials per task (one strategy's budget): {per_task['no sharing']} "
              f"(no sharing, one strategy), {per_task['sharing']} (sharing, two strategies); "
              f"{budget['epochs']} epochs at most (patience 3), lr searched over [1e-3, 1e-2], concurrency 2; the no-sharing "
              f"front over {budget['repeats']} seeds (* : beyond noise, t-test at 5 %)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = common.parser(__doc__).parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        for label, case in CASES.items():
            rows.append(run_case(label, case, args.quick, store))
            print(f"{label}: done", flush=True)
    result = {"machine": common.machine(), "quick": args.quick, "rows": rows}
    print(common.write("reference_fairness", markdown(result), result, args.out))


if __name__ == "__main__":
    main()
