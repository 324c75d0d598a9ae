"""The trainer: AdamW, minibatch epochs, evaluation, early stopping that restores the best weights.

Its methods are the primitives a strategy with its own schedule composes
(``make_optimizer``, ``train_epoch``, ``evaluate``, ``fit``).
"""
from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..data.dataset import Dataset, Split
from ..knobs import Float, Int, Knob
from ..nn.model import MultiTaskModel
from ..record import epoch_metrics
from .affinity import AffinityMeter
from .optim import make_optimizer
from .weighting import Weighting

EVAL_BATCH = 4096


@dataclass
class TrainConfig:
    """Training settings of one trial. Its field defaults are the defaults of a space's ``training:`` section."""

    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 5
    seed: int = 0
    device: str = "cpu"
    affinity_every: int = 0  # measure the lookahead task affinity every this many steps (0: never; training.affinity)


# the training settings a space may search, with their default ranges (a constant default is TrainConfig's)
TRAINING_KNOBS: dict[str, Knob] = {
    "batch_size": Int(16, 1024, log=True, minimum=1),
    "lr": Float(1e-4, 1e-2, log=True, minimum=0.0),
    "weight_decay": Float(0.0, 0.1, minimum=0.0),
}


@dataclass
class Evaluation:
    """Metric and mean loss per task on one split."""

    metrics: dict[str, float]
    losses: dict[str, float]


