"""What runs inside one Ray Tune trial: decode the sampled configuration, build, train, evaluate, report.

Nothing here knows a strategy by name: the strategy builds its model and, if it has its
own schedule, trains it through ``Strategy.fit``.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from ..config import DEFAULT_WEIGHTING, TrialConfig
from ..data.dataset import Dataset
from ..data.problem import Problem
from ..nn.backbones import BackboneKind
from ..nn.model import MultiTaskModel, SharingMap
from ..record import DEVICE, EPOCH, NODE_ID, TrialResult, epoch_costs, val_key
from ..results.metrics import gain_metrics, val_gain_metrics
from ..results.saved_models import save_model
from ..strategy import Strategy
from ..training.weighting import Equal
from .references import SingleTask, task_dataset
from .setup import set_up_trial, trial_seed
from .space import Plan


@dataclass
class TrialPlan:
    """Everything a worker needs besides the data (shipped once through Ray's object store)."""

    problem: Problem
    strategies: dict[str, Strategy]
    backbone_kind: BackboneKind
    weightings: dict[str, type]
    epochs: int
    patience: int
    seed: int
    cpus_per_trial: float
    gpus_per_trial: float
    max_trial_seconds: float | None = None
    references: dict[str, dict[str, float]] | None = None  # single-task references' {"val": {task: m}, "test": {...}}
    groups: dict[str, tuple[str, ...]] | None = None  # group objectives: name -> tasks (their mean gain)
    affinity_every: int = 0


def reference_view(dataset: Dataset, plan: TrialPlan, task: str) -> tuple[Dataset, TrialPlan]:
    """What a single-task reference trial of ``task`` trains on: the task's own data, its one-task model, equal weighting, no gains."""
    data = task_dataset(dataset, task)
    return data, replace(plan, problem=data.problem, strategies={SingleTask.name: SingleTask()},
                         weightings={DEFAULT_WEIGHTING: Equal}, references=None, groups=None, affinity_every=0)


def _sharing_map(model: MultiTaskModel, x: torch.Tensor) -> dict:
    model.eval()
    with torch.no_grad():
        return model.sharing_map(x)


def measure_latency(model: torch.nn.Module, x: torch.Tensor, repeats: int = 5) -> float:
    """Median seconds per sample of an inference forward pass on ``x``."""
    model.eval()
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] / max(len(x), 1)


def select_device(gpus_per_trial: float, cuda_available: bool) -> str:
    """``cuda`` when the trial was given a GPU (a fraction counts) and CUDA is usable, else ``cpu``.

    A trial given a GPU on a machine without CUDA fails rather than silently training on CPU:
    the user asked for GPUs, and Ray only places such a trial on a node that reports one.
    """
    if gpus_per_trial <= 0:
        return "cpu"
    if not cuda_available:
        raise RuntimeError(f"ray.gpus_per_trial={gpus_per_trial:g} but CUDA is not available on this node")
    return "cuda"


class TrialTimeout(TimeoutError):
    """A trial ran past ``training.max_trial_seconds`` (checked after every epoch)."""


