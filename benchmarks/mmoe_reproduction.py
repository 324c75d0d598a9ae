"""MMoE (Ma et al., KDD 2018) synthetic study: shared-bottom, OMoE and MMoE at task correlations 0.5, 0.9 and 1.0.

The paper's sizes (docs/methods.md, "MMoE and OMoE"): d = 100; OMoE and MMoE with 8 experts of one
layer of 16 units and towers of 8 units; the shared-bottom baseline is hard sharing with
one shared layer of 113 units and towers of 8. Each (model, correlation) is trained
``--runs`` times, each run on a fresh draw of the data (its own seed) with a fresh
initialisation. Reported: mean and standard deviation over runs of the test MSE averaged
over the two tasks, the parameter counts, and which of the paper's qualitative findings hold.

    python -m benchmarks.mmoe_reproduction [--quick] [--runs N] [--epochs E] [--patience P]
"""
from __future__ import annotations

import statistics
from typing import Any

from mtl_search.registry import load_registry

from .common import describe, machine, parser, write
from .synthetic_study import Model, Training, build, test_losses

NAME = "mmoe_reproduction"
CORRELATIONS = (0.5, 0.9, 1.0)
MODELS = (
    Model("shared-bottom", "hard_sharing", {"shared_depth": 1, "tower_width": 8}, width=113),
    Model("OMoE", "omoe", {"experts": 8, "expert_width": 16, "expert_depth": 1, "tower_width": 8}),
    Model("MMoE", "mmoe", {"experts": 8, "expert_width": 16, "expert_depth": 1, "tower_width": 8}),
)
PAPER_PARAMS = 13_056


def parameter_counts(registry: Any) -> dict[str, dict[str, int]]:
    """Each model's parameters: all, and the part the paper seems to count (weights of the shared layers and the towers' first layer, no biases, no gates, no outputs)."""
    entry = registry.datasets["synthetic_correlated"]
    problem = entry.factory(**{**entry.options, "samples": 20}).problem
    counts = {}
    for model in MODELS:
        net = build(registry, model, problem)
        paper = sum(p.numel() for name, p in net.named_parameters()
                    if name.endswith("weight") and "gate" not in name and not _is_output_layer(name, net))
        counts[model.label] = {"all": net.inference_parameters(), "weights_without_gates_and_outputs": paper,
                               "gates": sum(p.numel() for name, p in net.named_parameters() if "gate" in name)}
    return counts


def _is_output_layer(name: str, net: Any) -> bool:
    """Whether ``name`` is the last Linear of a tower (the 8 -> 1 output layer)."""
    if not name.startswith("towers."):
        return False
    task = name.split(".")[1]
    last = [n for n, _ in net.towers[task].named_parameters() if n.endswith("weight")][-1]
    return name == f"towers.{task}.{last}"


def findings(summary: dict[str, dict[float, dict[str, float]]]) -> list[dict[str, Any]]:
    """The paper's qualitative findings (docs/methods.md, "The MMoE synthetic benchmark"), each checked on the means and spreads."""
    sb, omoe, mmoe = (summary[m.label] for m in MODELS)
    low, high = CORRELATIONS[0], CORRELATIONS[-1]

    def loss_range(model: dict) -> float:
        return max(model[p]["mean"] for p in CORRELATIONS) - min(model[p]["mean"] for p in CORRELATIONS)

    gap = {p: omoe[p]["mean"] - mmoe[p]["mean"] for p in CORRELATIONS}
    return [
        {"finding": "every model does better as the correlation rises",
         "holds": all(m[a]["mean"] >= m[b]["mean"] for m in (sb, omoe, mmoe) for a, b in zip(CORRELATIONS, CORRELATIONS[1:]))},
        {"finding": "MMoE's loss changes least with the correlation",
         "holds": loss_range(mmoe) <= min(loss_range(sb), loss_range(omoe))},
        {"finding": "both MoE models beat shared-bottom at every correlation",
         "holds": all(m[p]["mean"] < sb[p]["mean"] for m in (omoe, mmoe) for p in CORRELATIONS)},
        {"finding": f"OMoE approaches MMoE only when the correlation is {high:g} (their gap is smallest there, and OMoE is behind at {low:g})",
         "holds": gap[high] <= min(gap.values()) and gap[low] > 0},
        {"finding": "shared-bottom's loss varies most across runs (largest spread at every correlation)",
         "holds": all(sb[p]["std"] >= max(omoe[p]["std"], mmoe[p]["std"]) for p in CORRELATIONS)},
    ]


