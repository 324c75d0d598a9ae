"""Single-task references: one network per task, trained once per search, that every trial's gains are measured against.

The reference for task t is the space's backbone recipe on t alone: the input layer and
stem, every block, and a tower with one hidden layer (``baseline.tower_width``, default 16)
— the network hard sharing builds per task at ``shared_depth = 0``, restricted to one task.
It trains with the space's trainer (epochs, patience, early stopping on the validation
loss, the search's seed) and equal weighting (one task: its plain loss).

Configuration (``baseline:`` in space.yaml; ``baseline: false`` turns references and gains
off). Each backbone, training and input knob takes the value ``baseline:`` gives it, else
the midpoint of the space's range (:func:`midpoint`, in ``search.space`` with the rest of ``baseline:``'s resolution): the middle of an integer or float
range (the geometric middle on a log scale), the median of numeric choices, the first of
other choices, a constant as it is. A midpoint rather than a tuned single-task model: the
references cost T trainings, not a search per task; a reference is therefore a fixed,
documented yardstick, not the best single-task model the space could give. The gains and
Δm (``results.metrics``) follow Maninis et al. (2019) and LibMTL against these references.
"""
from __future__ import annotations

import random
import time
from dataclasses import replace
from typing import Any, Callable

import numpy as np
import torch

from ..data.dataset import Dataset, Split
from ..data.problem import Problem
from ..knobs import Int
from ..nn.backbones import Backbone
from ..nn.create import create_model
from ..nn.layers import make_tower
from ..nn.model import MultiTaskModel, SharingMap
from ..strategy import Strategy
from ..training.trainer import TrainConfig, Trainer, seed_everything
from ..training.weighting import Equal
from .space import Plan, ReferenceSettings, midpoint, reference_settings  # noqa: F401 (midpoint: part of this module's API)

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
    """``dataset`` with only ``task``'s targets (and labels mask)."""
    problem = replace(dataset.problem, tasks=(dataset.problem.task(task),))

    def only(split: Split) -> Split:
        return Split(split.x, {task: split.y[task]}, {task: split.mask[task]} if task in split.mask else {})

    return Dataset(problem, only(dataset.train), only(dataset.val), only(dataset.test))


def train_reference(plan: Plan, dataset: Dataset, task: str, settings: ReferenceSettings, threads: int = 1) -> dict[str, float]:
    """Train task ``task``'s reference; returns its val and test metric (``{"val": m, "test": m, "seconds": s}``)."""
    space = plan.space
    data = task_dataset(dataset, task)
    seed = space.search.seed * 100_003 + plan.problem.task_names.index(task)
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        seed_everything(seed)
        model = create_model(data.problem, SingleTask(), plan.backbone_kind, {"tower_width": settings.tower_width},
                             settings.backbone, settings.inputs)
        trainer = Trainer(data, TrainConfig(epochs=space.epochs, patience=space.patience, seed=seed, **settings.training),
                          Equal([task]))
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


def search_references(plan: Plan, dataset: Dataset, tracker: Any, search_run_id: str, resume: bool,
                      echo: Callable[[str], None] = print) -> References | None:
    """The search's references: none with ``baseline: false``; on resume, those the search run recorded; else trained and recorded."""
    if not plan.space.baseline.enabled:
        return None
    if resume:
        found = tracker.load_references(search_run_id)
        if found and set(found.get("val", {})) == set(plan.problem.task_names):
            return found
    references = train_references(plan, dataset, echo)
    tracker.log_references(search_run_id, references)
    return references
