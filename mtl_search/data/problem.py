"""Tasks, their losses and metrics, and the direction in which each metric improves."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import SpaceError, did_you_mean
from ..record import METRIC_DIRECTIONS
from .features import TableFeatures

KINDS = ("regression", "binary", "multiclass")


@dataclass(frozen=True)
class Metric:
    """A metric over a whole split: ``fn(prediction, target, weight=None) -> float``.

    ``weight`` (one non-negative number per row, or None for all ones) makes every metric a
    weighted one: MSE, MAE, logloss and accuracy become weighted means over the rows
    (``sum w_i m_i / sum w_i``), AUC the weighted rank statistic (see :func:`binary_auc`).
    A row of weight 0 contributes nothing.
    """

    name: str
    fn: Callable[..., float]

    @property
    def direction(self) -> str:
        """``min`` or ``max`` (:data:`mtl_search.record.METRIC_DIRECTIONS`)."""
        return METRIC_DIRECTIONS[self.name]


def weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """``mean(values)``, or ``sum(w * values) / sum(w)`` with per-row weights (0 when every weight is 0)."""
    if weight is None:
        return values.mean()
    weight = weight.reshape(-1).to(values.dtype)
    # all weights 0: 0 / tiny = 0, with the graph kept and no host-device sync
    return (weight * values).sum() / weight.sum().clamp_min(torch.finfo(values.dtype).tiny)


def _mse(pred: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> float:
    return weighted_mean((pred.view(-1) - y.view(-1).float()).square(), weight).item()


def _mae(pred: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> float:
    return weighted_mean((pred.view(-1) - y.view(-1).float()).abs(), weight).item()


def _binary_logloss(logit: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> float:
    losses = F.binary_cross_entropy_with_logits(logit.view(-1), y.view(-1).float(), reduction="none")
    return weighted_mean(losses, weight).item()


def _binary_accuracy(logit: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> float:
    return weighted_mean(((logit.view(-1) > 0).long() == y.view(-1).long()).float(), weight).item()


def binary_auc(score: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> float:
    """Area under the ROC curve by the rank statistic (ties get their average rank).

    With per-row ``weight``: the weighted rank statistic, ``sum_{i pos, j neg} w_i w_j
    [s_i > s_j] (+ 1/2 on ties) / (sum_pos w)(sum_neg w)`` — the AUC of the data set in which
    row i appears w_i times. NaN when either class has no (weighted) row.
    """
    if weight is not None:
        return _weighted_auc(score, y, weight)
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


def _weighted_auc(score: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> float:
    score, y, weight = score.view(-1).double(), y.view(-1).bool(), weight.view(-1).double()
    unique, inverse = torch.unique(score, return_inverse=True)  # sorted distinct scores
    pos = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, torch.where(y, weight, 0.0))
    neg = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, torch.where(y, 0.0, weight))
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos <= 0 or total_neg <= 0:
        return float("nan")
    below = torch.cumsum(neg, 0) - neg  # negative weight strictly below each distinct score
    return float((pos * (below + 0.5 * neg)).sum() / (total_pos * total_neg))


def _multiclass_logloss(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> float:
    return weighted_mean(F.cross_entropy(logits, y.view(-1).long(), reduction="none"), weight).item()


def _multiclass_accuracy(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> float:
    return weighted_mean((logits.argmax(dim=1) == y.view(-1).long()).float(), weight).item()


METRICS: dict[str, dict[str, Metric]] = {
    "regression": {
        "mse": Metric("mse", _mse),
        "mae": Metric("mae", _mae),
    },
    "binary": {
        "auc": Metric("auc", binary_auc),
        "logloss": Metric("logloss", _binary_logloss),
        "accuracy": Metric("accuracy", _binary_accuracy),
    },
    "multiclass": {
        "accuracy": Metric("accuracy", _multiclass_accuracy),
        "logloss": Metric("logloss", _multiclass_logloss),
    },
}
DEFAULT_METRIC = {"regression": "mse", "binary": "auc", "multiclass": "accuracy"}


@dataclass(frozen=True)
class Task:
    """One prediction target.

    kind: ``regression`` (MSE loss), ``binary`` (BCE on a logit) or ``multiclass``
    (cross-entropy over ``classes`` logits). ``metric`` is evaluated on val/test splits.
    ``after``: the task's parent in a conversion funnel (a binary task), or None. A funnel
    task's label is only meaningful where the parent's is positive: the data set masks it
    elsewhere (:func:`mtl_search.data.dataset.apply_funnel_masks`), and the model's prediction
    of it is conditional on the parent (e.g. P(convert | click)). ``labels``: a table's class
    values as text, class ``k`` is ``labels[k]`` (binary: negative, then positive); empty when
    the data set gives classes as numbers only.

    ``target_mean``, ``target_std``: a regression target is standardised with them (the
    training split's mean and standard deviation, :func:`mtl_search.data.dataset.standardize_targets`):
    the data set's targets, the model's outputs and the training loss are on the scale
    ``(y - target_mean) / target_std``; :meth:`evaluate` and :meth:`to_units` turn a value of
    that scale back into the target's own units. The defaults (0, 1) leave a target as it is.
    """

    name: str
    kind: str
    metric: str = ""
    classes: int = 0
    after: str | None = None
    target_mean: float = 0.0
    target_std: float = 1.0
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(str(label) for label in self.labels))  # read back from JSON as a list
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
        if not (math.isfinite(self.target_mean) and math.isfinite(self.target_std) and self.target_std > 0):
            raise ValueError(f"task {self.name!r}: target_mean must be finite and target_std finite and > 0, "
                             f"got {self.target_mean!r}, {self.target_std!r}")
        if self.kind != "regression" and (self.target_mean, self.target_std) != (0.0, 1.0):
            raise ValueError(f"task {self.name!r}: only a regression target is standardised; this one is {self.kind}")

    @property
    def standardised(self) -> bool:
        """Whether the target is on a standardised scale (statistics other than 0 and 1)."""
        return (self.target_mean, self.target_std) != (0.0, 1.0)

    def to_units(self, value: torch.Tensor) -> torch.Tensor:
        """A regression value of the standardised scale (a prediction, a target) in the target's own units; others unchanged."""
        if not self.standardised:
            return value
        return value.to(torch.float32) * self.target_std + self.target_mean

    def standardise(self, value: torch.Tensor) -> torch.Tensor:
        """A regression value in the target's units on the standardised scale (the inverse of :meth:`to_units`)."""
        if not self.standardised:
            return value
        return (value.to(torch.float32) - self.target_mean) / self.target_std

    @property
    def output_dim(self) -> int:
        """Width of the model's output for this task (one logit, or one per class)."""
        return self.classes if self.kind == "multiclass" else 1

    @property
    def direction(self) -> str:
        """``min`` or ``max``: the direction in which the task's metric improves."""
        return METRICS[self.kind][self.metric].direction

    def loss(self, prediction: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
             weight: torch.Tensor | None = None) -> torch.Tensor:
        """Training loss: MSE, BCE-with-logits or cross-entropy; with per-row ``weight``, the weighted mean ``sum w l / sum w``."""
        if self.kind == "regression":
            per_row = F.mse_loss(prediction.view(-1), target.view(-1).float(), reduction="none")
        elif self.kind == "binary":
            per_row = F.binary_cross_entropy_with_logits(prediction.view(-1), target.view(-1).float(), reduction="none")
        else:
            per_row = F.cross_entropy(prediction, target.view(-1).long(), reduction="none")
        if reduction == "none":
            return per_row
        if reduction == "sum":
            return per_row.sum() if weight is None else (weight.reshape(-1).to(per_row.dtype) * per_row).sum()
        return weighted_mean(per_row, weight)

    def log_likelihood(self, prediction: torch.Tensor, target: torch.Tensor, variance: float | torch.Tensor = 1.0) -> torch.Tensor:
        """Per-row log p(target | prediction), shape (rows,).

        Regression: Gaussian with mean ``prediction`` and the given noise ``variance``;
        binary: Bernoulli with probability sigmoid(logit); multiclass: categorical over
        softmax(logits). Computed in log space, so it stays finite for very bad predictions.
        Values are on the model's scale (a standardised target's), as :meth:`loss`'s.
        """
        if self.kind == "regression":
            variance = torch.as_tensor(variance, dtype=prediction.dtype, device=prediction.device)
            residual = prediction.reshape(-1) - target.reshape(-1).to(prediction.dtype)
            return -0.5 * (torch.log(2 * math.pi * variance) + residual.square() / variance)
        return -self.loss(prediction, target, reduction="none")

    def evaluate(self, prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> float:
        """The task's metric over a whole split (weighted by ``weight`` per row when given; see :class:`Metric`).

        ``prediction`` and ``target`` are on the model's scale (as a Split holds the target);
        a standardised regression target's metric is computed in its own units.
        """
        prediction, target = self.to_units(prediction), self.to_units(target)
        if weight is None:
            return METRICS[self.kind][self.metric].fn(prediction, target)
        return METRICS[self.kind][self.metric].fn(prediction, target, weight)


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

    def __post_init__(self) -> None:
        names = [t.name for t in self.tasks]
        for task in self.tasks:
            if task.after is None:
                continue
            where = f"tasks.{task.name}.after"
            if task.after == task.name:
                raise SpaceError(where, "a task cannot come after itself")
            if task.after not in names:
                raise SpaceError(where, f"unknown parent task {task.after!r}; {did_you_mean(task.after, names)}")
            parent = self.tasks[names.index(task.after)]
            if parent.kind != "binary":
                raise SpaceError(where, f"the parent of a funnel task must be a binary task; {parent.name!r} is {parent.kind}")
            seen, step = {task.name}, parent
            while step.after is not None:  # walk up the funnel: a cycle never reaches a root
                if step.name in seen:
                    raise SpaceError(where, f"the funnel through {task.name!r} is a cycle")
                seen.add(step.name)
                step = self.tasks[names.index(step.after)]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def ancestors(self, name: str) -> list[str]:
        """The funnel above task ``name``, nearest parent first (empty for a task with no ``after``)."""
        chain, step = [], self.task(name).after
        while step is not None:
            chain.append(step)
            step = self.task(step).after
        return chain

    def funnel_order(self) -> list[str]:
        """The task names with every parent before its funnel children (otherwise in the problem's order)."""
        return sorted(self.task_names, key=lambda n: len(self.ancestors(n)))

    @property
    def has_funnel(self) -> bool:
        """Whether some task names a parent (``after``)."""
        return any(t.after is not None for t in self.tasks)

    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)
