"""GPU check: every registered strategy trains on CUDA with ``equal``, ``gradnorm`` and a torchjd aggregator, and a search shares GPUs.

For every registered strategy and each of the three weightings (``gradnorm`` and the
aggregator only where the strategy declares shared parameters), the strategy's own ``fit``
runs for one epoch (``epochs: 1``; a strategy with a schedule runs one epoch per phase) on
the contract data of ``mtl_search.testing`` with model, data and weighting on ``cuda``,
under bf16 autocast; a pair that fails under autocast is run again in float32, and the
table says which precision passed. Then a 4-trial search (2 at a time) with
``ray.gpus_per_trial: 0.5`` runs on a tiny synthetic space, and every trial must finish on
``cuda``. Written: ``gpu_check.md`` and ``gpu_check.json`` (steps per second, peak GPU
memory, pass/fail and the error of each failure).

    python -m benchmarks.gpu_check            # on a machine with CUDA
    python -m benchmarks.gpu_check --quick    # equal only, no search

On a machine without CUDA it exits with status 2 and "CUDA not available", writing nothing.
"""
from __future__ import annotations

import contextlib
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from mtl_search.registry import load_registry
from mtl_search.testing import small_model
from mtl_search.training.trainer import TrainConfig, Trainer

from .common import parser, write

NAME = "gpu_check"
WEIGHTINGS = ("equal", "gradnorm")
AGGREGATORS = ("upgrad", "mgda", "pcgrad")  # the first one installed is checked
BATCH = 64


class CudaUnavailable(RuntimeError):
    """The check needs a CUDA device."""


def require_cuda(available: bool | None = None) -> None:
    """Raise ``CudaUnavailable`` ("CUDA not available") unless torch sees a CUDA device."""
    if not (torch.cuda.is_available() if available is None else available):
        raise CudaUnavailable("CUDA not available: benchmarks.gpu_check trains on a GPU; run it on a machine with CUDA "
                              "(torch.cuda.is_available() is False here)")


def pairs(registry: Any, quick: bool = False) -> list[tuple[str, str]]:
    """(strategy, weighting) pairs to check: every strategy with equal, gradnorm and the first installed aggregator
    (``quick``: equal only); gradnorm and the aggregator only where the strategy declares shared parameters."""
    aggregator = next((a for a in AGGREGATORS if a in registry.weightings), None)
    if aggregator is None:
        raise RuntimeError(f"none of the torchjd aggregators {', '.join(AGGREGATORS)} is registered (is torchjd installed?)")
    out = []
    for name, strategy in registry.strategies.items():
        for weighting in (("equal",) if quick else (*WEIGHTINGS, aggregator)):
            cls = registry.weightings[weighting]
            if cls.incompatibility(strategy) is None:
                out.append((name, weighting))
    return out


def build(registry: Any, strategy_name: str, device: str) -> tuple[Any, Any, Any]:
    """The strategy, its smallest model on ``device`` (``mtl_search.testing.small_model``), and the contract data set."""
    strategy = registry.strategies[strategy_name]
    model, data = small_model(strategy, registry.backbones)
    return strategy, model.to(device), data


