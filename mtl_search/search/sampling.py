"""What the search samples: a trial's define-by-run space, a reference trial's, the grid, and the sampler that draws from them."""
from __future__ import annotations

from typing import Any

from ..config import DEFAULT_WEIGHTING, NUMBER_KEY, REFERENCE_TASK_KEY, STRATEGY_KEY, WEIGHTING_KEY, param_name
from ..knobs import Fixed, Knob, dependency_order, knob_bounds
from .references import SingleTask
from .samplers import SAMPLERS
from .space import Plan, reference_ranges


class TrialSpace:
    """A multi-task trial's space, sampled define-by-run: the strategy, the input layer's and backbone's knobs, the strategy's knobs, then training knobs.

    A class rather than a closure: Tune pickles the searcher with its experiment state.
    """

    def __init__(self, plan: Plan):
        self.strategies = {name: knobs for name, (_, knobs) in plan.strategies.items()}
        self.backbone, self.training, self.weighting = plan.backbone, plan.training, plan.weighting
        self.backbone_kind, self.input_shape = plan.backbone_kind, plan.problem.input_shape
        self.weightings = {name: knobs for name, (_, knobs) in plan.weightings.items()}
        self.inputs = plan.inputs

    def __call__(self, trial: Any) -> dict[str, Any]:
        names = list(self.strategies)
        strategy = trial.suggest_categorical(STRATEGY_KEY, names) if len(names) > 1 else names[0]
        config: dict[str, Any] = {STRATEGY_KEY: strategy, NUMBER_KEY: trial.number}
        _suggest_all(trial, "inputs", self.inputs, config)
        backbone = _suggest_all(trial, "backbone", self.backbone, config)
        # a strategy's bound may name any value of the built backbone, derived ones included (conv: depth = len(channels))
        built = self.backbone_kind.build(self.input_shape, **backbone)
        _suggest_all(trial, strategy, self.strategies[strategy], config, {**backbone, **built.params, "depth": built.depth})
        _suggest_all(trial, "training", self.training, config)
        weighting = self.weighting.suggest(trial, WEIGHTING_KEY)
        config[WEIGHTING_KEY] = weighting
        _suggest_all(trial, f"weighting.{weighting}", self.weightings[weighting], config)
        return config


class ReferenceSpace:
    """The define-by-run space of one task's single-task reference trials: the references' ranges, then the tower width.

    The backbone, input and training ranges are the space's (``baseline:`` pins some as
    constants, ``search.space.reference_ranges``); the tower width is ``baseline.tower_width``
    or searched over :class:`~mtl_search.search.references.SingleTask`'s default range.
    """

    def __init__(self, plan: Plan, task: str):
        ranges = reference_ranges(plan)
        self.task = task
        self.inputs, self.backbone, self.training = ranges["inputs"], ranges["backbone"], ranges["training"]
        width = plan.space.baseline.tower_width
        self.tower = {"tower_width": SingleTask.knobs["tower_width"] if width is None else Fixed(width)}
        self.baseline, self.sampler_name, self.strategies = plan.space.baseline, plan.space.search.sampler, len(plan.strategies)
        self.seed = plan.space.search.seed + 1000 * (plan.problem.task_names.index(task) + 1)

    def __call__(self, trial: Any) -> dict[str, Any]:
        config: dict[str, Any] = {STRATEGY_KEY: SingleTask.name, NUMBER_KEY: trial.number, REFERENCE_TASK_KEY: self.task}
        _suggest_all(trial, "inputs", self.inputs, config)
        _suggest_all(trial, "backbone", self.backbone, config)
        _suggest_all(trial, SingleTask.name, self.tower, config)
        _suggest_all(trial, "training", self.training, config)
        config[WEIGHTING_KEY] = DEFAULT_WEIGHTING
        return config

    def searched(self) -> bool:
        """Whether any knob of the references takes more than one value (else one trial per task says all)."""
        return any(not knob.is_fixed for section in (self.inputs, self.backbone, self.tower, self.training)
                   for knob in section.values())

    def grid(self) -> dict[str, list[Any]]:
        """Every parameter this space suggests, with all its values (for the grid sampler)."""
        space: dict[str, list[Any]] = {}
        for section, knobs in (("inputs", self.inputs), ("backbone", self.backbone), (SingleTask.name, self.tower), ("training", self.training)):
            _add_grid(space, section, section, knobs)
        return space

    def budget(self, trials: int) -> int:
        """This task's reference trials for a search of ``trials`` trials: ``baseline.reference_trials``, or 1 when nothing is searched."""
        return self.baseline.reference_trials(trials, self.strategies) if self.searched() else 1

    def sampler(self, concurrency: int = 1, resumed: int = 0) -> Any:
        """This task's study sampler: the search's kind (random when nothing is searched), seeded by the search's seed and the task.

        ``resumed``: the trials the task's study already holds (a resumed study gets a fresh seed too).
        """
        name = self.sampler_name if self.searched() else "random"
        return make_sampler(name, self.seed + resumed, concurrency, grid=self.grid() if name == "grid" else None)


