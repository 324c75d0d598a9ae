"""Single-task references: one network per task, that every trial's gains are measured against.

The reference for task t is the space's backbone recipe on t alone: the input layer and
stem, every block, and a tower with one hidden layer — the network hard sharing builds per
task at ``shared_depth = 0``, restricted to one task (:class:`SingleTaskModel`). A funnel
task (``after:``) is trained and evaluated on the rows its parent selects, as in its trials.

``baseline:`` in space.yaml (``baseline: false`` turns references and gains off):

- ``mode: search`` (the default). The references are searched with the trials' protocol:
  ``baseline.trials`` reference trials per task (by default the budget one strategy gets:
  ⌈search.trials / number of strategies⌉) sample the space's backbone,
  input and training ranges and the tower width (``baseline:`` may pin any of them), each
  trained like a trial (the same epochs, patience, early stopping and seeds rule) as a Ray
  Tune trial proposed by the search's sampler on a study of its own per task, and recorded
  in MLflow as a run of its own under the search (role ``reference``). They run before the
  multi-task trials, so every trial's gains and Δm are measured against the final
  references: the best validation metric among a task's reference trials, with the test
  metric of that same model. Resume keeps them like any other trial.
- ``mode: fixed``: one configuration per task, trained once on the driver: each knob at the
  value ``baseline:`` gives or the midpoint of its range (``Knob.midpoint``), tower width 16.
  A documented, untuned yardstick: Δm then measures a searched configuration against an
  unsearched one as much as what sharing adds.

The gains and Δm (``results.metrics``) follow Maninis et al. (2019) and LibMTL.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import replace
from typing import Any, Callable, Iterable

import numpy as np
import torch

from ..config import TrialConfig
from ..data.dataset import Dataset, Split
from ..data.problem import Problem
from ..errors import MtlSearchError
from ..knobs import Int
from ..nn.backbones import Backbone
from ..nn.layers import make_tower
from ..nn.model import MultiTaskModel, SharingMap
from ..strategy import Strategy
from ..training.weighting import Equal
from .setup import set_up_trial, trial_seed
from .space import Plan, ReferenceSettings, reference_settings

References = dict[str, dict[str, float]]  # {"val": {task: metric}, "test": {task: metric}}


class SingleTaskModel(MultiTaskModel):
    """One task's own network: the backbone's stem, every block, its features and a tower."""

    def __init__(self, problem: Problem, backbone: Backbone, tower_width: int):
        super().__init__(problem)
        if len(problem.tasks) != 1:
            raise ValueError(f"a single-task reference has exactly one task, got {problem.task_names}")
        task = problem.tasks[0]
        self.depth = backbone.depth
        self.body = torch.nn.Sequential(backbone.new_stem(), *backbone.new_blocks(), backbone.new_features())
        self.tower = make_tower(backbone.out_features, task.output_dim, [tower_width])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.problem.tasks[0].name: self.tower(self.body(x))}

    def sharing_map(self, x: torch.Tensor) -> dict[str, SharingMap]:
        return {"shared_blocks": SharingMap(torch.zeros(1, self.depth), self.problem.task_names, [f"block{i}" for i in range(self.depth)])}


class SingleTask(Strategy):
    """The references' "strategy" (not registered: never searched): builds :class:`SingleTaskModel`."""

    name = "single_task_reference"
    family = "single_task"
    description = "one network per task: the single-task reference"
    knobs = {"tower_width": Int(4, 64, log=True, minimum=1)}

    def build(self, problem: Problem, backbone: Backbone, params: dict[str, Any]) -> MultiTaskModel:
        return SingleTaskModel(problem, backbone, params["tower_width"])


def task_dataset(dataset: Dataset, task: str) -> Dataset:
    """``dataset`` with only ``task``'s targets, label mask and sample weights.

    A funnel task keeps its mask (the data set already hides its label where the parent is
    not positive) and loses its ``after``: its reference learns it on the parent's rows alone.
    """
    problem = replace(dataset.problem, tasks=(replace(dataset.problem.task(task), after=None),))

    def only(split: Split) -> Split:
        return Split(split.x, {task: split.y[task]}, {task: split.mask[task]} if task in split.mask else {},
                     {task: split.weight[task]} if task in split.weight else {})

    return Dataset(problem, only(dataset.train), only(dataset.val), only(dataset.test))


