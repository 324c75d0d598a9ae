"""Multi-objective early stopping: hypervolume against training time and epochs for no stopping, scalar ASHA and the Pareto rule.

Two small searches whose front is a trade-off between tasks: synthetic_correlated with
conflicting tasks (task correlation -0.5) and the shipped table (search_spaces/tabular_csv.yaml's
CSV, three tasks), both with the ``fixed`` loss weighting's per-task weights searched
(log-uniform in [0.01, 1]), so that trials specialise; the synthetic trunk is 4 units wide,
so the tasks compete for it. Objectives: the tasks' validation metrics.

Protocol. Each repeat samples its configurations with the random sampler (seed = repeat), so
every rule sees the same trials; a trial trains with the same seed under every rule, so a
rule that stops it only cuts its training short. Every trial is therefore trained once, in
this process (no Ray or MLflow, whose cost ``search_overhead`` measures), with each epoch's
report and the time it came; then each rule's search is replayed from these streams on
``--workers`` workers: a worker takes the next trial, the trial's epoch reports reach the
rule's Tune scheduler (``make_scheduler``: Ray's ASHAScheduler on the scalar ``score``,
or ParetoSuccessiveHalving on the objectives) at their measured times, and a STOP frees the
worker at that moment. A stopped trial never enters the front, as in a search. The
no-stopping search's front is the known front: its points' worst values pushed out by 10%
give the reference point of every hypervolume of that repeat.

Reported per rule (mean over repeats): the hypervolume as a fraction of no stopping's at
25/50/75% of no stopping's wall time, and at the rule's end; the epochs trained and wall time
as fractions of no stopping's; the fraction of no stopping's epochs after which the rule first
reaches 99% of no stopping's final hypervolume; the trials stopped; and the members of the
known front each rule stopped ("lost").

    python -m benchmarks.pareto_early_stopping [--quick] [--trials N] [--epochs N] [--repeats N] [--workers N]
"""
from __future__ import annotations

import heapq
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import machine, parser, write

NAME = "pareto_early_stopping"
RULES = ("none", "asha", "pareto")
DATASETS = ("synthetic", "table")
CHECKPOINTS = (0.25, 0.5, 0.75)
TARGET = 0.99
TABLE_SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "tabular_csv.yaml"


@dataclass
class Stream:
    """One trial trained to its end: its epoch reports, the seconds after its start at which each came, its final result."""

    number: int
    reports: list[dict[str, Any]]
    times: list[float]
    final: dict[str, Any]
    seconds: float


def _weights(tasks: list[str]) -> dict[str, Any]:
    return {"fixed": {f"weight.{t}": {"loguniform": [0.01, 1.0]} for t in tasks}}


def synthetic_space(seed: int, trials: int, epochs: int, samples: int) -> Any:
    from mtl_search.search.space import parse_space

    return parse_space({
        "experiment": NAME,
        "data": {"dataset": "synthetic_correlated", "options": {"samples": samples, "correlation": -0.5, "input_dim": 20, "seed": 0}},
        "backbone": {"kind": "mlp", "depth": 2, "width": 4},  # a narrow shared trunk: the tasks compete for it
        "strategies": {"hard_sharing": {"shared_depth": 2}},
        "training": {"epochs": epochs, "patience": epochs, "batch_size": 64, "lr": {"loguniform": [1e-3, 3e-2]},
                     "weighting": "fixed", "weighting_options": _weights(["y1", "y2"])},
        "search": {"trials": trials, "sampler": "random", "seed": seed, "objectives": ["y1", "y2"]},
    })


def table_space(seed: int, trials: int, epochs: int) -> Any:
    import yaml

    from mtl_search.search.space import parse_space

    raw = yaml.safe_load(TABLE_SPACE.read_text())
    raw["training"].update({"epochs": epochs, "patience": epochs, "weighting": "fixed",
                            "weighting_options": _weights(list(raw["tasks"]))})
    raw["search"].update({"trials": trials, "sampler": "random", "seed": seed})
    return parse_space(raw, TABLE_SPACE)


