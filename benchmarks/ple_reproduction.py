"""PLE (Tang et al., RecSys 2020) synthetic study: MTL gain over single-task models per task, and the seesaw.

On the MMoE synthetic data set at several task correlations, each multi-task model is
compared with single-task models of the same shape: hard sharing with no shared block
(one private 113-unit layer and tower per task; trained jointly, but with no parameter in
common the tasks do not interact). Gain of a model on a task = (single-task test MSE - the
model's) / single-task test MSE, in percent, mean over ``--runs`` runs (fresh data and
initialisation; every model sees the same draws). A seesaw = one task gains while the other
loses. The multi-task models: hard sharing (one shared 113-unit layer), MMoE, CGC and PLE
(experts of 16 units, towers of 8) -- CGC and PLE only where a plugin registers them;
the table says which were missing.

    python -m benchmarks.ple_reproduction [--quick] [--runs N]
"""
from __future__ import annotations

from mtl_search.registry import load_registry

from .common import describe, machine, parser, write
from .synthetic_study import Model, Training, test_losses

NAME = "ple_reproduction"
CORRELATIONS = (0.0, 0.5, 0.9)
EXPERTS = {"expert_width": 16, "expert_depth": 1, "tower_width": 8}
SINGLE_TASK = Model("single-task", "hard_sharing", {"shared_depth": 0, "tower_width": 8}, width=113)
MODELS = (
    Model("hard sharing", "hard_sharing", {"shared_depth": 1, "tower_width": 8}, width=113),
    Model("MMoE", "mmoe", {"experts": 8, **EXPERTS}),
    # 4 experts per task + 4 shared = MMoE's 8 per task's gate
    Model("CGC", "cgc", {"experts_per_task": 4, "shared_experts": 4, **EXPERTS}),
    Model("PLE", "ple", {"experts_per_task": 4, "shared_experts": 4, "levels": 2, **EXPERTS}),
)


def run(runs: int, training: Training) -> dict:
    registry = load_registry()
    models = [m for m in MODELS if m.strategy in registry.strategies]
    missing = [m.strategy for m in MODELS if m.strategy not in registry.strategies]
    load_before = machine()
    raw: dict[str, dict[float, list[dict[str, float]]]] = {m.label: {p: [] for p in CORRELATIONS} for m in (SINGLE_TASK, *models)}
    for seed in range(runs):
        for p in CORRELATIONS:
            for model in (SINGLE_TASK, *models):
                raw[model.label][p].append(test_losses(registry, model, p, seed, training)["test"])
    return {"machine_before": load_before, "machine_after": machine(), "runs": runs, "training": training.__dict__,
            "models": {m.label: {"strategy": m.strategy, "knobs": m.knobs, "width": m.width} for m in (SINGLE_TASK, *models)},
            "missing": missing, "test_mse": raw, **summarise(raw)}


def summarise(raw: dict[str, dict[float, list[dict[str, float]]]]) -> dict:
    """Per model, correlation and task: the gain of every run over the single-task models of that run, its mean, median and spread; the seesaw."""
    gains: dict[str, dict[float, dict[str, dict[str, float]]]] = {}
    for label, by_p in raw.items():
        if label == SINGLE_TASK.label:
            continue
        gains[label] = {}
        for p, runs in by_p.items():
            per_run = [{t: 100 * (single[t] - mtl[t]) / single[t] for t in single} for single, mtl in zip(raw[SINGLE_TASK.label][p], runs)]
            gains[label][p] = {t: describe([r[t] for r in per_run]) for t in per_run[0]}
    # judged on the median: one run that fails to train (a gain of -500 %) must not decide the sign
    seesaw = {label: {p: min(g["median"] for g in by_task.values()) < 0 < max(g["median"] for g in by_task.values())
                      for p, by_task in by_p.items()} for label, by_p in gains.items()}
    return {"gain_percent": gains, "seesaw": seesaw}


def markdown(result: dict) -> str:
    t = result["training"]
    tasks = sorted(next(iter(next(iter(result["gain_percent"].values())).values())))
    lines = [
        f"MTL gain over single-task models, % of the single-task test MSE (positive = better): median over {result['runs']} runs, "
        f"then mean ± standard deviation; {t['samples']:,} rows, d = {t['input_dim']}, AdamW lr {t['lr']}, up to {t['epochs']} epochs "
        "with early stopping. Seesaw: one task's median gain positive, the other's negative.",
        f"Machine: {result['machine_before']}.",
        "",
        "| model | " + " | ".join(f"p = {p:g}: {task}" for p in CORRELATIONS for task in tasks) + " | seesaw at |",
        "| --- | " + " | ".join("---:" for _ in CORRELATIONS for _ in tasks) + " | --- |",
    ]
    for label, by_p in result["gain_percent"].items():
        cells = " | ".join(f"{g['median']:+.1f} ({g['mean']:+.0f} ± {g['std']:.0f})" for p in CORRELATIONS for g in [by_p[p][task] for task in tasks])
        where = ", ".join(f"p = {p:g}" for p in CORRELATIONS if result["seesaw"][label][p]) or "none"
        lines.append(f"| {label} | {cells} | {where} |")
    if result["missing"]:
        lines += ["", f"Not registered when this ran (no plugin provides them): {', '.join(result['missing'])}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parse = parser(__doc__)
    parse.add_argument("--runs", type=int, default=10)
    args = parse.parse_args(argv)
    runs, training = (2, Training(samples=300, epochs=2)) if args.quick else (args.runs, Training())
    result = run(runs, training)
    print(write(NAME, markdown(result), result, args.out))


if __name__ == "__main__":
    main()
