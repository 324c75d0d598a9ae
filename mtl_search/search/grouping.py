"""Task grouping from one joint training (TAG's selection: Fifty et al., NeurIPS 2021; Standley et al., ICML 2020).

``mtl-search groups SPACE``: train once the space's first strategy with a fully shared
configuration (``Strategy.fully_shared`` answers: of the built-in strategies, hard sharing
with every block shared) at that configuration, or, when none answers, its first strategy
that declares shared parameters (:func:`joint_strategy`), every other knob, backbone and
input knob at its range's midpoint (``Knob.midpoint``), measuring
the lookahead affinity Z(i -> j) (``mtl_search.training.affinity``) every step (or every
``training.affinity_every`` steps), then for each number of groups K choose the partitions
of the tasks that maximise

    score(P) = sum_j  mean_{i in G(j), i != j}  Z(i -> j)        (SINGLETON_SCORE for a task alone in its group)

the total affinity each task receives from the other members of its group. A task alone
in its group scores ``SINGLETON_SCORE`` = -1e6, the rule of the authors' network-selection
notebook (google-research ``tag/``): a task counts only once grouped with another, so a
partition with fewer singletons always wins, and between partitions with as many singletons
the affinity decides. (Scoring a singleton 0 instead would prefer isolating a task whenever
its group's affinities are negative, a grouping TAG never picks.) The paper lets a task sit
in several groups and keeps its best; a partition (each task trained in exactly one group)
is the variant here, what a ``task_groups`` space needs. Up to
``EXHAUSTIVE_TASKS`` tasks every partition is scored; beyond, a seeded local search
(``LOCAL_RESTARTS`` random starts, each improved by moving one task to another group or
swapping two tasks until no move helps) finds good ones, without a guarantee of the best.
"""
from __future__ import annotations

import json
import random
from typing import Any, Iterator, Sequence

import torch

from ..config import DEFAULT_WEIGHTING, STRATEGY_KEY, TrialConfig, param_name
from ..errors import MtlSearchError, SpaceError
from ..knobs import midpoint_values
from ..nn.create import build_backbone
from ..record import ROLE, ROLE_GROUPS, affinity_key
from ..training.trainer import TrainConfig
from .prepare import prepare
from .setup import set_up_trial
from .space import Space

EXHAUSTIVE_TASKS = 8
LOCAL_RESTARTS = 32
SINGLETON_SCORE = -1e6  # a task alone in its group (the official TAG notebook's rule)


def partition_score(groups: Sequence[Sequence[int]], affinity: torch.Tensor) -> float:
    """Sum over tasks j of the mean Z(i -> j) over the other members i of j's group (``affinity[i, j]`` = Z(i -> j)).

    A task alone in its group adds ``SINGLETON_SCORE``.
    """
    total = 0.0
    for group in groups:
        if len(group) < 2:
            total += SINGLETON_SCORE * len(group)
            continue
        for j in group:
            total += sum(float(affinity[i, j]) for i in group if i != j) / (len(group) - 1)
    return total


def partitions_into(n: int, k: int) -> Iterator[list[list[int]]]:
    """Every partition of range(n) into exactly k non-empty groups (restricted growth strings)."""

    def grow(i: int, labels: list[int], used: int) -> Iterator[list[int]]:
        if n - i < k - used:
            return
        if i == n:
            yield labels
            return
        for label in range(min(used + 1, k)):
            yield from grow(i + 1, labels + [label], max(used, label + 1))

    for labels in grow(0, [], 0):
        groups: list[list[int]] = [[] for _ in range(k)]
        for item, label in enumerate(labels):
            groups[label].append(item)
        yield groups