def train_streams(space: Any) -> tuple[list[Stream], Any]:
    """Every trial of the space trained to its end in this process, with its epoch reports timed; and the plan."""
    import optuna

    from mtl_search.search.prepare import prepare
    from mtl_search.search.sampling import TrialSpace, make_sampler
    from mtl_search.search.trial import make_trial_plan, train_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    plan, dataset, _ = prepare(space)
    trial_plan = make_trial_plan(plan)
    study = optuna.create_study(sampler=make_sampler("random", space.search.seed, 1, plan),
                                directions=[f"{o.direction}imize" for o in plan.objectives])
    define = TrialSpace(plan)
    streams = []
    for number in range(space.search.trials):
        config = define(study.ask())
        reports: list[dict[str, Any]] = []
        times: list[float] = []
        start = time.perf_counter()

        def report(metrics: dict[str, Any], checkpoint_dir: Any = None) -> None:
            if "epoch" in metrics and not metrics.get("final"):
                reports.append(dict(metrics))
                times.append(time.perf_counter() - start)

        final = train_trial(config, dataset, trial_plan, report)
        streams.append(Stream(number, reports, times, final, time.perf_counter() - start))
    return streams, plan


@dataclass
class Outcome:
    number: int
    finished: bool
    epochs: int
    end: float  # seconds after the search's start


def replay(streams: list[Stream], scheduler: Any, workers: int) -> tuple[list[Outcome], list[float]]:
    """Each rule's search from the measured streams (see the module docstring); returns the outcomes and every epoch's time."""

    class Trial:
        def __init__(self, trial_id: str):
            self.trial_id = trial_id

    pending = list(streams)
    events: list[tuple[float, int, int]] = []  # (time, trial number, epoch index; len(reports) = its end)
    by_number = {s.number: s for s in streams}
    trials = {s.number: Trial(str(s.number)) for s in streams}
    starts: dict[int, float] = {}
    outcomes: list[Outcome] = []
    epoch_times: list[float] = []

    def start(now: float) -> None:
        stream = pending.pop(0)
        starts[stream.number] = now
        if scheduler is not None:
            scheduler.on_trial_add(None, trials[stream.number])
        heapq.heappush(events, (now + (stream.times[0] if stream.reports else stream.seconds), stream.number, 0))

    for _ in range(min(workers, len(pending))):
        start(0.0)
    while events:
        now, number, index = heapq.heappop(events)
        stream = by_number[number]
        if index == len(stream.reports):  # the trial's end: its final result
            outcomes.append(Outcome(number, True, len(stream.reports), now))
            if scheduler is not None:
                scheduler.on_trial_complete(None, trials[number], stream.final)
        else:
            epoch_times.append(now)
            decision = "CONTINUE" if scheduler is None else scheduler.on_trial_result(None, trials[number], stream.reports[index])
            if decision == "STOP":
                outcomes.append(Outcome(number, False, index + 1, now))
                scheduler.on_trial_complete(None, trials[number], stream.reports[index])
            else:
                following = starts[number] + (stream.times[index + 1] if index + 1 < len(stream.reports) else stream.seconds)
                heapq.heappush(events, (following, number, index + 1))
                continue
        if pending:
            start(now)
    return outcomes, epoch_times


def hypervolume_at(outcomes: list[Outcome], streams: list[Stream], objectives: list[Any], reference: list[float],
                   until: float) -> float:
    from mtl_search.results.pareto import hypervolume

    by_number = {s.number: s for s in streams}
    points = [[by_number[o.number].final[obj.key] for obj in objectives] for o in outcomes if o.finished and o.end <= until]
    return hypervolume(points, [o.direction for o in objectives], reference)


def measure(streams: list[Stream], objectives: list[Any], epochs: int, workers: int) -> dict[str, Any]:
    """Every rule replayed on one repeat's streams (trials of up to ``epochs`` epochs), against no stopping on the same trials."""
    from mtl_search.results.pareto import default_reference_point, pareto_front
    from mtl_search.search.tune import make_scheduler

    directions = [o.direction for o in objectives]
    points = [[s.final[o.key] for o in objectives] for s in streams]
    reference = default_reference_point(points, directions)
    front = {streams[i].number for i in pareto_front(points, directions)}
    runs = {rule: replay(streams, make_scheduler(rule, epochs, objectives), workers) for rule in RULES}
    base_outcomes, base_epochs = runs["none"]
    base_wall = max(o.end for o in base_outcomes)
    base_hv = hypervolume_at(base_outcomes, streams, objectives, reference, base_wall)
    out = {}
    for rule, (outcomes, epoch_times) in runs.items():
        wall = max(o.end for o in outcomes)
        ends = sorted(o.end for o in outcomes if o.finished)
        reached = next((t for t in ends if hypervolume_at(outcomes, streams, objectives, reference, t) >= TARGET * base_hv), None)
        out[rule] = {
            "hv_at": [hypervolume_at(outcomes, streams, objectives, reference, c * base_wall) / base_hv for c in CHECKPOINTS],
            "hv_final": hypervolume_at(outcomes, streams, objectives, reference, wall) / base_hv,
            "epochs": len(epoch_times) / len(base_epochs), "wall": wall / base_wall,
            "epochs_to_target": None if reached is None else sum(t <= reached for t in epoch_times) / len(base_epochs),
            "stopped": sum(not o.finished for o in outcomes),
            "front_lost": sorted(o.number for o in outcomes if not o.finished and o.number in front),
        }
    return {"front": sorted(front), "reference_point": reference, "base_hypervolume": base_hv, "base_wall_s": base_wall,
            "base_epochs": len(base_epochs), "rules": out}


