"""Weighting: how the per-task losses become one update."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from .knobs import Knob


class Weighting(nn.Module):
    """Base class of a loss weighting method; one instance per trial.

    ``combine`` turns per-task losses into one scalar; ``backward`` computes the gradients
    (override it for methods that manipulate per-task gradients). Parameters of the
    weighting itself (e.g. learned log-variances) are optimised with the model's.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    knobs: ClassVar[dict[str, Knob]] = {}

    def __init__(self, tasks: list[str], **params: Any):
        super().__init__()
        self.tasks = list(tasks)
        self.params = params

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def backward(self, losses: dict[str, torch.Tensor], extra: torch.Tensor, model: nn.Module) -> torch.Tensor:
        """Backpropagate ``combine(losses) + extra`` (``extra``: the model's regularisation); return that loss."""
        total = self.combine(losses) + extra
        total.backward()
        return total

    def on_epoch_end(self, epoch: int, train_losses: dict[str, float]) -> None:
        """Called after each training epoch with the epoch's mean loss per task."""

    def weights(self) -> dict[str, float]:
        """The current weight of each task, recorded per epoch."""
        return {t: 1.0 for t in self.tasks}