def train_one(registry: Any, strategy_name: str, weighting_name: str, device: str, autocast: bool) -> dict[str, Any]:
    """One epoch of ``Strategy.fit``; steps per second and peak memory on ``device``."""
    strategy, model, data = build(registry, strategy_name, device)
    weighting = registry.weightings[weighting_name](data.problem.task_names)
    trainer = Trainer(data, TrainConfig(epochs=1, patience=1, batch_size=BATCH, lr=1e-3, device=device), weighting)
    steps = 0
    backward = weighting.backward

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        nonlocal steps
        steps += 1
        return backward(*args, **kwargs)

    weighting.backward = counted  # type: ignore[method-assign]
    on_cuda = device.startswith("cuda")
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    precision = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if autocast and on_cuda else contextlib.nullcontext()
    start = time.perf_counter()
    with precision:
        fitted = strategy.fit(model, trainer)
    if on_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    losses = trainer.evaluate(fitted, data.test).losses
    if not all(math.isfinite(v) for v in losses.values()):
        raise FloatingPointError(f"non-finite test losses {losses}")
    return {"steps": steps, "steps_per_s": steps / seconds if seconds > 0 else float("nan"),
            "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if on_cuda else None}


def check_pair(registry: Any, strategy_name: str, weighting_name: str, device: str) -> dict[str, Any]:
    """bf16 autocast first (on CUDA), float32 if that fails; the row of the table."""
    row: dict[str, Any] = {"strategy": strategy_name, "weighting": weighting_name}
    errors = []
    for precision in ("bf16", "fp32") if device.startswith("cuda") else ("fp32",):
        try:
            row.update(train_one(registry, strategy_name, weighting_name, device, autocast=precision == "bf16"))
            row.update(passed=True, precision=precision)
            break
        except Exception as error:  # the table records every failure; the check goes on
            errors.append(f"{precision}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300])
            row["traceback_" + precision] = traceback.format_exc(limit=6)
    else:
        row.update(passed=False, precision=None, steps=0, steps_per_s=None, peak_mb=None)
    row["errors"] = errors
    return row


SEARCH_SPACE = {
    "experiment": "gpu_check",
    "data": {"dataset": "synthetic_correlated", "options": {"samples": 400, "input_dim": 12, "seed": 0}},
    "backbone": {"kind": "mlp", "depth": 2, "width": 16},
    "strategies": {"hard_sharing": {}, "mmoe": {"experts": {"int": [2, 3]}, "expert_width": 8}},
    "training": {"epochs": 2, "batch_size": 64, "lr": 0.005},
    "search": {"trials": 4, "concurrency": 2, "seed": 0},
    "ray": {"gpus_per_trial": 0.5, "cpus_per_trial": 1},
}


def check_search(directory: Path, raw_space: dict[str, Any] = SEARCH_SPACE) -> dict[str, Any]:
    """A 4-trial search, two trials per GPU at a time (``gpus_per_trial: 0.5``): every trial finishes on cuda."""
    from mtl_search.search.run import RunOptions, run_search
    from mtl_search.search.space import parse_space

    space = parse_space(raw_space)
    start = time.perf_counter()
    record = run_search(space, RunOptions(tracking_uri=f"sqlite:///{directory}/mlflow.db"))
    seconds = time.perf_counter() - start
    statuses = [t.status for t in record.trials]
    devices = [t.placement.get("device", "") for t in record.trials]
    passed = len(record.trials) == 4 and all(s == "finished" for s in statuses) and all(d.startswith("cuda") for d in devices)
    return {"passed": passed, "trials": len(record.trials), "statuses": statuses, "devices": devices, "seconds": seconds,
            "errors": [t.error for t in record.trials if t.error]}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"GPU check on {result['device']} (torch {result['torch']}, CUDA {result['cuda']}): one epoch of each strategy's fit, "
             f"batch {BATCH}, bf16 autocast (float32 where autocast failed).", "",
             "| strategy | weighting | passed | precision | steps/s | peak GPU memory (MiB) | errors |",
             "| --- | --- | --- | --- | ---: | ---: | --- |"]
    for r in result["rows"]:
        rate = f"{r['steps_per_s']:.1f}" if r.get("steps_per_s") else "-"
        peak = f"{r['peak_mb']:.1f}" if r.get("peak_mb") is not None else "-"
        errors = "; ".join(r["errors"]).replace("|", "/") or ""
        lines.append(f"| {r['strategy']} | {r['weighting']} | {'yes' if r['passed'] else 'NO'} | {r['precision'] or '-'} | {rate} | {peak} | {errors} |")
    search = result.get("search")
    if search:
        lines += ["", f"Search, 4 trials with gpus_per_trial 0.5 (2 at a time): {'passed' if search['passed'] else 'FAILED'}; "
                  f"statuses {', '.join(search['statuses'])}; devices {', '.join(search['devices'])}; {search['seconds']:.0f} s."]
    passed = sum(r["passed"] for r in result["rows"])
    lines += ["", f"{passed} of {len(result['rows'])} strategy x weighting pairs passed."]
    return "\n".join(lines) + "\n"


def run(quick: bool, search: bool = True) -> dict[str, Any]:
    require_cuda()
    registry = load_registry()
    rows = [check_pair(registry, s, w, "cuda") for s, w in pairs(registry, quick)]
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
                              "quick": quick, "rows": rows}
    if search:
        with tempfile.TemporaryDirectory() as directory:
            try:
                result["search"] = check_search(Path(directory))
            except Exception as error:
                result["search"] = {"passed": False, "trials": 0, "statuses": [], "devices": [], "seconds": 0.0,
                                    "errors": [f"{type(error).__name__}: {error}"]}
    return result


def main(argv: list[str] | None = None) -> int:
    parse = parser(__doc__)
    parse.add_argument("--no-search", action="store_true", help="skip the 4-trial search")
    args = parse.parse_args(argv)
    try:
        result = run(args.quick, search=not (args.no_search or args.quick))
    except CudaUnavailable as error:
        print(error, file=sys.stderr)
        return 2
    print(write(NAME, markdown(result), result, args.out))
    ok = all(r["passed"] for r in result["rows"]) and result.get("search", {"passed": True})["passed"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
