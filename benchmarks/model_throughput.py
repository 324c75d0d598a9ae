"""Training step throughput (samples/s, forward + backward + optimiser step) of every registered strategy at two sizes.

The strategies come from the plugin registry, so a new family is measured without
touching this file. Each strategy is built on the first backbone kind it supports (vector
kinds first, mlp first of them) with its knobs at the low end of their ranges
(``Knob.smallest``) except widths (experts', towers' ...), which follow the
size; three tasks (regression, binary, 3-class); two sizes of backbone. One step is
``task_losses`` on a batch, their sum backward, one AdamW step and the model's
``after_step`` (a strategy with its own schedule, e.g. AdaShare's phases, is timed on this
generic step). Median of repeats of the process's CPU time per step (one torch thread, so
other jobs on a shared machine do not inflate it); the ratio column is each strategy's
throughput over hard sharing's at the same size, measured in the same run.

A second table measures image models on the ``conv`` backbone (channels ``[c, 2c]``,
``c = width / 4``; 3 x 16 x 16 inputs): hard sharing, cross-stitch and MTAN beside the
mixtures of experts with MLP experts over the pixels (``experts_on: input``) and with
experts that are copies of the backbone (``experts_on: backbone``, one vmapped call).

    python -m benchmarks.model_throughput [--quick]
"""
from __future__ import annotations

import time
from typing import Any

import torch

from mtl_search import Int, Split
from mtl_search.registry import load_registry
from mtl_search.testing import contract_problem_for
from mtl_search.training.trainer import seed_everything

from .common import machine, median_seconds, parser, write

NAME = "model_throughput"
SIZES = {"small": {"width": 32, "depth": 2, "batch": 256}, "large": {"width": 256, "depth": 4, "batch": 1024}}
QUICK_SIZES = {"small": {"width": 8, "depth": 2, "batch": 16}, "large": {"width": 16, "depth": 2, "batch": 32}}
MLP_INPUT = 100  # the synthetic benchmark's d
IMAGE_INPUT = (3, 16, 16)


