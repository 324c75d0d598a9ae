"""Strategy: one sharing method that a plugin registers and the search samples."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from .data.problem import Problem
from .knobs import Knob
from .nn.backbones import Backbone
from .nn.model import MultiTaskModel

if TYPE_CHECKING:
    from .training.trainer import Trainer


class Strategy:
    """Base class of a sharing strategy.

    Class attributes a subclass sets:

    - ``name``: unique key under ``strategies:`` in a space (e.g. ``"mmoe"``).
    - ``family``: the family it belongs to (e.g. ``"mixture_of_experts"``).
    - ``knobs``: ``{knob name: Knob}`` with default ranges; a space may fix or narrow each.
    - ``backbones``: the backbone kinds it can use, or None for every kind.
    - ``declares_shared_parameters``: True when its models list the parameters several
      tasks use in ``MultiTaskModel.shared_parameters()`` (possibly empty for some knob
      values, e.g. no shared block). Weightings that act on shared gradients (GradNorm,
      gradient aggregators) are only paired with such strategies.

    ``build`` makes a fresh model for one trial. ``fit`` trains it; override it only for a
    method with its own schedule, composing the trainer's primitives
    (``Trainer.make_optimizer``, ``train_epoch``, ``evaluate``, ``fit``). ``fully_shared``
    answers, for a method with a fully shared configuration, the knob values that give it
    (``mtl-search groups`` measures the task affinity on that model).
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    description: ClassVar[str] = ""
    knobs: ClassVar[dict[str, Knob]] = {}
    backbones: ClassVar[tuple[str, ...] | None] = None
    declares_shared_parameters: ClassVar[bool] = False

    def supports(self, backbone_kind: str) -> bool:
        """Whether this strategy can build on a backbone of this kind."""
        return self.backbones is None or backbone_kind in self.backbones

    def check(self, knobs: dict[str, Knob], backbone: dict[str, Knob], path: str) -> None:
        """Validate knob ranges together, before any trial runs (default: nothing to check).

        ``knobs`` are this strategy's knobs after a space's overrides, ``backbone`` the
        backbone kind's knobs after overrides (ranges, not sampled values: a check reasons
        about every value a range allows). Raise ``SpaceError(f"{path}.{knob}", why)`` for a
        combination no trial could run; ``mtl-search validate`` then exits 2 naming the key.
        """

    def check_problem(self, knobs: dict[str, Knob], problem: Problem, path: str) -> None:
        """Validate the strategy against the data set's tasks, before any trial runs (default: nothing to check).

        Called by ``validate`` after ``check``: for knobs that name tasks (a partition of the
        tasks, a written tree; raise ``SpaceError(f"{path}.{knob}", why)`` as in ``check``), and
        for methods defined for some task structures only (a conversion funnel: tasks with
        ``after``; raise ``SpaceError(path, why)``). The contract check (``mtl_search.testing``)
        checks a strategy that refuses its plain problem on a problem with a funnel instead.
        """

    def build(self, problem: Problem, backbone: Backbone, params: dict[str, Any]) -> MultiTaskModel:
        """A new model for ``problem`` on ``backbone`` with the sampled knob values ``params``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def fully_shared(self, knobs: dict[str, Knob], depth: int) -> dict[str, Any] | None:
        """The knob values of this strategy's fully shared configuration, or None when it has none (the default).

        Fully shared: every task reads the same trunk, all ``depth`` blocks of the backbone,
        and only the task towers are private (hard sharing's ``shared_depth = depth``).
        ``knobs`` are this strategy's ranges after a space's overrides, ``depth`` the
        backbone's depth. Return only the knobs that make the configuration fully shared
        (e.g. ``{"shared_depth": depth}``); ``mtl-search groups`` gives every other knob its
        range's midpoint (``Knob.midpoint``), and trains the first strategy of the space that
        answers (a value outside the space's range is allowed: the affinity run is no trial).
        """
        return None

    def fit(self, model: MultiTaskModel, trainer: "Trainer") -> MultiTaskModel:
        """Train ``model`` and return the model to evaluate (default: the trainer's loop)."""
        trainer.fit(model)
        return model

    def __repr__(self) -> str:
        return f"<Strategy {self.name} ({self.family})>"