def run(trials: int, epochs: int, repeats: int, workers: int, samples: int) -> dict[str, Any]:
    load_before = machine()
    start = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in DATASETS}
    for repeat in range(repeats):
        for name in DATASETS:
            space = synthetic_space(repeat, trials, epochs, samples) if name == "synthetic" else table_space(repeat, trials, epochs)
            streams, plan = train_streams(space)
            results[name].append({"seed": repeat, **measure(streams, plan.objectives, epochs, workers)})
    return {"machine_before": load_before, "machine_after": machine(), "seconds": time.perf_counter() - start, "trials": trials,
            "epochs": epochs, "repeats": repeats, "workers": workers, "samples": samples, "results": results}


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['trials']} trials per search (random sampler, seed = repeat), up to {result['epochs']} epochs, {result['repeats']} repeats, "
        f"replayed on {result['workers']} workers from measured epoch times; synthetic: synthetic_correlated p = -0.5, "
        f"{result['samples']:,} rows; table: search_spaces/data/tabular.csv (1,500 rows, 3 tasks). Rungs at epochs 2, 4, 8 ... "
        f"below the last, η = 2. Means over repeats; HV as a fraction of no stopping's on the same trials.",
        f"Machine: {result['machine_before']}; after: {result['machine_after']} (shared with other jobs). "
        f"Whole benchmark {result['seconds']:.0f} s.",
        "",
        "| search | rule | " + " | ".join(f"HV at {int(c * 100)}% time" for c in CHECKPOINTS)
        + " | HV at end | epochs trained | wall time | epochs to 99% HV | trials stopped | front members lost (of front size) |",
        "| --- | --- | " + " | ".join("---:" for _ in CHECKPOINTS) + " | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, repeats in result["results"].items():
        for rule in RULES:
            rows = [r["rules"][rule] for r in repeats]
            at = [_mean([row["hv_at"][i] for row in rows]) for i in range(len(CHECKPOINTS))]
            reached = [row["epochs_to_target"] for row in rows]
            to_target = (f"{_mean([r for r in reached if r is not None]):.2f}" if any(r is not None for r in reached) else "never")
            if any(r is None for r in reached):
                to_target += f" ({sum(r is None for r in reached)} never)"
            lost = sum(len(row["front_lost"]) for row in rows)
            front = sum(len(r["front"]) for r in repeats)
            lines.append(f"| {name} | {rule} | " + " | ".join(f"{v:.3f}" for v in at)
                         + f" | {_mean([row['hv_final'] for row in rows]):.3f} | {_mean([row['epochs'] for row in rows]):.2f}"
                         + f" | {_mean([row['wall'] for row in rows]):.2f} | {to_target} | {sum(row['stopped'] for row in rows)}"
                         + f" | {lost} of {front} |")
    lines += ["", "Epochs trained, wall time and epochs to 99% HV: fractions of no stopping's; trials stopped and front members "
              "lost: totals over the repeats."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parse = parser(__doc__)
    parse.add_argument("--trials", type=int, default=24)
    parse.add_argument("--epochs", type=int, default=12)
    parse.add_argument("--repeats", type=int, default=5)
    parse.add_argument("--workers", type=int, default=2)
    args = parse.parse_args(argv)
    sizes = (4, 4, 1, 2, 300) if args.quick else (args.trials, args.epochs, args.repeats, args.workers, 2000)
    result = run(*sizes)
    print(write(NAME, markdown(result), result, args.out))
    return 0


if __name__ == "__main__":
    main()
