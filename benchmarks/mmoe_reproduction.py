"""MMoE (Ma et al., KDD 2018) synthetic study, on the paper's protocol: shared-bottom, OMoE and MMoE at task correlations 0.5, 0.9 and 1.0.

The paper's sizes (docs/methods.md, "MMoE and OMoE"): d = 100; OMoE and MMoE with 8 experts of one
layer of 16 units and towers of 8 units; the shared-bottom baseline is hard sharing with
one shared layer of 113 units and towers of 8. The protocol follows the paper's section 5:

1. Each model's learning rate is chosen from [1e-4, 1e-3, 1e-2] at each correlation by an
   mtl-search search (``run_search``: Ray Tune, Optuna's grid sampler over the three models
   x ``training.lr``, every trial recorded in MLflow, to review with ``mtl-search ui``) on a
   draw of the data kept for it, by the mean validation MSE of the two tasks.
2. Each (model, correlation) then trains ``--runs`` times with its rate, each run on a fresh
   draw of the data (its own seed, shared by the three models: x, the directions u_1, u_2
   and so the task weight vectors w_1, w_2, and the sine terms' alpha and beta are all
   redrawn per run) with a fresh initialisation,
   for a fixed budget of optimiser steps (Adam: the trainer's AdamW with no weight decay).
3. Reported: the training loss against training steps averaged over the runs, with its
   spread (the paper's Figure 3); the test MSE of the model at its best validation epoch
   beside it; run-by-run comparisons on the same draw (wins, sign test); which of the paper's
   qualitative findings hold on which measure.

    python -m benchmarks.mmoe_reproduction [--quick] [--runs N] [--epochs E] [--samples S] [--workers W] [--tracking-uri URI]
    python -m benchmarks.mmoe_reproduction --from-json benchmarks/results/mmoe_reproduction.json   # re-judge a run's per-run values

``--from-json`` recomputes the run-by-run comparisons and the findings from the per-run
values of an earlier run's JSON and rewrites its table, without training.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from mtl_search.registry import Registry, load_registry

from .common import describe, machine, parser, write
from .synthetic_study import Model, Training, build, draw_options, test_losses

NAME = "mmoe_reproduction"
CORRELATIONS = (0.5, 0.9, 1.0)
LEARNING_RATES = (1e-4, 1e-3, 1e-2)  # the paper's grid
SHARED_BOTTOM = Model("shared-bottom", "hard_sharing", {"shared_depth": 1, "tower_width": 8}, width=113)
MODELS = (
    SHARED_BOTTOM,
    Model("OMoE", "omoe", {"experts": 8, "expert_width": 16, "expert_depth": 1, "tower_width": 8}),
    Model("MMoE", "mmoe", {"experts": 8, "expert_width": 16, "expert_depth": 1, "tower_width": 8}),
)
PAIRS = (("MMoE", "shared-bottom"), ("OMoE", "shared-bottom"), ("MMoE", "OMoE"))
PAPER_PARAMS = 13_056
LR_SEARCH_DRAW = 10_000  # the seed of the draw the learning rates are chosen on: no run trains on it
# 90,000 training rows, 5,000 for validation and 5,000 for test: large enough that the training loss is
# the generalisation loss, as in the paper's curves (the paper does not give its data size)
PROTOCOL = Training(samples=100_000, epochs=6, patience=6, batch_size=128, options={"val": 0.05, "test": 0.05})
WINDOW = 128  # steps per point of a loss curve: the mean of their minibatch losses


class LossCurve:
    """``Trainer.on_step``: each step's training loss averaged over the tasks, then over windows of ``window`` steps."""

    def __init__(self, window: int):
        self.window = window
        self.points: list[float] = []
        self._window_losses: list[float] = []

    def __call__(self, step: int, losses: dict[str, float]) -> None:
        self._window_losses.append(statistics.fmean(losses.values()))
        if len(self._window_losses) == self.window:
            self.points.append(statistics.fmean(self._window_losses))
            self._window_losses = []


