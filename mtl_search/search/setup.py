"""A trial's set-up, the one way every training of the product starts: seed, model, weighting, trainer.

:func:`set_up_trial` is used by a search trial (``search.trial``), by a fixed single-task
reference trained on the driver (``search.references``) and by the joint training of
``mtl-search groups`` (``search.grouping``); the preflight (``search.prepare``) builds each
strategy's smallest model through its model step, :func:`build_model`. A trial's seed comes
from :func:`trial_seed`. Torch's thread count is a process setting and stays the caller's.
"""
from __future__ import annotations

from typing import Any, Callable

from ..config import TrialConfig
from ..data.dataset import Dataset
from ..data.problem import Problem
from ..nn.backbones import BackboneKind
from ..nn.create import create_model
from ..nn.model import MultiTaskModel
from ..strategy import Strategy
from ..training.trainer import TrainConfig, Trainer, seed_everything
from ..training.weighting import Weighting

TRIAL_SEED_STRIDE = 100_003  # a trial's seed: the search's, times this, plus the trial's number
REPEAT_SEED_STRIDE = 1_000_003  # a repeat's seed: the trial's own, moved by this per repeat (no trial number reaches it)


def trial_seed(search_seed: int, number: int, repeat: int = 0) -> int:
    """The seed of trial ``number`` (its ``repeat``-th seed; 0: the trial as searched) of a search seeded ``search_seed``."""
    return search_seed * TRIAL_SEED_STRIDE + number + REPEAT_SEED_STRIDE * repeat


def build_model(problem: Problem, strategy: Strategy, backbone_kind: BackboneKind, config: TrialConfig) -> MultiTaskModel:
    """The untrained model of ``config`` (its knobs, backbone and input-layer values), through the one model factory ``create_model``."""
    return create_model(problem, strategy, backbone_kind, config.knobs, config.backbone, config.inputs)


def set_up_trial(dataset: Dataset, strategy: Strategy, backbone_kind: BackboneKind, config: TrialConfig,
                 weighting: type[Weighting], *, epochs: int, patience: int, seed: int, device: str = "cpu",
                 report: Callable[[dict[str, Any]], None] | None = None,
                 affinity_every: int = 0) -> tuple[MultiTaskModel, Trainer]:
    """Seed everything with ``seed``, then build ``config``'s model on ``device`` and the trainer that will train it.

    The trainer trains on ``dataset`` (its problem is the model's) with ``config.training``'s
    settings over ``epochs``/``patience``, the weighting ``weighting(task names,
    **config.weighting_params)``, ``report`` called after every epoch and the task affinity
    measured every ``affinity_every`` steps (0: never). Returns ``(model, trainer)``; train
    with ``strategy.fit(model, trainer)``.
    """
    seed_everything(seed)
    model = build_model(dataset.problem, strategy, backbone_kind, config).to(device)
    settings = TrainConfig(epochs=epochs, patience=patience, seed=seed, device=device, affinity_every=affinity_every, **config.training)
    trainer = Trainer(dataset, settings, weighting(dataset.problem.task_names, **config.weighting_params), report=report)
    return model, trainer
