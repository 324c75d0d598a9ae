"""Serving latency of a front model: eager ``predict``, TorchScript and ONNX Runtime, batch 1 and 256, one thread.

For one strategy of each built-in family, a small and a large model (backbone width and
depth) on a table like the contract table (numeric columns with blanks, a text category);
each is exported as ``mtl-search export`` does (checked against ``predict`` within 1e-5) and
timed on the same rows: rows/s and p50/p99 latency of one call. A family whose model is
refused by the export gets a row for eager ``predict`` only. Latency does not depend on the
weights, so the models are built untrained.

    python -m benchmarks.serving [--quick]

Writes benchmarks/results/serving.md and .json.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.common import machine, parser, write

STRATEGIES = ["hard_sharing", "mmoe", "ple", "cross_stitch", "mtan", "adashare", "lasem", "esmm", "branching", "topk_moe"]
SIZES = {"small": {"width": 32, "depth": 2}, "large": {"width": 512, "depth": 4}}  # backbone (and the strategy's own) widths, backbone depth
BATCHES = (1, 256)


def build(name: str, size: dict[str, int], directory: Path) -> Any:
    """An untrained model of strategy ``name`` at backbone ``size`` on the contract table (a funnel table for a funnel strategy)."""
    from mtl_search.data.tables import SplitSpec, TableSpec, load_table
    from mtl_search.nn.create import build_backbone, create_model
    from mtl_search.registry import load_registry
    from mtl_search.testing import FUNNEL_TABLE_TASKS, TABLE_TASKS, contract_table

    registry = load_registry()
    strategy = registry.strategies[name]
    kind = next(k for k in registry.backbones.values() if strategy.supports(k.name) and (k.input_ranks is None or 1 in k.input_ranks))
    funnel = name in ("esmm", "aitm")
    path = contract_table(directory, rows=600, funnel=funnel)
    data = load_table(TableSpec("csv", path, split=SplitSpec(val=0.25, test=0.25)), FUNNEL_TABLE_TASKS if funnel else TABLE_TASKS)
    params = {k: size.get(k, knob.smallest()) for k, knob in kind.knobs.items()}
    backbone = build_backbone(kind, data.problem, params)
    context = {**params, **backbone.params, "depth": backbone.depth}
    # the strategy's own widths (experts, towers, columns) scale with the backbone's
    knobs = {k: size["width"] if "width" in k else knob.smallest(context) for k, knob in strategy.knobs.items()}
    return create_model(data.problem, strategy, kind, knobs, params).eval(), path


def latencies(call: Callable[[], Any], seconds: float, at_least: int) -> list[float]:
    """Seconds of each call, after a warm-up, for ``seconds`` of calls and at least ``at_least`` of them."""
    for _ in range(3):
        call()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < at_least or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(quick: bool) -> dict[str, Any]:
    from mtl_search.data.tables import read_feature_columns
    from mtl_search.errors import MtlSearchError
    from mtl_search.results.export import export_model, run_exported
    from mtl_search.results.saved_models import predict

    torch.set_num_threads(1)
    strategies = ["hard_sharing", "topk_moe"] if quick else STRATEGIES  # quick: one export, one refusal
    sizes = {"small": SIZES["small"]} if quick else SIZES
    seconds, at_least = (0.05, 3) if quick else (1.0, 20)
    results = []
    for name in strategies:
        for size_name, size in sizes.items():
            with tempfile.TemporaryDirectory() as tmp:
                model, table = build(name, size, Path(tmp))
                parameters = sum(p.numel() for p in model.parameters())
                x = read_feature_columns(table, model.problem.features)
                rows = torch.cat([x] * (max(BATCHES) // len(x) + 1))[: max(BATCHES)]
                runtimes: dict[str, Callable[[torch.Tensor], Any]] = {"eager predict": lambda b: predict(model, b)}
                refused = None
                for fmt in ("torchscript", "onnx"):
                    try:
                        target = export_model(model, Path(tmp) / fmt, fmt)[0]
                    except MtlSearchError as exc:
                        refused = str(exc)
                        continue
                    run = run_exported(target, fmt)
                    runtimes["TorchScript" if fmt == "torchscript" else "onnxruntime"] = lambda b, run=run: run(b.numpy())
                for runtime, call in runtimes.items():
                    for batch in BATCHES:
                        times = latencies(lambda: call(rows[:batch]), seconds, at_least)
                        results.append({"strategy": name, "size": size_name, "parameters": parameters, "runtime": runtime, "batch": batch,
                                        "calls": len(times), "rows_per_s": batch * len(times) / sum(times),
                                        "p50_ms": 1e3 * statistics.median(times), "p99_ms": 1e3 * percentile(times, 0.99)})
                if refused:
                    results.append({"strategy": name, "size": size_name, "parameters": parameters, "refused": refused})
    return {"machine": machine(), "threads": 1, "results": results}


def markdown(data: dict[str, Any]) -> str:
    lines = ["# Serving latency: eager predict, TorchScript, onnxruntime (one thread)", "",
             f"Machine: {data['machine']} (shared with other jobs: absolute figures move between runs; compare within a row group).", "",
             "| strategy | size (params) | runtime | batch | rows/s | p50 ms | p99 ms |", "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in data["results"]:
        if "refused" in r:
            lines.append(f"| {r['strategy']} | {r['size']} ({r['parameters']:,}) | export refused | | | | |")
            continue
        lines.append(f"| {r['strategy']} | {r['size']} ({r['parameters']:,}) | {r['runtime']} | {r['batch']} | {r['rows_per_s']:,.0f} | "
                     f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__).parse_args(argv)
    data = measure(args.quick)
    print(write("serving", markdown(data), data, args.out))


if __name__ == "__main__":
    main()