def _local_search(n: int, k: int, affinity: torch.Tensor, restarts: int, seed: int) -> list[tuple[float, list[list[int]]]]:
    rng = random.Random(seed)
    found: dict[tuple, tuple[float, list[list[int]]]] = {}
    for _ in range(restarts):
        labels = list(range(k)) + [rng.randrange(k) for _ in range(n - k)]
        rng.shuffle(labels)
        score = partition_score(_groups(labels, k), affinity)
        improved = True
        while improved:
            improved = False
            moves = [("move", t, g) for t in range(n) for g in range(k)] + [("swap", s, t) for s in range(n) for t in range(s + 1, n)]
            for kind, a, b in moves:
                trial = list(labels)
                if kind == "move":
                    trial[a] = b
                else:
                    trial[a], trial[b] = trial[b], trial[a]
                if len(set(trial)) < k:
                    continue
                value = partition_score(_groups(trial, k), affinity)
                if value > score + 1e-12:
                    labels, score, improved = trial, value, True
        groups = _canonical_groups(_groups(labels, k))
        found[tuple(map(tuple, groups))] = (score, groups)
    return list(found.values())


def _groups(labels: list[int], k: int) -> list[list[int]]:
    groups: list[list[int]] = [[] for _ in range(k)]
    for t, label in enumerate(labels):
        groups[label].append(t)
    return [g for g in groups if g]


def _canonical_groups(groups: list[list[int]]) -> list[list[int]]:
    return sorted((sorted(g) for g in groups), key=lambda g: g[0])


def select_partitions(affinity: torch.Tensor, tasks: Sequence[str], groups: int | None = None, top: int = 3,
                      seed: int = 0) -> list[dict[str, Any]]:
    """The ``top`` best partitions for each number of groups (1..T, or only ``groups``), best first within each number.

    Each entry: ``{"groups": [[task, ...], ...], "score": float}``.
    """
    n = len(tasks)
    if tuple(affinity.shape) != (n, n):
        raise ValueError(f"affinity of shape {tuple(affinity.shape)} for {n} tasks")
    counts = [groups] if groups is not None else list(range(1, n + 1))
    for k in counts:
        if not 1 <= k <= n:
            raise ValueError(f"the number of groups must lie in [1, {n}] (the number of tasks), got {k}")
    out = []
    for k in counts:
        if n <= EXHAUSTIVE_TASKS:
            scored = [(partition_score(p, affinity), p) for p in partitions_into(n, k)]
        else:
            scored = _local_search(n, k, affinity, LOCAL_RESTARTS, seed)
        scored.sort(key=lambda item: -item[0])
        out += [{"groups": [[tasks[t] for t in g] for g in p], "score": score} for score, p in scored[:top]]
    return out


# --- one joint training with affinity ---------------------------------------------------------
def joint_strategy(plan: Any, depth: int) -> tuple[str, dict[str, Any]]:
    """The strategy the affinity run trains and the knob values it fixes: ``(name, values)``.

    The space's first strategy whose ``Strategy.fully_shared`` answers for a backbone of
    ``depth`` blocks, with that answer; else its first strategy that declares shared
    parameters, with no value fixed (every knob at its range's midpoint, ``Knob.midpoint``).
    """
    for name, (strategy, knobs) in plan.strategies.items():
        values = strategy.fully_shared(knobs, depth)
        if values is not None:
            return name, values
    for name, (strategy, _) in plan.strategies.items():
        if strategy.declares_shared_parameters:
            return name, {}
    raise SpaceError("strategies", "task grouping needs a strategy with a fully shared configuration or one that declares "
                                   "shared parameters (e.g. hard_sharing); the space has none")