def lr_search_space(correlation: float, training: Training, workers: int) -> Any:
    """The search that chooses every model's learning rate at ``correlation``: the grid of the three models x the paper's rates.

    One backbone serves the three: hard sharing's shared layer is its block (113 units), and
    the mixtures build their experts from their own knobs over the input.
    """
    from mtl_search.search.space import parse_space

    return parse_space({
        "experiment": f"{NAME}-lr-p{correlation:g}",
        "data": {"dataset": "synthetic_correlated", "options": draw_options(training, correlation, LR_SEARCH_DRAW)},
        # the backbone as synthetic_study.build makes it, so the search trains the models the runs train
        "backbone": {"kind": "mlp", "depth": 1, "width": SHARED_BOTTOM.width, "activation": "relu", "norm": "none", "dropout": 0.0},
        "strategies": {m.strategy: m.knobs for m in MODELS},
        "training": {"epochs": training.epochs, "patience": training.patience, "batch_size": training.batch_size,
                     "lr": {"choice": list(LEARNING_RATES)}},
        "search": {"trials": len(MODELS) * len(LEARNING_RATES), "sampler": "grid", "concurrency": workers, "seed": 0},
        "baseline": False,  # no single-task references: the study compares the three models with each other
    })


def choose_learning_rates(correlation: float, training: Training, workers: int, tracking_uri: str | None) -> dict[str, dict[str, Any]]:
    """Run the learning-rate search (recorded in MLflow); per model, the mean validation MSE of the two tasks at each rate and the lowest's rate."""
    from mtl_search.search.run import RunOptions, run_search

    record = run_search(lr_search_space(correlation, training, workers), RunOptions(tracking_uri=tracking_uri))
    label = {m.strategy: m.label for m in MODELS}
    val_mse: dict[str, dict[float, float]] = {m.label: {} for m in MODELS}
    for trial in record.trials:
        if trial.status != "finished":
            raise RuntimeError(f"learning-rate search trial {trial.number} ({trial.strategy}) {trial.status}: {trial.error}")
        val_mse[label[trial.strategy]][trial.params["training.lr"]] = statistics.fmean(trial.val.values())
    for model, by_rate in val_mse.items():
        if sorted(by_rate) != sorted(LEARNING_RATES):
            raise RuntimeError(f"the grid search tried {sorted(by_rate)} for {model}, not the grid {list(LEARNING_RATES)}")
    return {m: {"val_mse": by_rate, "lr": min(by_rate, key=by_rate.get), "search_run_id": record.search_run_id}
            for m, by_rate in val_mse.items()}


def parameter_counts(registry: Registry) -> dict[str, dict[str, int]]:
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


def sign_test(wins: int, runs: int) -> float:
    """Two-sided exact sign test: the chance of a split at least this uneven if either model were as likely to win a run."""
    if runs == 0:
        return 1.0
    extreme = max(wins, runs - wins)
    return min(1.0, 2 * sum(math.comb(runs, k) for k in range(extreme, runs + 1)) / 2**runs)


Values = dict[str, dict[float, list[float]]]  # model -> correlation -> one value per run (run i: draw i)
SIGNIFICANCE = 0.05  # a run-by-run verdict holds (or fails) only where the sign test's p is below this


def run_by_run_verdict(counts: list[int], runs: int, also: bool = True) -> str:
    """``yes`` when every count of agreeing runs is significantly more than half (sign test p < SIGNIFICANCE) and ``also``
    holds; ``no`` when a count is significantly less than half or ``also`` fails; ``not significant`` otherwise."""
    against = any(n < runs / 2 and sign_test(n, runs) < SIGNIFICANCE for n in counts)
    if against or not also:
        return "no"
    return "yes" if all(n > runs / 2 and sign_test(n, runs) < SIGNIFICANCE for n in counts) else "not significant"


def paired(values: Values) -> dict[str, dict[float, dict[str, float]]]:
    """For each pair (a, b) and correlation: runs where a's loss is below b's on the same draw, the sign test, the mean difference."""
    out = {}
    for a, b in PAIRS:
        out[f"{a} < {b}"] = {}
        for p in CORRELATIONS:
            diffs = [x - y for x, y in zip(values[a][p], values[b][p])]
            wins = sum(d < 0 for d in diffs)
            out[f"{a} < {b}"][p] = {"wins": wins, "runs": len(diffs), "sign_test_p": sign_test(wins, len(diffs)),
                                    "mean_difference": statistics.fmean(diffs)}
    return out


