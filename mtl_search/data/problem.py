"""Tasks, their losses and metrics, and the direction in which each metric improves."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import SpaceError, did_you_mean
from .features import TableFeatures

KINDS = ("regression", "binary", "multiclass")


@dataclass(frozen=True)
class Metric:
    """A metric over a whole split: ``fn(prediction, target) -> float``."""

    name: str
    direction: str  # "min" or "max"
    fn: Callable[[torch.Tensor, torch.Tensor], float]


def _mse(pred: torch.Tensor, y: torch.Tensor) -> float:
    return F.mse_loss(pred.view(-1), y.view(-1).float()).item()


def _mae(pred: torch.Tensor, y: torch.Tensor) -> float:
    return F.l1_loss(pred.view(-1), y.view(-1).float()).item()


def _binary_logloss(logit: torch.Tensor, y: torch.Tensor) -> float:
    return F.binary_cross_entropy_with_logits(logit.view(-1), y.view(-1).float()).item()


def _binary_accuracy(logit: torch.Tensor, y: torch.Tensor) -> float:
    return ((logit.view(-1) > 0).long() == y.view(-1).long()).float().mean().item()


def binary_auc(score: torch.Tensor, y: torch.Tensor) -> float:
    """Area under the ROC curve by the rank statistic (ties get their average rank)."""
    score, y = score.view(-1).double(), y.view(-1).bool()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(score)
    sorted_scores = score[order]
    ranks = torch.empty_like(score)
    ranks[order] = torch.arange(1, len(score) + 1, dtype=torch.float64)
    # average the ranks of tied scores
    unique, inverse, counts = torch.unique(sorted_scores, return_inverse=True, return_counts=True)
    if len(unique) < len(score):
        rank_sums = torch.zeros(len(unique), dtype=torch.float64).index_add_(
            0, inverse, torch.arange(1, len(score) + 1, dtype=torch.float64)
        )
        ranks[order] = (rank_sums / counts)[inverse]
    return ((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()


def _multiclass_logloss(logits: torch.Tensor, y: torch.Tensor) -> float:
    return F.cross_entropy(logits, y.view(-1).long()).item()


def _multiclass_accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == y.view(-1).long()).float().mean().item()


METRICS: dict[str, dict[str, Metric]] = {
    "regression": {
        "mse": Metric("mse", "min", _mse),
        "mae": Metric("mae", "min", _mae),
    },
    "binary": {
        "auc": Metric("auc", "max", binary_auc),
        "logloss": Metric("logloss", "min", _binary_logloss),
        "accuracy": Metric("accuracy", "max", _binary_accuracy),
    },
    "multiclass": {
        "accuracy": Metric("accuracy", "max", _multiclass_accuracy),
        "logloss": Metric("logloss", "min", _multiclass_logloss),
    },
}
DEFAULT_METRIC = {"regression": "mse", "binary": "auc", "multiclass": "accuracy"}


@dataclass(frozen=True)
class Task:
    """One prediction target.

    kind: ``regression`` (MSE loss), ``binary`` (BCE on a logit) or ``multiclass``
    (cross-entropy over ``classes`` logits). ``metric`` is evaluated on val/test splits.
    """

    name: str
    kind: str
    metric: str = ""
    classes: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SpaceError(f"tasks.{self.name}.kind", f"unknown kind {self.kind!r}; {did_you_mean(self.kind, KINDS)}")
        if not self.metric:
            object.__setattr__(self, "metric", DEFAULT_METRIC[self.kind])
        if self.metric not in METRICS[self.kind]:
            raise SpaceError(
                f"tasks.{self.name}.metric",
                f"unknown metric {self.metric!r} for a {self.kind} task; {did_you_mean(self.metric, METRICS[self.kind])}",
            )
        if self.kind == "multiclass" and self.classes < 2:
            raise SpaceError(f"tasks.{self.name}.classes", "a multiclass task needs classes >= 2")

    @property
    def output_dim(self) -> int:
        """Width of the model's output for this task (one logit, or one per class)."""
        return self.classes if self.kind == "multiclass" else 1

    @property
    def direction(self) -> str:
        """``min`` or ``max``: the direction in which the task's metric improves."""
        return METRICS[self.kind][self.metric].direction

    def loss(self, prediction: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Training loss: MSE, BCE-with-logits or cross-entropy."""
        if self.kind == "regression":
            return F.mse_loss(prediction.view(-1), target.view(-1).float(), reduction=reduction)
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(prediction.view(-1), target.view(-1).float(), reduction=reduction)
        return F.cross_entropy(prediction, target.view(-1).long(), reduction=reduction)

    def log_likelihood(self, prediction: torch.Tensor, target: torch.Tensor, variance: float | torch.Tensor = 1.0) -> torch.Tensor:
        """Per-row log p(target | prediction), shape (rows,).

        Regression: Gaussian with mean ``prediction`` and the given noise ``variance``;
        binary: Bernoulli with probability sigmoid(logit); multiclass: categorical over
        softmax(logits). Computed in log space, so it stays finite for very bad predictions.
        """
        if self.kind == "regression":
            variance = torch.as_tensor(variance, dtype=prediction.dtype, device=prediction.device)
            residual = prediction.reshape(-1) - target.reshape(-1).to(prediction.dtype)
            return -0.5 * (torch.log(2 * math.pi * variance) + residual.square() / variance)
        return -self.loss(prediction, target, reduction="none")

    def evaluate(self, prediction: torch.Tensor, target: torch.Tensor) -> float:
        """The task's metric over a whole split."""
        return METRICS[self.kind][self.metric].fn(prediction, target)


@dataclass(frozen=True)
class Problem:
    """The input shape (without the batch dimension) and the tasks.

    ``features`` describes the columns of a table's ``x`` (``mtl_search.data.features.TableFeatures``:
    numeric values, then categorical codes) when the data came from a table; the model's
    input layer is built from it. None for inputs the backbone takes as they are.
    """

    input_shape: tuple[int, ...]
    tasks: tuple[Task, ...] = field(default_factory=tuple)
    features: TableFeatures | None = field(default=None, compare=False)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)
