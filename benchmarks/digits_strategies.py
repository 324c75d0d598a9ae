"""Every strategy of search_spaces/digits.yaml with fixed knobs on multi_digits: test accuracy per task and epoch cost.

Run ``python -m benchmarks.digits_strategies`` (``--quick``: less data, fewer epochs). Writes
``benchmarks/results/digits_strategies.md`` and ``.json``. Epoch times are medians over
the trained epochs, reported as ratios to hard sharing's within the same run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from mtl_search_plugins.attention import MTAN
from mtl_search_plugins.datasets import multi_digits
from mtl_search_plugins.hard_sharing import HardSharing
from mtl_search_plugins.soft_sharing import MRN, CrossStitch, L2Soft

from mtl_search import TrainConfig, Trainer
from mtl_search.nn.backbones import build_conv
from mtl_search.training.weighting import Equal

RUNS = [
    (HardSharing(), {"shared_depth": 2, "tower_width": 32}),
    (HardSharing(), {"shared_depth": 0, "tower_width": 32}),
    (CrossStitch(), {"stitch_blocks": "all", "alpha_per_channel": False, "alpha_lr_multiplier": 10.0, "tower_width": 32}),
    (L2Soft(), {"penalty": 1e-2, "tied_blocks": "all", "tower_width": 32}),
    (MRN(), {"task_width": 32, "penalty_weight": 1e-3}),
    (MTAN(), {"tower_width": 32}),
]
OUT = Path(__file__).parent / "results"


class EpochTimer(Trainer):
    """The trainer, timing each training epoch."""

    def train_epoch(self, *args, **kwargs):
        start = time.perf_counter()
        result = super().train_epoch(*args, **kwargs)
        self.epoch_seconds.append(time.perf_counter() - start)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1500 samples, 2 epochs")
    args = parser.parse_args()
    samples, epochs = (1500, 2) if args.quick else (6000, 8)
    torch.set_num_threads(1)
    data = multi_digits(samples=samples, overlap=0.25, shift=1, noise=0.05, seed=0, tasks=["left", "right"], val=0.15, test=0.15)
    rows = []
    for strategy, params in RUNS:
        torch.manual_seed(0)
        model = strategy.build(data.problem, build_conv(data.problem.input_shape, channels=[16, 32]), params)
        trainer = EpochTimer(data, TrainConfig(epochs=epochs, batch_size=128, lr=3e-3, patience=3, seed=0), Equal(data.problem.task_names))
        trainer.epoch_seconds = []
        trainer.fit(model)
        test = trainer.evaluate(model, data.test).metrics
        rows.append({"strategy": strategy.name, "params": params, "test": test, "epochs": len(trainer.history),
                     "epoch_seconds": statistics.median(trainer.epoch_seconds), "parameters": model.inference_parameters()})
    base = rows[0]["epoch_seconds"]
    lines = [f"multi_digits (samples {samples}, overlap 0.25, shift 1, noise 0.05), conv backbone channels [16, 32], "
             f"{epochs} epochs max, batch 128, lr 3e-3, 1 thread",
             "", "| strategy | knobs | test left | test right | parameters | epoch time / hard_sharing(2) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['strategy']} | {json.dumps(row['params'])} | {row['test']['left']:.3f} | {row['test']['right']:.3f} | "
                     f"{row['parameters']} | {row['epoch_seconds'] / base:.2f} |")
    OUT.mkdir(exist_ok=True)
    name = "digits_strategies" + ("_quick" if args.quick else "")
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    (OUT / f"{name}.json").write_text(json.dumps(rows, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