def findings(values: Values, wins: dict[str, dict[float, dict[str, float]]]) -> list[dict[str, Any]]:
    """The paper's qualitative findings (docs/methods.md, "The MMoE synthetic benchmark") on one measure.

    ``means``: on the means over runs (and the spread over runs for the last one); ``paired``:
    run by run on the same draw (``wins``: :func:`paired` of ``values``), the
    :func:`run_by_run_verdict` of the counts of runs that agree: ``yes``, ``no`` or ``not
    significant`` (None where a finding is about the spread over runs, which no single run
    has). ``evidence`` gives the counts and their sign tests.
    """
    labels = [m.label for m in MODELS]
    sb, omoe, mmoe = labels
    runs = len(values[sb][CORRELATIONS[0]])
    low, high = CORRELATIONS[0], CORRELATIONS[-1]
    mean = {m: {p: statistics.fmean(values[m][p]) for p in CORRELATIONS} for m in labels}
    spread = {m: {p: describe(values[m][p])["std"] for p in CORRELATIONS} for m in labels}
    run_values = {m: [[values[m][p][i] for p in CORRELATIONS] for i in range(runs)] for m in labels}  # per run, by correlation

    def counted(n: int) -> str:
        return f"{n}/{runs} (sign test {sign_test(n, runs):.2g})"

    def monotone(losses: list[float]) -> bool:
        return all(a >= b for a, b in zip(losses, losses[1:]))

    def loss_range(losses: list[float]) -> float:
        return max(losses) - min(losses)

    monotone_runs = {m: sum(monotone(r) for r in run_values[m]) for m in labels}
    least_change_runs = sum(loss_range(run_values[mmoe][i]) <= min(loss_range(run_values[sb][i]), loss_range(run_values[omoe][i]))
                            for i in range(runs))
    gap = {p: mean[omoe][p] - mean[mmoe][p] for p in CORRELATIONS}
    mmoe_over_omoe = {p: wins[f"{mmoe} < {omoe}"][p]["wins"] for p in CORRELATIONS}
    beat_sb = {f"{m} at {p:g}": wins[f"{m} < {sb}"][p]["wins"] for m in (omoe, mmoe) for p in CORRELATIONS}
    return [
        {"finding": "every model does better as the correlation rises",
         "means": all(monotone([mean[m][p] for p in CORRELATIONS]) for m in labels),
         "paired": run_by_run_verdict(list(monotone_runs.values()), runs),
         "evidence": "runs with the loss falling as p rises: " + ", ".join(f"{m} {counted(n)}" for m, n in monotone_runs.items())},
        {"finding": "MMoE's loss changes least with the correlation",
         "means": loss_range(list(mean[mmoe].values())) <= min(loss_range(list(mean[m].values())) for m in (sb, omoe)),
         "paired": run_by_run_verdict([least_change_runs], runs),
         "evidence": f"runs where MMoE's range over p is the smallest: {counted(least_change_runs)}"},
        {"finding": "both MoE models beat shared-bottom at every correlation",
         "means": all(mean[m][p] < mean[sb][p] for m in (omoe, mmoe) for p in CORRELATIONS),
         "paired": run_by_run_verdict(list(beat_sb.values()), runs),
         "evidence": "runs better than shared-bottom: " + ", ".join(f"{k} {counted(n)}" for k, n in beat_sb.items())},
        {"finding": f"OMoE approaches MMoE only when the correlation is {high:g} (their gap is smallest there, and OMoE is behind at {low:g})",
         "means": gap[high] <= min(gap.values()) and gap[low] > 0,
         "paired": run_by_run_verdict([mmoe_over_omoe[low]], runs, also=mmoe_over_omoe[high] <= min(mmoe_over_omoe.values())),
         "evidence": "runs with MMoE better than OMoE: " + ", ".join(f"p = {p:g} {counted(n)}" for p, n in mmoe_over_omoe.items())},
        {"finding": "shared-bottom's loss varies most across runs (largest spread at every correlation)",
         "means": all(spread[sb][p] >= max(spread[omoe][p], spread[mmoe][p]) for p in CORRELATIONS),
         "paired": None,
         "evidence": "standard deviation over runs: " + "; ".join(
             f"p = {p:g} " + ", ".join(f"{m} {spread[m][p]:.3g}" for m in labels) for p in CORRELATIONS)},
    ]


