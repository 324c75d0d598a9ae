"""Weighting: how the per-task losses become one update; the core's default, ``equal``, is defined and registered here."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar, Protocol

import torch
from torch import nn

from ..config import DEFAULT_WEIGHTING
from ..hookspecs import hookimpl
from ..knobs import Knob

if TYPE_CHECKING:
    from ..data.problem import Problem


class _StrategyTraits(Protocol):
    """What a weighting may ask of a strategy (``mtl_search.Strategy`` has both)."""

    name: str
    declares_shared_parameters: bool


class Weighting(nn.Module):
    """Base class of a loss weighting method; one instance per trial.

    ``combine`` turns per-task losses into one scalar; ``backward`` computes the gradients
    (override it for methods that manipulate per-task gradients). Parameters of the
    weighting itself (e.g. learned log-variances) are optimised with the model's.

    Class attributes a subclass sets: ``name``, ``description``, ``knobs`` (searched per
    trial as ``weighting.<name>.<knob>``; a space narrows them under
    ``training.weighting_options``) and ``needs_shared_parameters`` (True for methods that
    read or rewrite the gradients of ``MultiTaskModel.shared_parameters()``).

    Devices: the trainer calls ``.to(device)``, so keep state in parameters and buffers
    (state that is neither, e.g. a Python list, goes in ``get_extra_state``) and create a
    step's tensors on the losses' device. Early stopping restores ``state_dict()`` with the
    best weights.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    knobs: ClassVar[dict[str, Knob]] = {}
    needs_shared_parameters: ClassVar[bool] = False

    def __init__(self, tasks: list[str], **params: object):
        super().__init__()
        self.tasks = list(tasks)
        self.params = params

    @classmethod
    def incompatibility(cls, strategy: _StrategyTraits) -> str | None:
        """Why this method cannot train ``strategy``'s models, or None when it can (checked by ``validate``)."""
        if cls.needs_shared_parameters and not strategy.declares_shared_parameters:
            return (f"it acts on the gradients of the shared parameters, and strategy {strategy.name!r} "
                    "declares none (Strategy.declares_shared_parameters is False)")
        return None

    def setup(self, problem: "Problem") -> None:
        """Called once by the trainer before training, with the problem (task kinds, ...)."""

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def backward(self, losses: dict[str, torch.Tensor], extra: torch.Tensor, model: nn.Module) -> torch.Tensor:
        """Backpropagate ``combine(losses) + extra`` (``extra``: the model's regularisation); return that loss."""
        total = self.combine(losses) + extra
        total.backward()
        return total

    def after_step(self) -> None:
        """Called after every optimiser step (e.g. to renormalise learned weights)."""

    def on_epoch_end(self, epoch: int, train_losses: dict[str, float]) -> None:
        """Called after each training epoch with the epoch's mean loss per task."""

    def weights(self) -> dict[str, float]:
        """The current weight of each task, recorded per epoch."""
        return {t: 1.0 for t in self.tasks}


class Equal(Weighting):
    """The plain sum of the task losses, every weight 1 (the default when a space names no weighting)."""

    name = DEFAULT_WEIGHTING
    description = "sum of the task losses, every weight 1"

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(losses.values())).sum()


@hookimpl
def register_weightings(register: Callable[[type[Weighting]], None]) -> None:
    register(Equal)