@dataclass
class EpochRecord:
    epoch: int
    train_loss: dict[str, float]
    val: Evaluation
    score: float
    weights: dict[str, float] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Trains a MultiTaskModel on a Dataset with a Weighting.

    ``report(metrics)`` is called after every epoch (the search passes Ray Tune's report);
    ``on_step(step, losses)`` after every optimiser step, with the step's number (1-based,
    counted over every phase this trainer has run) and its loss per task: a loss curve
    against training steps, finer than the epochs.
    Early stopping watches the *score*: the mean over tasks of the val loss divided by that
    task's val loss after the first epoch, so tasks on different scales count equally.
    """

    def __init__(self, dataset: Dataset, config: TrainConfig, weighting: Weighting, report: Callable[[dict[str, Any]], None] | None = None,
                 on_step: Callable[[int, dict[str, float]], None] | None = None):
        self.config = config
        self.device = torch.device(config.device)
        self.dataset = dataset.to(self.device)
        self.problem = dataset.problem
        self.weighting = weighting.to(self.device)
        self.weighting.setup(self.problem)
        self.report = report
        self.on_step = on_step
        self.steps = 0
        self.generator = torch.Generator().manual_seed(config.seed)
        self.history: list[EpochRecord] = []
        self._loss_scale: dict[str, float] | None = None
        self.affinity = AffinityMeter(self.problem.task_names, config.affinity_every) if config.affinity_every else None

    def make_optimizer(self, model: MultiTaskModel, groups: Iterable[dict[str, Any]] | None = None) -> torch.optim.Optimizer:
        """AdamW over ``groups`` (default: the model's ``param_groups``) plus the weighting's own parameters.

        A group may name another algorithm in ``"optimizer"`` (``"sgd"``, ``"adam"``; see ``mtl_search.optim``).
        """
        groups = list(groups if groups is not None else model.param_groups(self.config.lr))
        own = [p for p in self.weighting.parameters() if p.requires_grad]
        if own:
            groups.append({"params": own, "lr": self.config.lr, "weight_decay": 0.0})
        return make_optimizer(groups, lr=self.config.lr, weight_decay=self.config.weight_decay)

    def train_epoch(self, model: MultiTaskModel, optimizer: torch.optim.Optimizer, epoch: int, split: Split | None = None) -> dict[str, float]:
        """One pass over ``split`` (default: train) in shuffled minibatches; mean loss per task."""
        split = split if split is not None else self.dataset.train
        model.train()
        model.on_epoch_start(epoch)
        sums = {t: 0.0 for t in self.problem.task_names}
        batches = 0
        for batch in split.batches(self.config.batch_size, shuffle=True, generator=self.generator):
            optimizer.zero_grad(set_to_none=True)
            losses = model.task_losses(batch)
            if self.affinity is not None:
                self.affinity.observe(model, batch, losses, optimizer)
            total = self.weighting.backward(losses, model.regularization(), model)
            if not torch.isfinite(total):
                raise FloatingPointError(f"non-finite training loss {total.item()} at epoch {epoch}")
            optimizer.step()
            self.weighting.after_step()
            model.after_step()
            step_losses = {name: float(value.detach()) for name, value in losses.items()}
            for name, value in step_losses.items():
                sums[name] += value
            batches += 1
            self.steps += 1
            if self.on_step is not None:
                self.on_step(self.steps, step_losses)
        means = {t: s / max(batches, 1) for t, s in sums.items()}
        self.weighting.on_epoch_end(epoch, means)
        return means

    @torch.no_grad()
    def predict(self, model: nn.Module, split: Split) -> dict[str, torch.Tensor]:
        """The model's outputs per task over a whole split, in eval mode (a standardised target's on its standardised scale)."""
        model.eval()
        parts: dict[str, list[torch.Tensor]] = {t: [] for t in self.problem.task_names}
        for batch in split.batches(EVAL_BATCH):
            for name, pred in model(batch.x).items():
                parts[name].append(pred)
        return {t: torch.cat(p) for t, p in parts.items()}

    def evaluate(self, model: nn.Module, split: Split) -> Evaluation:
        """Each task's metric and mean loss over the rows where it has a label (both weighted by the task's sample weights, if any).

        The metric is in the target's own units; the loss is the training loss, on the scale
        the model trains on (a standardised regression target's: see ``Task.target_std``).
        """
        predictions = self.predict(model, split)
        metrics, losses = {}, {}
        for task in self.problem.tasks:
            pred, target, weight = predictions[task.name], split.y[task.name], split.weights(task.name)
            mask = split.labelled(task.name)
            if mask is not None:
                pred, target = pred[mask], target[mask]
                weight = weight[mask] if weight is not None else None
            metrics[task.name] = task.evaluate(pred, target, weight)
            losses[task.name] = float(task.loss(pred, target, weight=weight))
        return Evaluation(metrics, losses)

    def score(self, val_losses: dict[str, float]) -> float:
        """Mean of per-task val losses normalised by their first-epoch values (lower is better)."""
        if self._loss_scale is None:
            self._loss_scale = {t: max(abs(v), 1e-12) for t, v in val_losses.items()}
        return float(np.mean([val_losses[t] / self._loss_scale[t] for t in val_losses]))

    @property
    def next_epoch(self) -> int:
        """The number of the next epoch (1-based, counted over every phase this trainer has run)."""
        return len(self.history) + 1

    def end_epoch(self, model: nn.Module, epoch: int, train_loss: dict[str, float]) -> EpochRecord:
        """Evaluate on val, score, append to the history and report: the bookkeeping after any training epoch.

        A strategy with its own schedule calls it after its own epochs (made of one or more
        ``train_epoch`` calls) so they are reported like the trainer's.
        """
        val = self.evaluate(model, self.dataset.val)
        record = EpochRecord(epoch, train_loss, val, self.score(val.losses), self.weighting.weights())
        self.history.append(record)
        if self.report is not None:
            self.report(epoch_metrics(epoch, record.score, train_loss, val.metrics, val.losses, record.weights))
        return record

    def fit(self, model: MultiTaskModel, optimizer: torch.optim.Optimizer | None = None, epochs: int | None = None,
            split: Split | None = None) -> list[EpochRecord]:
        """Train with early stopping on the score; restore the best epoch's weights. Returns this call's epochs.

        Stops after ``patience`` epochs in a row without a better score. The weighting's
        state (its ``state_dict``: learned weights, GradNorm's initial losses, DWA's loss
        history) is restored with the best weights, so a later phase resumes from that epoch;
        the optimiser's moments are not (the phase's optimiser is discarded or re-made).
        """
        optimizer = optimizer or self.make_optimizer(model)
        epochs = self.config.epochs if epochs is None else epochs
        best, best_state, since_best = math.inf, None, 0
        records = []
        for _ in range(epochs):
            epoch = self.next_epoch
            record = self.end_epoch(model, epoch, self.train_epoch(model, optimizer, epoch, split))
            records.append(record)
            if record.score < best - 1e-9:
                best, since_best = record.score, 0
                best_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(self.weighting.state_dict()))
            else:
                since_best += 1
                if since_best >= self.config.patience:
                    break
        if best_state is not None:
            model.load_state_dict(best_state[0])
            self.weighting.load_state_dict(best_state[1])
        return records