def measure(values: Values) -> dict[str, Any]:
    """One measure's per-run values, their mean/spread/median per model and correlation, paired comparisons and findings."""
    wins = paired(values)
    return {"per_run": values,
            "summary": {m: {p: describe(v) for p, v in by_p.items()} for m, by_p in values.items()},
            "paired": wins, "findings": findings(values, wins)}


def curve_summary(curves: dict[str, dict[float, list[list[float]]]]) -> dict[str, dict[float, dict[str, list[float]]]]:
    """Mean, standard deviation and quartiles over runs at every point of the loss curves."""
    def summary(runs: list[list[float]]) -> dict[str, list[float]]:
        points = [list(col) for col in zip(*runs)]  # one list of the runs' values per point
        quartiles = [statistics.quantiles(col, n=4, method="inclusive") if len(col) > 1 else col * 3 for col in points]
        return {"mean": [statistics.fmean(col) for col in points], "std": [describe(col)["std"] for col in points],
                "q25": [q[0] for q in quartiles], "q75": [q[2] for q in quartiles]}

    return {m: {p: summary(runs) for p, runs in by_p.items()} for m, by_p in curves.items()}


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # the workers share the cores: one thread each


def train_draw(seed: int, training: Training, window: int, rates: dict[str, dict[float, float]]) -> dict[str, dict[float, dict]]:
    """Every model at every correlation on draw ``seed``, each at its chosen rate: its loss curve and its test MSE."""
    registry = load_registry()
    out: dict[str, dict[float, dict]] = {m.label: {} for m in MODELS}
    for p in CORRELATIONS:
        for model in MODELS:  # the same draw of the data for every model in a run
            curve = LossCurve(window)
            result = test_losses(registry, model, p, seed, replace(training, lr=rates[model.label][p]), on_step=curve)
            out[model.label][p] = {"curve": curve.points, "test_mse": statistics.fmean(result["test"].values())}
    return out


def run(runs: int, training: Training, window: int, workers: int, tracking_uri: str | None = None) -> dict:
    load_before = machine()
    labels = [m.label for m in MODELS]
    searches = {p: choose_learning_rates(p, training, workers, tracking_uri) for p in CORRELATIONS}
    lr_search = {m: {p: searches[p][m] for p in CORRELATIONS} for m in labels}
    rates = {m: {p: found["lr"] for p, found in by_p.items()} for m, by_p in lr_search.items()}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread) as pool:
        draws = list(pool.map(train_draw, range(runs), [training] * runs, [window] * runs, [rates] * runs))
    curves = {m: {p: [draw[m][p]["curve"] for draw in draws] for p in CORRELATIONS} for m in labels}
    test_mse = {m: {p: [draw[m][p]["test_mse"] for draw in draws] for p in CORRELATIONS} for m in labels}
    final_train = {m: {p: [c[-1] for c in by_p[p]] for p in CORRELATIONS} for m, by_p in curves.items()}
    return {"machine_before": load_before, "machine_after": machine(), "runs": runs, "workers": workers,
            "training": training.__dict__, "window": window, "learning_rates": list(LEARNING_RATES), "lr_search": lr_search,
            "params": parameter_counts(load_registry()), "paper_params": PAPER_PARAMS,
            "curve_steps": [window * (i + 1) for i in range(len(curves[labels[0]][CORRELATIONS[0]][0]))],
            "curves": curves, "curve_summary": curve_summary(curves),
            "final_training_loss": measure(final_train), "test_mse": measure(test_mse)}


