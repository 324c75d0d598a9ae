"""Selection bias on the funnel generator: error of each strategy's CVR on the rows without a click.

``synthetic_funnel`` (3000 impressions, 100 items; item quality drives clicks and
conversions) with an MLP of depth 1 and width 16 and item embeddings of 4, 8 epochs,
batch 128, lr 0.01, equal weighting. For each seed and strategy: the mean absolute
difference between the predicted P(convert | click) and the true CVR on the test rows
without a click (where no strategy ever sees a conversion label), and the mean prediction.

    python -m benchmarks.funnel_bias            # seeds 0, 1, 2 (writes benchmarks/results/funnel_bias.{json,md})
    python -m benchmarks.funnel_bias --quick    # seed 0, esmm and hard_sharing
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from mtl_search_plugins.funnel import FUNNEL_DEFAULTS, generate_funnel, synthetic_funnel

from mtl_search import TrainConfig, Trainer, predict, split_rows
from mtl_search.nn.create import create_model
from mtl_search.registry import load_registry
from mtl_search.training.weighting import Equal

KNOBS = {
    "esmm": {"shared_depth": 0, "tower_width": 8},
    "aitm": {"shared_depth": 0, "tower_width": 8, "alpha": 0.6},
    "hard_sharing": {"shared_depth": 0, "tower_width": 8},  # separate CTR and CVR networks; CVR learned on clicked rows
    "mmoe": {"experts": 3, "expert_width": 16, "expert_depth": 1, "tower_width": 8},
}
RESULTS = Path(__file__).with_name("results")


def cvr_error(name: str, seed: int, samples: int = 3000, items: int = 100, epochs: int = 8) -> dict[str, float]:
    """Mean |predicted CVR - true CVR| and mean predicted CVR on the unclicked test rows, and the true mean."""
    registry = load_registry()
    options = {**FUNNEL_DEFAULTS, "samples": samples, "items": items, "seed": seed}
    data = synthetic_funnel(**options)
    truth = generate_funnel(**{k: v for k, v in options.items() if k not in ("val", "test")})
    rows = split_rows(samples, options["val"], options["test"], seed)[2]
    true_cvr = torch.from_numpy(truth["true_cvr"]).float()[rows]
    unclicked = torch.from_numpy(truth["clicked"])[rows] == 0
    torch.manual_seed(0)
    model = create_model(data.problem, registry.strategies[name], registry.backbones["mlp"], KNOBS[name],
                         {"depth": 1, "width": 16}, {"encoding": "embedding", "embedding_dim": 4})
    Trainer(data, TrainConfig(epochs=epochs, batch_size=128, lr=1e-2, patience=epochs), Equal(data.problem.task_names)).fit(model)
    p = predict(model, data.test.x)["converted"][unclicked]
    return {"mae": float((p - true_cvr[unclicked]).abs().mean()), "mean_prediction": float(p.mean()),
            "true_mean": float(true_cvr[unclicked].mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds, names = ([0], ["esmm", "hard_sharing"]) if args.quick else ([0, 1, 2], list(KNOBS))
    results = {name: {seed: cvr_error(name, seed) for seed in seeds} for name in names}
    lines = ["| strategy | " + " | ".join(f"seed {s}: MAE (mean pred.)" for s in seeds) + " |",
             "| --- |" + " --- |" * len(seeds)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{results[name][s]['mae']:.3f} ({results[name][s]['mean_prediction']:.3f})" for s in seeds) + " |")
    lines.append("| true CVR | " + " | ".join(f"(mean {results[names[0]][s]['true_mean']:.3f})" for s in seeds) + " |")
    table = "\n".join(lines)
    print(table)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "funnel_bias.json").write_text(json.dumps(results, indent=2))
        (RESULTS / "funnel_bias.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