def _suggest_all(trial: Any, section: str, knobs: dict[str, Knob], into: dict[str, Any], context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Suggest every knob of a section; a bound naming another knob of the section reads its value sampled just before."""
    context = dict(context or {})
    values: dict[str, Any] = {}
    for name in dependency_order(knobs, section):
        values[name] = context[name] = knobs[name].suggest(trial, param_name(section, name), context)
    values = {name: values[name] for name in knobs}  # declaration order
    into.update({param_name(section, name): value for name, value in values.items()})
    return values


def grid_space(plan: Plan) -> dict[str, list[Any]]:
    """Every parameter the define-by-run space can suggest, with all its values (for Optuna's GridSampler)."""
    space: dict[str, list[Any]] = {}
    if len(plan.strategies) > 1:
        space[STRATEGY_KEY] = list(plan.strategies)

    _add_grid(space, "backbone", "backbone", plan.backbone)
    bounds = {name: (min(v), max(v)) for name, v in
              ((name, knob.grid(f"backbone.{name}") or [knob.suggest(None, name)]) for name, knob in plan.backbone.items())
              if all(isinstance(x, int) for x in v)}
    for name, (_, knobs) in plan.strategies.items():
        siblings = dict(bounds)  # a bound naming another knob of the strategy: that knob's smallest and largest value
        for knob_name in dependency_order(knobs, f"strategies.{name}"):
            try:
                low, high = knob_bounds(knobs[knob_name], {**plan.backbone, **knobs})
            except (KeyError, TypeError):
                continue
            if isinstance(low, int) and isinstance(high, int):
                siblings[knob_name] = (low, high)
        _add_grid(space, name, f"strategies.{name}", knobs, siblings)
    _add_grid(space, "training", "training", plan.training)
    weightings = plan.weighting.grid(WEIGHTING_KEY)
    if weightings is not None:
        space[WEIGHTING_KEY] = weightings
    for name, (_, knobs) in plan.weightings.items():
        _add_grid(space, f"weighting.{name}", f"weighting {name!r}", knobs)
    return space


def _add_grid(space: dict[str, list[Any]], section: str, path: str, knobs: dict[str, Knob],
              bounds: dict[str, tuple[int, int]] | None = None) -> None:
    """Add every grid-able knob of a section to ``space`` with all its values."""
    for name, knob in knobs.items():
        values = knob.grid(f"{path}.{name}", bounds)
        if values is not None:
            space[param_name(section, name)] = values


def make_sampler(name: str, seed: int, concurrency: int, plan: Plan | None = None, grid: dict[str, list[Any]] | None = None) -> Any:
    """The Optuna sampler ``search.sampler`` names (``samplers.SAMPLERS``); grid over ``grid``, by default ``grid_space(plan)``."""
    if name == "grid" and grid is None:
        if plan is None:
            raise ValueError("the grid sampler needs the plan or its grid")
        grid = grid_space(plan)
    return SAMPLERS[name](seed, concurrency, grid)