def train_trial(config: dict[str, Any], dataset: Dataset, plan: TrialPlan, report: Callable[..., None],
                placement: dict[str, str] | None = None) -> dict[str, Any]:
    """Train and evaluate one configuration; ``report(metrics, checkpoint_dir=None)`` receives every epoch and the final result.

    ``placement`` (e.g. the Ray node id) is added to every report, with the device, so the
    driver can record where a trial ran even when it fails.
    """
    parts = TrialConfig.from_flat(config)
    if parts.reference_task is not None:
        dataset, plan = reference_view(dataset, plan, parts.reference_task)
    threads = max(1, int(plan.cpus_per_trial))
    torch.set_num_threads(threads)
    device = select_device(plan.gpus_per_trial, torch.cuda.is_available())
    placement = {**(placement or {}), DEVICE: device}
    dataset.problem = plan.problem
    directions = {t.name: t.direction for t in plan.problem.tasks}

    def report_epoch(metrics: dict[str, Any]) -> None:  # called from the first epoch on, once per_epoch and start are set below
        gains = {} if plan.references is None else val_gain_metrics(
            directions, {t: metrics.get(val_key(t), float("nan")) for t in directions}, plan.references, plan.groups or {})
        report({**metrics, **gains, **per_epoch})
        elapsed = time.perf_counter() - start
        if plan.max_trial_seconds is not None and elapsed > plan.max_trial_seconds:
            raise TrialTimeout(f"trial exceeded training.max_trial_seconds={plan.max_trial_seconds:g}: "
                               f"{elapsed:.2f}s after epoch {metrics.get(EPOCH)}")

    model, trainer = set_up_trial(dataset, plan.strategies[parts.strategy], plan.backbone_kind, parts, plan.weightings[parts.weighting],
                                  epochs=plan.epochs, patience=plan.patience, seed=trial_seed(plan.seed, parts.number, parts.repeat),
                                  device=device, report=report_epoch, affinity_every=plan.affinity_every)
    # Every report must carry every objective Tune's searcher watches (the Pareto scheduler's rungs read them).
    per_epoch = epoch_costs(float(model.inference_parameters()), placement)
    start = time.perf_counter()
    model = plan.strategies[parts.strategy].fit(model, trainer)
    train_seconds = time.perf_counter() - start

    val = trainer.evaluate(model, trainer.dataset.val)
    test = trainer.evaluate(model, trainer.dataset.test)
    maps = _sharing_map(model, trainer.dataset.val.x[:1024])
    affinity = trainer.affinity.mean() if trainer.affinity is not None else None
    if affinity is not None:
        maps["task_affinity"] = SharingMap(affinity, plan.problem.task_names, plan.problem.task_names)
    result = TrialResult(
        val=val.metrics, test=test.metrics, params=float(model.inference_parameters()),
        latency=measure_latency(model, trainer.dataset.val.x[:256]), train_seconds=train_seconds,
        epochs_trained=len(trainer.history), score=trainer.score(val.losses), placement=placement,
        gains={} if plan.references is None else gain_metrics(directions, val.metrics, test.metrics, plan.references, plan.groups or {}),
        model_metrics={**model.trial_metrics(), **(trainer.affinity.metrics() if trainer.affinity is not None else {})},
        model_tags=model.trial_tags(), sharing_maps={k: v.to_dict() for k, v in maps.items()},
    ).to_flat()
    with tempfile.TemporaryDirectory() as tmp:
        save_model(tmp, model, config, plan.problem, plan.backbone_kind.name)
        report(result, checkpoint_dir=tmp)
    return result


def tune_trainable(config: dict[str, Any], dataset: Dataset, plan: TrialPlan) -> None:
    """The Ray Tune function trainable (``tune.with_parameters`` supplies ``dataset`` and ``plan``)."""
    import ray
    from ray import tune

    def report(metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)

    train_trial(config, dataset, plan, report, {NODE_ID: ray.get_runtime_context().get_node_id()})


def make_trial_plan(plan: Plan, references: dict[str, dict[str, float]] | None = None) -> TrialPlan:
    """What a worker needs to train any configuration of ``plan`` (everything but the data); ``references``: the
    single-task references' metrics its gains are measured against (``search.references``)."""
    space = plan.space
    return TrialPlan(
        problem=plan.problem,
        strategies={name: s for name, (s, _) in plan.strategies.items()},
        backbone_kind=plan.backbone_kind,
        weightings={name: cls for name, (cls, _) in plan.weightings.items()},
        epochs=space.epochs, patience=space.patience, seed=space.search.seed,
        cpus_per_trial=space.ray.cpus_per_trial, gpus_per_trial=space.ray.gpus_per_trial,
        max_trial_seconds=space.max_trial_seconds,
        references=references, groups={o.name: o.tasks for o in plan.objectives if o.tasks}, affinity_every=space.affinity_every,
    )
