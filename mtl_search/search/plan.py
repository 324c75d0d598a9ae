"""What the search samples and how: Optuna's define-by-run space, the grid, samplers, schedulers, and the plan a worker gets."""
from __future__ import annotations

from typing import Any, Sequence

from ..config import DEFAULT_WEIGHTING, NUMBER_KEY, REFERENCE_TASK_KEY, STRATEGY_KEY, WEIGHTING_KEY, param_name
from ..errors import SpaceError
from ..knobs import Fixed, Knob, dependency_order, knob_bounds
from ..record import EPOCH, LATENCY, SCORE, Objective
from .references import SingleTask
from .space import Plan, reference_ranges
from .trial import TrialPlan


class DefineByRun:
    """Optuna's define-by-run space: the strategy, the backbone's knobs, the strategy's knobs, then training knobs.

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
        weighting = self.weighting.suggest(trial, "training.weighting")
        config["training.weighting"] = weighting
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
        return any(not isinstance(knob, Fixed) for section in (self.inputs, self.backbone, self.tower, self.training)
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
    weightings = plan.weighting.grid("training.weighting")
    if weightings is not None:
        space["training.weighting"] = weightings
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
    """The Optuna sampler of ``search.sampler``: tpe, nsga2, random, gp or grid (over ``grid``, by default ``grid_space(plan)``)."""
    import optuna

    # search.constraints reach tpe, nsga2 and gp as the values the searcher sets on each trial (Trial.set_constraint)
    if name == "tpe":
        return optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=concurrency > 1, seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        if grid is None and plan is None:
            raise ValueError("the grid sampler needs the plan or its grid")
        return _TuneGridSampler(grid if grid is not None else grid_space(plan), seed=seed)
    try:
        import scipy  # noqa: F401  (Optuna's GPSampler imports it only when it first samples)
    except ImportError as exc:
        raise SpaceError("search.sampler", f"the gp sampler needs scipy (pip install scipy): {exc}") from None
    return optuna.samplers.GPSampler(seed=seed)


def _grid_sampler_base() -> type:
    import optuna

    return optuna.samplers.GridSampler


class _TuneGridSampler(_grid_sampler_base()):
    """GridSampler without its ``study.stop()`` once the grid is covered.

    That call is only legal inside Optuna's own optimize loop; under Tune it raises before the
    trial's state is stored. Tune ends the search after ``search.trials`` trials (a covered grid
    is visited again in a random order).
    """

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


SCHEDULER_METRIC = SCORE
EARLY_STOPPING_GRACE_EPOCHS = 2  # the score is 1.0 for every trial at epoch 1 (it is normalised by that epoch)
EARLY_STOPPING_REDUCTION = 2  # successive halving's η (asha, pareto)


def make_scheduler(kind: str, epochs: int, objectives: Sequence[Objective] = ()) -> Any:
    """The Tune scheduler of ``search.early_stopping`` (None for ``none``).

    ``asha`` and ``median`` watch the trainer's ``score`` per epoch: the mean over tasks of
    the val loss divided by that task's val loss after the first epoch (lower is better), so
    tasks on different scales count equally. ``pareto`` (:mod:`.pareto_stopping`) ranks
    the trials at each rung by the search's ``objectives`` as each epoch reports them,
    leaving out ``latency`` (measured once, after training).
    """
    from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule

    if kind == "none":
        return None
    max_t = max(epochs, EARLY_STOPPING_GRACE_EPOCHS)
    if kind == "pareto":
        from .pareto_stopping import ParetoSuccessiveHalving

        rung_objectives = [(o.key, o.direction) for o in objectives if o.key != LATENCY]
        return ParetoSuccessiveHalving(rung_objectives, max_t=max_t, grace_period=EARLY_STOPPING_GRACE_EPOCHS,
                                       reduction_factor=EARLY_STOPPING_REDUCTION)
    if kind == "asha":
        # stop_last_trials=False: a trial reaching the last epoch must still send its final result.
        return ASHAScheduler(time_attr=EPOCH, metric=SCHEDULER_METRIC, mode="min", max_t=max_t,
                             grace_period=EARLY_STOPPING_GRACE_EPOCHS, reduction_factor=EARLY_STOPPING_REDUCTION, stop_last_trials=False)
    return MedianStoppingRule(time_attr=EPOCH, metric=SCHEDULER_METRIC, mode="min", grace_period=EARLY_STOPPING_GRACE_EPOCHS,
                              min_samples_required=2)


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