def _backbone_params(kind: Any, size: dict[str, int]) -> dict[str, Any]:
    """The backbone kind's knobs at their small values, with its width/channels and depth set to the size."""
    params = {name: knob.smallest() for name, knob in kind.knobs.items()}
    for name in ("width", "channels"):
        if name in params:
            params[name] = size["width"] if name == "width" else max(4, size["width"] // 4)
    if "depth" in params:
        params["depth"] = size["depth"]
    return params


def _knob_value(name: str, knob: Any, backbone_params: dict[str, Any], size: dict[str, int]) -> Any:
    """A strategy knob's small value; a width knob (experts', towers' ...) follows the size, within its range."""
    value = knob.smallest(backbone_params)
    if name.endswith("width") and isinstance(knob, Int):
        low, high = (backbone_params.get(b, b) for b in (knob.low, knob.high))
        value = min(max(size["width"], low), high)
    return value


# image rows: (strategy, knob overrides); the experts_on pairs show what building experts from the backbone costs
IMAGE_ROWS = [("hard_sharing", {}), ("cross_stitch", {}), ("mtan", {}),
              ("mmoe", {"experts_on": "input"}), ("mmoe", {"experts_on": "backbone"}),
              ("cgc", {"experts_on": "input"}), ("cgc", {"experts_on": "backbone"})]


def _conv_params(kind: Any, size: dict[str, int]) -> dict[str, Any]:
    """The conv kind's knobs at their small values with channels [c, 2c], c = width / 4."""
    params = {name: knob.smallest() for name, knob in kind.knobs.items()}
    channels = max(4, size["width"] // 4)
    params["channels"] = [channels, 2 * channels]
    return params


def step_seconds(strategy: Any, kind: Any, size: dict[str, int], repeats: int,
                 overrides: dict[str, Any] | None = None) -> tuple[float, int]:
    """Median seconds of one training step and the model's parameter count (``overrides``: knob values to use)."""
    seed_everything(0)
    input_shape = (MLP_INPUT,) if "channels" not in kind.knobs else IMAGE_INPUT
    backbone_params = _backbone_params(kind, size) if kind.name != "conv" else _conv_params(kind, size)
    backbone = kind.build(input_shape, **backbone_params)
    problem = contract_problem_for(strategy, input_shape)  # a funnel strategy (esmm, aitm) gets the funnel problem
    context = {**backbone_params, "depth": backbone.depth}  # a knob bound may name the depth (conv derives it from channels)
    params = {name: _knob_value(name, knob, context, size) for name, knob in strategy.knobs.items()} | (overrides or {})
    model = strategy.build(problem, backbone, params)
    batch = size["batch"]
    targets = {"reg": torch.randn(batch), "bin": (torch.rand(batch) > 0.5).float(), "cls": torch.randint(0, 3, (batch,)),
               "conv": (torch.rand(batch) > 0.5).float()}
    data = Split(torch.randn(batch, *input_shape), {t: targets[t] for t in problem.task_names})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        (sum(model.task_losses(data).values()) + model.regularization()).backward()
        optimizer.step()
        model.after_step()

    return median_seconds(step, repeats, clock=time.process_time), sum(p.numel() for p in model.parameters())


def run(quick: bool) -> dict:
    torch.set_num_threads(1)
    registry = load_registry()
    sizes, repeats = (QUICK_SIZES, 2) if quick else (SIZES, 15)
    kinds = sorted(registry.backbones.values(), key=lambda k: ("channels" in k.knobs, k.name != "mlp", k.name))  # vectors first, mlp first
    rows = []
    for name, strategy in sorted(registry.strategies.items()):
        kind = next((k for k in kinds if strategy.supports(k.name)), None)
        if kind is None:
            continue
        row: dict[str, Any] = {"strategy": name, "family": strategy.family, "backbone": kind.name}
        for size_name, size in sizes.items():
            seconds, n_params = step_seconds(strategy, kind, size, repeats)
            row[size_name] = {"samples_per_s": size["batch"] / seconds, "params": n_params}
        rows.append(row)
    baseline = next((r for r in rows if r["strategy"] == "hard_sharing"), rows[0])
    for row in rows:
        for size_name in sizes:
            row[size_name]["vs_baseline"] = row[size_name]["samples_per_s"] / baseline[size_name]["samples_per_s"]
    conv = registry.backbones["conv"]
    image_rows = []
    for name, overrides in IMAGE_ROWS:
        if name not in registry.strategies:
            continue
        label = name + "".join(f" ({k} {v})" for k, v in overrides.items())
        row = {"strategy": label, "family": registry.strategies[name].family, "backbone": "conv"}
        for size_name, size in sizes.items():
            seconds, n_params = step_seconds(registry.strategies[name], conv, size, repeats, overrides)
            row[size_name] = {"samples_per_s": size["batch"] / seconds, "params": n_params}
        image_rows.append(row)
    for row in image_rows:
        for size_name in sizes:
            row[size_name]["vs_baseline"] = row[size_name]["samples_per_s"] / image_rows[0][size_name]["samples_per_s"]
    return {"machine": machine(), "sizes": sizes, "repeats": repeats, "baseline": baseline["strategy"], "rows": rows,
            "image_rows": image_rows}


def markdown(result: dict) -> str:
    sizes = result["sizes"]
    describe = "; ".join(f"{n}: width {s['width']}, depth {s['depth']}, batch {s['batch']}" for n, s in sizes.items())
    lines = [f"Training step throughput from CPU time per step, 3 tasks, median of {result['repeats']}, 1 torch thread ({describe}).",
             f"Machine: {result['machine']}.", "",
             "| strategy | family | backbone | " + " | ".join(f"{n} samples/s | {n} params | {n} vs {result['baseline']}" for n in sizes) + " |",
             "| --- | --- | --- | " + " | ".join("---: | ---: | ---:" for _ in sizes) + " |"]
    for r in result["rows"]:
        cells = " | ".join(f"{r[n]['samples_per_s']:,.0f} | {r[n]['params']:,} | {r[n]['vs_baseline']:.2f}" for n in sizes)
        lines.append(f"| {r['strategy']} | {r['family']} | {r['backbone']} | {cells} |")
    if result.get("image_rows"):
        lines += ["", f"Images ({IMAGE_INPUT[0]} x {IMAGE_INPUT[1]} x {IMAGE_INPUT[2]}) on the conv backbone, channels [c, 2c] with c = width / 4; "
                  "ratios against hard sharing on the same backbone.", "",
                  "| strategy | family | backbone | " + " | ".join(f"{n} samples/s | {n} params | {n} vs hard_sharing" for n in sizes) + " |",
                  "| --- | --- | --- | " + " | ".join("---: | ---: | ---:" for _ in sizes) + " |"]
        for r in result["image_rows"]:
            cells = " | ".join(f"{r[n]['samples_per_s']:,.0f} | {r[n]['params']:,} | {r[n]['vs_baseline']:.2f}" for n in sizes)
            lines.append(f"| {r['strategy']} | {r['family']} | {r['backbone']} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__).parse_args(argv)
    result = run(args.quick)
    print(write(NAME, markdown(result), result, args.out))


if __name__ == "__main__":
    main()