def plot(result: dict, path: Path) -> None:
    """The paper's Figure 3 layout: one panel per correlation, each model's mean training loss against steps, its interquartile range over runs shaded.

    Quartiles, not ± one standard deviation: the losses are skewed (a few runs of shared-bottom
    stay far above the rest), so mean − std is negative and cannot be drawn on a log axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result["curve_steps"]
    fig, axes = plt.subplots(1, len(CORRELATIONS), figsize=(4 * len(CORRELATIONS), 3.4), sharey=True)
    for ax, p in zip(axes, CORRELATIONS):
        for label, by_p in result["curve_summary"].items():
            ax.plot(steps, by_p[p]["mean"], label=label)
            ax.fill_between(steps, by_p[p]["q25"], by_p[p]["q75"], alpha=0.2)
        ax.set_title(f"correlation {p:g}")
        ax.set_xlabel("training steps")
        ax.set_yscale("log")
    axes[0].set_ylabel("training loss (MSE, mean of 2 tasks)")
    axes[0].legend()
    fig.suptitle(f"mean over {result['runs']} runs; shaded: the middle half of the runs (25th to 75th percentile)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell(stats: dict[str, float]) -> str:
    return f"{stats['mean']:.4f} ± {stats['std']:.4f}"


def markdown(result: dict) -> str:
    t, runs = result["training"], result["runs"]
    rates = result["learning_rates"]
    steps = result["curve_steps"]
    train_rows = round(t["samples"] * (1 - t["options"].get("val", 0.15) - t["options"].get("test", 0.15)))
    heading = " | ".join(f"p = {p:g}" for p in CORRELATIONS)
    align = " | ".join("---:" for _ in CORRELATIONS)
    lines = [
        f"{runs} runs per model and correlation, each on a fresh draw of the data (x, the task weight vectors w_1, w_2 and "
        f"the sine terms' alpha and beta all redrawn from the run's seed; run i: draw i for every model) with a fresh "
        f"initialisation; {t['samples']:,} rows ({train_rows:,} for training), d = {t['input_dim']}, Adam (AdamW, no weight decay), "
        f"batch {t['batch_size']}, {t['epochs']} epochs = {steps[-1] if steps else 0:,} steps, no early stop (the test MSE is "
        f"the model at its best validation epoch). Learning rates chosen by an mtl-search search (grid over the three models x "
        f"{rates}) on a separate draw, by the mean validation MSE. Curve points: the minibatch training loss averaged over the two tasks and "
        f"{result['window']} steps.",
        f"Machine: {result['machine_before']}.",
        "",
        "Learning-rate search (mean validation MSE of the two tasks at each rate; chosen = lowest):",
        "",
        "| model | p | " + " | ".join(f"lr {r:g}" for r in rates) + " | chosen |",
        "| --- | ---: | " + " | ".join("---:" for _ in rates) + " | ---: |",
    ]
    for label, by_p in result["lr_search"].items():
        for p in CORRELATIONS:
            found = by_p[p]
            lines.append(f"| {label} | {p:g} | " + " | ".join(f"{found['val_mse'][r]:.4f}" for r in rates) + f" | {found['lr']:g} |")
    marks = sorted({min(len(steps) - 1, max(0, round(len(steps) * f) - 1)) for f in (0.125, 0.25, 0.5, 1.0)})
    lines += ["", "Training loss against training steps, mean ± standard deviation over runs "
              f"(the curves: [{NAME}.png]({NAME}.png)):", "",
              "| model | step | " + heading + " |", "| --- | ---: | " + align + " |"]
    for label, by_p in result["curve_summary"].items():
        for i in marks:
            lines.append(f"| {label} | {steps[i]:,} | " + " | ".join(
                f"{by_p[p]['mean'][i]:.4f} ± {by_p[p]['std'][i]:.4f}" for p in CORRELATIONS) + " |")
    for name, title in (("final_training_loss", "training loss at the end of the budget"), ("test_mse", "test MSE")):
        found = result[name]
        lines += ["", f"On the {title}: mean ± standard deviation and median over runs, then run-by-run comparisons on the "
                  "same draw (runs won, two-sided sign test, mean paired difference):", "",
                  "| | " + heading + " |", "| --- | " + align + " |"]
        lines += [f"| {label} | " + " | ".join(f"{_cell(by_p[p])} (median {by_p[p]['median']:.4f})" for p in CORRELATIONS) + " |"
                  for label, by_p in found["summary"].items()]
        lines += [f"| {pair.replace(' < ', ' better than ')} | " + " | ".join(
            f"{c['wins']}/{c['runs']} (sign test {c['sign_test_p']:.2g}), {c['mean_difference']:+.4f}" for c in (by_p[p] for p in CORRELATIONS)) + " |"
            for pair, by_p in found["paired"].items()]

    def verdict(value: bool | str | None) -> str:
        return "n/a" if value is None else value if isinstance(value, str) else ("yes" if value else "no")

    lines += ["", "Which of the paper's findings hold, on which measure (means over runs: the comparison of the means, "
              "untested; run by run on the same draw: yes where significantly more than half of the runs agree, two-sided "
              f"sign test p < {SIGNIFICANCE:g} for every count the finding needs, no where significantly fewer do, otherwise "
              "not significant):", "",
              "| paper finding | training loss: means | training loss: run by run | test MSE: means | test MSE: run by run |",
              "| --- | --- | --- | --- | --- |"]
    for train, test in zip(result["final_training_loss"]["findings"], result["test_mse"]["findings"]):
        lines.append(f"| {train['finding']} | {verdict(train['means'])} | {verdict(train['paired'])} | "
                     f"{verdict(test['means'])} | {verdict(test['paired'])} |")
    lines += ["", "The counts behind the run-by-run verdicts (training loss; test MSE):", ""]
    lines += [f"- {train['finding']}: training loss: {train['evidence']}; test MSE: {test['evidence']}."
              for train, test in zip(result["final_training_loss"]["findings"], result["test_mse"]["findings"])]
    lines += ["", "| model | parameters (all) | paper-style count |", "| --- | ---: | ---: |"]
    lines += [f"| {label} | {c['all']:,} | {c['weights_without_gates_and_outputs']:,} |" for label, c in result["params"].items()]
    lines += ["", "Paper-style count: weights of the experts (or shared layer) and of the towers' hidden layer, without biases, "
              f"gates or output layers; the paper's figure is {result['paper_params']:,} for MMoE."]
    return "\n".join(lines) + "\n"


def _float_keys(value: Any) -> Any:
    """A JSON-loaded result with its numeric keys (correlations, learning rates) as floats again."""
    if isinstance(value, dict):
        def key(k: str) -> Any:
            try:
                return float(k)
            except ValueError:
                return k
        return {key(k): _float_keys(v) for k, v in value.items()}
    return value


def rejudge(result: dict) -> dict:
    """``result`` (a JSON-loaded run) with its comparisons and findings recomputed from its per-run values."""
    result = _float_keys(result)
    for name in ("final_training_loss", "test_mse"):
        result[name] = measure(result[name]["per_run"])
    return result


def main(argv: list[str] | None = None) -> None:
    parse = parser(__doc__)
    parse.add_argument("--runs", type=int, default=50)
    parse.add_argument("--workers", type=int, default=2, help="trials (learning-rate search) and processes (runs) training at once")
    parse.add_argument("--tracking-uri", default=None, help="the MLflow store of the learning-rate searches (default: the project's mlflow/)")
    parse.add_argument("--epochs", type=int, default=PROTOCOL.epochs, help="the training budget in epochs (no early stop)")
    parse.add_argument("--samples", type=int, default=PROTOCOL.samples, help="rows per draw (90%% for training)")
    parse.add_argument("--from-json", type=Path, default=None, help="re-judge the per-run values of this earlier result (no training)")
    args = parse.parse_args(argv)
    if args.from_json is not None:
        result = rejudge(json.loads(args.from_json.read_text()))
        print(write(NAME, markdown(result), result, args.out))
        return
    if args.quick:
        runs, window = 2, 2
        training = Training(samples=400, epochs=1, patience=1, batch_size=64, options=PROTOCOL.options)
    else:
        runs, window = args.runs, WINDOW
        training = replace(PROTOCOL, samples=args.samples, epochs=args.epochs, patience=args.epochs)
    result = run(runs, training, window, args.workers, args.tracking_uri)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(result, args.out / f"{NAME}.png")
    print(write(NAME, markdown(result), result, args.out))


if __name__ == "__main__":
    main()