def train_reference(plan: Plan, dataset: Dataset, task: str, settings: ReferenceSettings, threads: int = 1) -> dict[str, float]:
    """Train task ``task``'s reference; returns its val and test metric (``{"val": m, "test": m, "seconds": s}``)."""
    space = plan.space
    data = task_dataset(dataset, task)
    config = TrialConfig(SingleTask.name, knobs={"tower_width": settings.tower_width}, backbone=settings.backbone,
                         inputs=settings.inputs, training=settings.training)
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        model, trainer = set_up_trial(data, SingleTask(), plan.backbone_kind, config, Equal, epochs=space.epochs,
                                      patience=space.patience, seed=trial_seed(space.search.seed, plan.problem.task_names.index(task)))
        start = time.perf_counter()
        trainer.fit(model)
        seconds = time.perf_counter() - start
        val = trainer.evaluate(model, data.val).metrics[task]
        test = trainer.evaluate(model, data.test).metrics[task]
    finally:
        torch.set_num_threads(previous)
    return {"val": float(val), "test": float(test), "seconds": seconds}


def train_references(plan: Plan, dataset: Dataset, echo: Callable[[str], None] = print) -> References:
    """Every task's single-task reference, trained one after another on this process (the driver), before the trials."""
    settings = reference_settings(plan)
    threads = max(1, int(plan.space.ray.cpus_per_trial))
    out: References = {"val": {}, "test": {}}
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:  # seeding for the references must not change the driver's random streams
        for task in plan.problem.task_names:
            result = train_reference(plan, dataset, task, settings, threads)
            out["val"][task], out["test"][task] = result["val"], result["test"]
            echo(f"reference {task}: val {result['val']:.4g}, test {result['test']:.4g} ({result['seconds']:.1f}s)")
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
    return out


def fixed_references(plan: Plan, dataset: Dataset, tracker: Any, search_run_id: str, resume: bool,
                     echo: Callable[[str], None] = print) -> References:
    """``baseline: {mode: fixed}``: on resume, the references the search run recorded; else trained here and recorded."""
    if resume:
        found = tracker.load_references(search_run_id)
        if found and set(found.get("val", {})) == set(plan.problem.task_names):
            return found
    references = train_references(plan, dataset, echo)
    tracker.log_references(search_run_id, references)
    return references


def best_reference_trial(records: Iterable[Any], task: str, direction: str) -> Any | None:
    """Task ``task``'s finished reference trial with the best finite validation metric (``direction`` min or max), or None."""
    done = [r for r in records if r.reference_task == task and r.status == "finished" and math.isfinite(r.val.get(task, math.nan))]
    return (min if direction == "min" else max)(done, key=lambda r: r.val[task]) if done else None


def best_references(records: Iterable[Any], problem: Problem) -> tuple[References, dict[str, Any]]:
    """Each task's reference from its finished reference trials: the best validation metric and that model's test metric.

    Returns the references and the chosen trial record per task; MtlSearchError when a task
    has no finished reference trial (its gains would have no yardstick).
    """
    records = list(records)
    out: References = {"val": {}, "test": {}}
    chosen: dict[str, Any] = {}
    for task in problem.tasks:
        best = best_reference_trial(records, task.name, task.direction)
        if best is None:
            ended = sum(r.reference_task == task.name for r in records)
            raise MtlSearchError(f"no single-task reference trial of task {task.name!r} finished ({ended} ended otherwise; "
                                 "their errors are in MLflow): fix the cause, or set baseline: false")
        out["val"][task.name], out["test"][task.name] = best.val[task.name], best.test.get(task.name, math.nan)
        chosen[task.name] = best
    return out, chosen