def measure_affinity(space: Space, groups: int | None = None) -> dict[str, Any]:
    """Train the space's joint strategy once with affinity measured; returns tasks, the mean affinity and what was trained."""
    plan, dataset, registry = prepare(space)
    if groups is not None and not 1 <= groups <= len(plan.problem.tasks):
        raise MtlSearchError(f"--groups {groups}: the number of groups must lie in [1, {len(plan.problem.tasks)}] (the number of tasks)")
    backbone_values, inputs = midpoint_values(plan.backbone), midpoint_values(plan.inputs)
    depth = build_backbone(plan.backbone_kind, plan.problem, backbone_values, inputs).depth
    name, shared = joint_strategy(plan, depth)
    strategy, knobs = plan.strategies[name]
    params = {**midpoint_values(knobs, {**backbone_values, "depth": depth}), **shared}
    # a searched training setting at the trainer's default, a fixed one as the space fixes it
    training = {k: (knob.values()[0] if knob.is_fixed else getattr(TrainConfig, k)) for k, knob in plan.training.items()}
    weighting_name = plan.weighting.values()[0] if plan.weighting.is_fixed else DEFAULT_WEIGHTING
    if weighting_name not in plan.weightings:
        weighting_name = next(iter(plan.weightings))
    weighting_cls, weighting_knobs = plan.weightings[weighting_name]
    config = TrialConfig(name, knobs=params, backbone=backbone_values, inputs=inputs, training=training, weighting=weighting_name,
                         weighting_params=midpoint_values(weighting_knobs))
    model, trainer = set_up_trial(dataset, strategy, plan.backbone_kind, config, weighting_cls, epochs=space.epochs,
                                  patience=space.patience, seed=space.search.seed, affinity_every=space.affinity_every or 1)
    strategy.fit(model, trainer)
    affinity = trainer.affinity.mean()
    if affinity is None:
        raise SpaceError(f"strategies.{name}", "the model declared no shared parameters for these knob values; nothing to measure")
    return {"tasks": plan.problem.task_names, "affinity": affinity, "strategy": name, "params": params,
            "backbone": backbone_values, "steps": trainer.affinity.measured}


def task_groups(space: Space, groups: int | None = None, top: int = 3, tracking_uri: str | None = None) -> dict[str, Any]:
    """Measure the affinity, select partitions and log both to MLflow as a run of its own (tag ``mtl_search.role: groups``).

    Returns ``{"tasks", "affinity", "partitions", "strategy", "run_id"}``.
    """
    measured = measure_affinity(space, groups)
    tasks, affinity = measured["tasks"], measured["affinity"]
    result = {"tasks": tasks, "affinity": affinity.tolist(),
              "partitions": select_partitions(affinity, tasks, groups, top, space.search.seed),
              "strategy": measured["strategy"], "steps": measured["steps"]}
    result["run_id"] = _log(space, result, measured, tracking_uri)
    return result


def _log(space: Space, result: dict[str, Any], measured: dict[str, Any], tracking_uri: str | None) -> str:
    from ..results.search_run import open_tracker
    from ..results.trial_runs import log_metrics, log_params

    tracker = open_tracker(tracking_uri or space.tracking_uri, space.experiment, "--tracking-uri" if tracking_uri else "tracking.uri")
    run_id = tracker.client.create_run(tracker.experiment_id, run_name=ROLE_GROUPS, tags={ROLE: ROLE_GROUPS}).info.run_id
    tasks = result["tasks"]
    log_metrics(tracker.client, run_id, {affinity_key(a, b): float(result["affinity"][i][j])
                                         for i, a in enumerate(tasks) for j, b in enumerate(tasks)})
    params = {STRATEGY_KEY: measured["strategy"], "affinity_steps": measured["steps"]}
    params.update({param_name(measured["strategy"], k): str(v)[:500] for k, v in measured["params"].items()})
    log_params(tracker.client, run_id, params)
    tracker.client.log_dict(run_id, {k: v for k, v in result.items() if k != "run_id"}, "groups.json")
    tracker.client.set_terminated(run_id, "FINISHED")
    return run_id


def format_groups(result: dict[str, Any]) -> str:
    """The affinity matrix and the selected partitions as text."""
    tasks = result["tasks"]
    width = max(10, *(len(t) for t in tasks)) + 2
    lines = [f"task affinity Z(row -> column), mean over {result['steps']} measured steps of {result['strategy']}:",
             " " * width + "".join(t.rjust(width) for t in tasks)]
    for name, row in zip(tasks, result["affinity"]):
        lines.append(name.ljust(width) + "".join(f"{v:{width}.4g}" for v in row))
    lines.append("")
    lines.append("groups  score      partition")
    for entry in result["partitions"]:
        lines.append(f"{len(entry['groups']):<7} {entry['score']:<10.4g} {json.dumps(entry['groups'])}")
    return "\n".join(lines)
