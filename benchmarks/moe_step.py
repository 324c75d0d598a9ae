"""Samples per second of one training step (forward + backward) of every mixture-of-experts strategy.

Each strategy is timed twice on the same weights: as built (dense experts as one batched
contraction, sparse routing dispatching only the routed rows into one batched matmul) and
with its experts replaced by a straightforward loop over experts (dense: every expert on
its rows; sparse: every expert on the rows routed to it). Figures are ratios within one
run, medians of repeats:

- ``vs loop``: loop step time / batched step time (above 1: batching pays);
- ``vs mmoe``: dense MMoE step time / this strategy's step time at the same size (above 1:
  cheaper than MMoE; sparse routing with k = 1 must be clearly above 1).

    python -m benchmarks.moe_step            # d = 100/512, 8/32 experts, batch 1024
    python -m benchmarks.moe_step --quick    # a tiny size, seconds (run by the tests)

Writes ``moe_step.md`` and ``moe_step.json`` under ``--out`` (default ``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from mtl_search_plugins.mixture_of_experts import (
    CGC,
    PLE,
    DSelectK,
    MMoE,
    OMoE,
    Switch,
    TopKMoE,
)
from torch import nn

from mtl_search import Problem, RoutedExperts, StackedMLP, Task
from mtl_search.nn.backbones import build_mlp

PROBLEM = Problem((1,), (Task("y1", "regression"), Task("y2", "regression")))


def one_expert(stacked: StackedMLP, e: int, h: torch.Tensor) -> torch.Tensor:
    """Expert ``e`` of a StackedMLP on rows ``h``, one plain matmul per layer."""
    last = len(stacked.layers) - 1
    for i, layer in enumerate(stacked.layers):
        h = h @ layer.weight[e]
        if layer.bias is not None:
            h = h + layer.bias[e]
        if i < last or stacked.activate_output:
            h = stacked.activation(h)
    return h


class LoopedMLP(nn.Module):
    """A StackedMLP computed expert by expert (the reference): same parameters, same ``(n, rows, out)`` result."""

    def __init__(self, stacked: StackedMLP):
        super().__init__()
        self.stacked = stacked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.stacked.layers[0].weight.shape[0]
        return torch.stack([one_expert(self.stacked, e, x if x.dim() == 2 else x[e]) for e in range(n)])


class LoopedRoutedExperts(nn.Module):
    """Routed experts computed expert by expert on the rows routed to each (the reference)."""

    def __init__(self, routed: RoutedExperts):
        super().__init__()
        self.stacked, self.n = routed.experts, routed.n

    def forward(self, rows: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        out = rows.new_zeros(rows.shape[0], self.stacked.layers[-1].weight.shape[-1])
        for e in range(self.n):
            index = (expert == e).nonzero().squeeze(-1)
            if len(index):
                out = out.index_copy(0, index, one_expert(self.stacked, e, rows[index]))
        return out


def with_loop_experts(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (same weights) whose experts run as a Python loop over experts."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, RoutedExperts):
                setattr(parent, name, LoopedRoutedExperts(child))
            elif isinstance(child, StackedMLP):
                setattr(parent, name, LoopedMLP(child))
    return model


def configurations(d: int, n: int) -> list[tuple[str, Any, dict[str, Any]]]:
    """(label, strategy, knobs) at input width d with n experts of one d x d layer (n in total for CGC/PLE)."""
    dense = {"expert_width": d, "expert_depth": 1, "tower_width": 8}
    split = {"shared_experts": n // 2, "experts_per_task": n // 4, **dense}
    topk = {"experts": n, "noise": True, "importance_weight": 0.01, "load_weight": 0.01, "gates": "shared", "layers": 1, **dense}
    return [
        ("mmoe", MMoE(), {"experts": n, **dense}),
        ("omoe", OMoE(), {"experts": n, **dense}),
        ("cgc", CGC(), split),
        ("ple (2 levels)", PLE(), {"levels": 2, **split}),
        ("topk_moe k=1", TopKMoE(), {"k": 1, **topk}),
        ("topk_moe k=2", TopKMoE(), {"k": 2, **topk}),
        # an FFN expert d -> d/2 -> d holds as many weights as one d x d dense expert
        ("switch cf=1.0", Switch(), {"experts": n, "capacity_factor": 1.0, "alpha": 0.01, "z_loss": 0.0, "layers": 1,
                                     "expert_width": d // 2, "tower_width": 8}),
        ("dselect_k k=2", DSelectK(), {"experts": n, "k": 2, "gate": "static", "entropy": 0.01, "gamma": 1.0, **dense}),
    ]


def step_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds of one forward + backward pass of the summed task losses plus the auxiliary loss."""
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss = sum(nn.functional.mse_loss(out[t].squeeze(-1), y) for t in out) + model.regularization()
    loss.backward()
    return time.perf_counter() - start


def measure(d: int, n: int, batch: int, repeats: int) -> list[dict[str, Any]]:
    """Median step time, batched and looped, of every configuration at one size (interleaved repeats)."""
    torch.manual_seed(0)
    x, y = torch.randn(batch, d), torch.randn(batch)
    problem = Problem((d,), PROBLEM.tasks)
    backbone = build_mlp((d,), depth=1, width=d)
    rows = []
    for label, strategy, knobs in configurations(d, n):
        batched = strategy.build(problem, backbone, knobs).train()
        looped = with_loop_experts(batched).train()
        times: dict[str, list[float]] = {"batched": [], "loop": []}
        for model in (batched, looped):  # warm-up
            step_seconds(model, x, y)
        for _ in range(repeats):
            times["batched"].append(step_seconds(batched, x, y))
            times["loop"].append(step_seconds(looped, x, y))
        rows.append({"strategy": label, "d": d, "experts": n, "batch": batch,
                     "batched_s": statistics.median(times["batched"]), "loop_s": statistics.median(times["loop"])})
        print(f"{label} d={d} experts={n}: {rows[-1]['batched_s']:.4f}s batched, {rows[-1]['loop_s']:.4f}s loop", file=sys.stderr, flush=True)
    mmoe = next(r["batched_s"] for r in rows if r["strategy"] == "mmoe")
    for r in rows:
        r["samples_per_s"] = batch / r["batched_s"]
        r["vs_loop"] = r["loop_s"] / r["batched_s"]
        r["vs_mmoe"] = mmoe / r["batched_s"]
    return rows


def markdown(rows: list[dict[str, Any]], machine: str) -> str:
    lines = [f"Training step (forward + backward), batch {rows[0]['batch']}, {machine}; medians of repeats.", "",
             "| strategy | d | experts | samples/s | vs loop | vs mmoe |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['strategy']} | {r['d']} | {r['experts']} | {r['samples_per_s']:,.0f} | {r['vs_loop']:.2f}x | {r['vs_mmoe']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one tiny size and few repeats (seconds)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per model (default 5; 3 with --quick)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes, batch, repeats = ([(16, 4)], 64, 3) if args.quick else ([(100, 8), (100, 32), (512, 8), (512, 32)], 1024, 5)
    repeats = args.repeats or repeats
    rows = [row for d, n in sizes for row in measure(d, n, batch, repeats)]
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, machine)
    (args.out / "moe_step.md").write_text(table)
    (args.out / "moe_step.json").write_text(json.dumps({"machine": machine, "quick": args.quick, "rows": rows}, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