def run(runs: int, training: Training) -> dict:
    registry = load_registry()
    load_before = machine()
    raw: dict[str, dict[float, list[float]]] = {m.label: {p: [] for p in CORRELATIONS} for m in MODELS}
    for seed in range(runs):
        for p in CORRELATIONS:
            for model in MODELS:  # the same draw of the data for every model in a run
                result = test_losses(registry, model, p, seed, training)
                raw[model.label][p].append(statistics.fmean(result["test"].values()))
    return {"machine_before": load_before, "machine_after": machine(), "runs": runs, "training": training.__dict__,
            "params": parameter_counts(registry), "paper_params": PAPER_PARAMS, "test_mse": raw, **summarise(raw)}


def summarise(raw: dict[str, dict[float, list[float]]]) -> dict:
    """Mean, spread and median per model and correlation; paired wins (runs share their data draw); the findings."""
    summary = {label: {p: describe(values) for p, values in by_p.items()} for label, by_p in raw.items()}
    pairs = [(a.label, b.label) for a, b in ((MODELS[2], MODELS[0]), (MODELS[2], MODELS[1]), (MODELS[1], MODELS[0]))]
    wins = {f"{a} < {b}": {p: sum(x < y for x, y in zip(raw[a][p], raw[b][p])) for p in CORRELATIONS} for a, b in pairs}
    return {"summary": summary, "paired_wins": wins, "findings": findings(summary)}


def markdown(result: dict) -> str:
    t = result["training"]
    lines = [
        f"Test MSE (mean of the two tasks), mean ± standard deviation over {result['runs']} runs (fresh data and initialisation "
        f"each); {t['samples']:,} rows (70/15/15 split), d = {t['input_dim']}, AdamW lr {t['lr']}, batch {t['batch_size']}, "
        f"up to {t['epochs']} epochs with early stopping (patience {t['patience']}).",
        f"Machine: {result['machine_before']}.",
        "",
        "| model | parameters (all) | paper-style count | " + " | ".join(f"p = {p:g}" for p in CORRELATIONS) + " |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in CORRELATIONS) + " |",
    ]
    for label, by_p in result["summary"].items():
        params = result["params"][label]
        cells = " | ".join(f"{by_p[p]['mean']:.4f} ± {by_p[p]['std']:.4f}" for p in CORRELATIONS)
        lines.append(f"| {label} | {params['all']:,} | {params['weights_without_gates_and_outputs']:,} | {cells} |")
    lines += ["", f"Paper-style count: weights of the experts (or shared layer) and of the towers' hidden layer, without biases, "
              f"gates or output layers; the paper's figure is {result['paper_params']:,} for MMoE.", "",
              "| paper finding | holds here |", "| --- | --- |"]
    lines += [f"| {f['finding']} | {'yes' if f['holds'] else 'no'} |" for f in result["findings"]]
    lines += ["", "Medians, and paired comparisons (in each run every model trains on the same draw of the data, whose difficulty "
              "varies far more between draws than the models differ):", "",
              "| | " + " | ".join(f"p = {p:g}" for p in CORRELATIONS) + " |", "| --- | " + " | ".join("---:" for _ in CORRELATIONS) + " |"]
    lines += [f"| median {label} | " + " | ".join(f"{by_p[p]['median']:.4f}" for p in CORRELATIONS) + " |" for label, by_p in result["summary"].items()]
    lines += [f"| runs with {pair.replace(' < ', ' better than ')} | " + " | ".join(f"{by_p[p]} of {result['runs']}" for p in CORRELATIONS) + " |"
              for pair, by_p in result["paired_wins"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parse = parser(__doc__)
    parse.add_argument("--runs", type=int, default=10)
    parse.add_argument("--epochs", type=int, default=Training.epochs, help="the training budget: most epochs")
    parse.add_argument("--patience", type=int, default=Training.patience, help="early stopping's patience")
    args = parse.parse_args(argv)
    training = Training(epochs=args.epochs, patience=args.patience)
    runs, training = (2, Training(samples=300, epochs=2, input_dim=100)) if args.quick else (args.runs, training)
    result = run(runs, training)
    print(write(NAME, markdown(result), result, args.out))


if __name__ == "__main__":
    main()
