"""space.yaml: schema, defaults and validation. Every error names the key path and what was expected."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ..config import DEFAULT_WEIGHTING
from ..data.problem import KINDS, Problem, Task
from ..data.tables import TABLE_FORMATS, SplitSpec, TableSpec
from ..errors import SpaceError, did_you_mean
from ..knobs import Fixed, Float, Int, Knob, knob_bounds, parse_range
from ..nn.inputs import INPUT_KNOBS, has_categories
from ..training.trainer import TRAINING_KNOBS, TrainConfig

SAMPLERS = ("tpe", "nsga2", "random", "gp", "grid")
EARLY_STOPPING = ("none", "asha", "median")
COST_OBJECTIVES = {"params": "min", "latency": "min"}
TOP_LEVEL = ("experiment", "plugins", "data", "tasks", "inputs", "backbone", "strategies", "training", "search", "tracking", "ray")

@dataclass
class SearchSpec:
    trials: int = 20
    sampler: str = "tpe"
    objectives: list[str] = field(default_factory=list)  # empty: every task
    concurrency: int = 1
    seed: int = 0
    reference_point: dict[str, float] = field(default_factory=dict)
    early_stopping: str = "none"  # none | asha | median, on the trainer's scalarised ``score``
    max_failures: int | None = None  # failed trials tolerated before the search aborts; None: no limit


@dataclass
class RaySpec:
    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0


@dataclass
class Space:
    """A parsed space. Ranges are Knobs; ``resolve`` checks them against the registered plugins."""

    experiment: str
    dataset: str  # a registered data set's name, or "csv"/"parquet" for the user's table
    dataset_options: dict[str, Any]
    strategies: dict[str, dict[str, Knob]]
    table: TableSpec | None = None
    inputs: dict[str, Knob] = field(default_factory=dict)
    backbone_kind: str = "mlp"
    backbone: dict[str, Knob] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    training: dict[str, Knob] = field(default_factory=dict)
    weighting: Knob = Fixed(DEFAULT_WEIGHTING)
    weighting_options: dict[str, dict[str, Knob]] = field(default_factory=dict)
    epochs: int = 20
    patience: int = 5
    max_trial_seconds: float | None = None
    affinity_every: int = 0  # task affinity measured every this many steps (0: off)
    search: SearchSpec = field(default_factory=SearchSpec)
    ray: RaySpec = field(default_factory=RaySpec)
    tracking_uri: str | None = None
    plugins: list[str] = field(default_factory=list)
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()


def load_space(path: str | Path) -> Space:
    """Read and check the structure of a space file (plugins are checked by ``resolve``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpaceError("", f"cannot read space file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpaceError("", f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_space(raw, path)


def parse_space(raw: Any, path: Path | None = None) -> Space:
    """Check the structure of an already-loaded space mapping."""
    top = _mapping(raw, "", "the space file must be a mapping of keys")
    _known_keys(top, TOP_LEVEL, "")
    experiment = top.get("experiment", path.stem if path else "mtl-search")
    if not isinstance(experiment, str) or not experiment.strip():
        raise SpaceError("experiment", f"expected a non-empty name, got {experiment!r}")

    data = _mapping(top.get("data"), "data", "expected a mapping with 'dataset' (and optional 'options'), or 'csv'/'parquet' with a table's path")
    table = _parse_table(data, path.parent if path else Path.cwd()) if any(k in data for k in TABLE_FORMATS) else None
    if table is not None:
        dataset, options = table.format, {}
    else:
        _known_keys(data, ("dataset", "options", *TABLE_FORMATS), "data")
        dataset = data.get("dataset")
        if not isinstance(dataset, str) or not dataset:
            raise SpaceError("data.dataset", f"expected the name of a registered data set (or csv:/parquet: a table's path), got {dataset!r}")
        options = _mapping(data.get("options", {}), "data.options", "expected a mapping of option values")

    tasks = {}
    for name, spec in _mapping(top.get("tasks", {}), "tasks", "expected a mapping of task name to {kind, metric}").items():
        spec = _mapping(spec, f"tasks.{name}", "expected a mapping like {kind: regression, metric: mse}")
        _known_keys(spec, ("kind", "metric", "classes"), f"tasks.{name}")
        if "kind" in spec and spec["kind"] not in KINDS:
            raise SpaceError(f"tasks.{name}.kind", f"unknown kind {spec['kind']!r}; {did_you_mean(spec['kind'], KINDS)}")
        tasks[str(name)] = spec

    inputs_raw = _mapping(top.get("inputs", {}), "inputs", "expected a mapping like {encoding: {choice: [onehot, embedding]}}")
    inputs = {k: parse_range(v, f"inputs.{k}") for k, v in inputs_raw.items()}

    backbone_raw = _mapping(top.get("backbone", {}), "backbone", "expected a mapping like {kind: mlp, depth: 3}")
    backbone_kind = backbone_raw.get("kind", "mlp")
    if not isinstance(backbone_kind, str):
        raise SpaceError("backbone.kind", f"expected a backbone kind name, got {backbone_kind!r}")
    backbone = {k: parse_range(v, f"backbone.{k}") for k, v in backbone_raw.items() if k != "kind"}

    strategies_raw = top.get("strategies")
    if not isinstance(strategies_raw, dict) or not strategies_raw:
        raise SpaceError("strategies", "expected a non-empty mapping of strategy name to knob overrides, e.g. {hard_sharing: {}}")
    strategies = {}
    for name, overrides in strategies_raw.items():
        overrides = _mapping(overrides if overrides is not None else {}, f"strategies.{name}", "expected a mapping of knob overrides (or {})")
        strategies[str(name)] = {k: parse_range(v, f"strategies.{name}.{k}") for k, v in overrides.items()}

    training_raw = _mapping(top.get("training", {}), "training", "expected a mapping")
    _known_keys(training_raw, ("epochs", "patience", "max_trial_seconds", "affinity_every", "weighting", "weighting_options", *TRAINING_KNOBS), "training")
    epochs = _int(training_raw.get("epochs", TrainConfig.epochs), "training.epochs", minimum=1)
    patience = _int(training_raw.get("patience", TrainConfig.patience), "training.patience", minimum=0)
    affinity_every = _int(training_raw.get("affinity_every", 0), "training.affinity_every", minimum=0)
    max_trial_seconds = training_raw.get("max_trial_seconds")
    if max_trial_seconds is not None:
        max_trial_seconds = _number(max_trial_seconds, "training.max_trial_seconds", positive=True)
    training = {k: parse_range(training_raw.get(k, getattr(TrainConfig, k)), f"training.{k}") for k in TRAINING_KNOBS}
    weighting = parse_range(training_raw.get("weighting", DEFAULT_WEIGHTING), "training.weighting")
    if isinstance(weighting, (Int, Float)):
        raise SpaceError("training.weighting", "expected a weighting name or {choice: [names]}")
    weighting_options = {}
    options_raw = _mapping(training_raw.get("weighting_options", {}), "training.weighting_options",
                           "expected a mapping of weighting name to knob overrides, e.g. {gradnorm: {alpha: 1.5}}")
    for name, overrides in options_raw.items():
        where = f"training.weighting_options.{name}"
        overrides = _mapping(overrides, where, "expected a mapping of knob overrides")
        weighting_options[str(name)] = {k: parse_range(v, f"{where}.{k}") for k, v in overrides.items()}

    search_raw = _mapping(top.get("search", {}), "search", "expected a mapping")
    _known_keys(search_raw, ("trials", "sampler", "objectives", "concurrency", "seed", "reference_point", "early_stopping", "max_failures"), "search")
    sampler = search_raw.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise SpaceError("search.sampler", f"unknown sampler {sampler!r}; {did_you_mean(str(sampler), SAMPLERS)}")
    early_stopping = search_raw.get("early_stopping", "none")
    if early_stopping not in EARLY_STOPPING:
        raise SpaceError("search.early_stopping", f"unknown early stopping {early_stopping!r}; {did_you_mean(str(early_stopping), EARLY_STOPPING)}")
    max_failures = search_raw.get("max_failures")
    if max_failures is not None:
        max_failures = _int(max_failures, "search.max_failures", minimum=0)
    objectives = search_raw.get("objectives", [])
    if not isinstance(objectives, list) or not all(isinstance(o, str) for o in objectives):
        raise SpaceError("search.objectives", f"expected a list of task names (and optionally params, latency), got {objectives!r}")
    if len(set(objectives)) != len(objectives):
        raise SpaceError("search.objectives", f"an objective is listed twice: {objectives!r}")
    reference = _mapping(search_raw.get("reference_point", {}), "search.reference_point", "expected a mapping of objective to value")
    for key, value in reference.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpaceError(f"search.reference_point.{key}", f"expected a number, got {value!r}")
    search = SearchSpec(
        trials=_int(search_raw.get("trials", 20), "search.trials", minimum=1),
        sampler=sampler,
        objectives=objectives,
        concurrency=_int(search_raw.get("concurrency", 1), "search.concurrency", minimum=1),
        seed=_int(search_raw.get("seed", 0), "search.seed", minimum=0),
        reference_point={str(k): float(v) for k, v in reference.items()},
        early_stopping=early_stopping,
        max_failures=max_failures,
    )

    tracking = _mapping(top.get("tracking", {}), "tracking", "expected a mapping like {uri: sqlite:///...}")
    _known_keys(tracking, ("uri",), "tracking")
    uri = tracking.get("uri")
    if uri is not None and not isinstance(uri, str):
        raise SpaceError("tracking.uri", f"expected a tracking URI string, got {uri!r}")

    ray_raw = _mapping(top.get("ray", {}), "ray", "expected a mapping")
    _known_keys(ray_raw, ("address", "cpus_per_trial", "gpus_per_trial"), "ray")
    address = ray_raw.get("address")
    if address is not None and not isinstance(address, str):
        raise SpaceError("ray.address", f"expected an address string (auto, host:port, ray://host:10001), got {address!r}")
    ray = RaySpec(
        address=address,
        cpus_per_trial=_number(ray_raw.get("cpus_per_trial", 1), "ray.cpus_per_trial", positive=True),
        gpus_per_trial=_number(ray_raw.get("gpus_per_trial", 0), "ray.gpus_per_trial", positive=False),
    )

    plugins = top.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) and p for p in plugins):
        raise SpaceError("plugins", f"expected a list of module names or .py paths, got {plugins!r}")

    return Space(
        experiment=experiment, dataset=dataset, dataset_options=dict(options), strategies=strategies, table=table, inputs=inputs,
        backbone_kind=backbone_kind, backbone=backbone, tasks=tasks, training=training, weighting=weighting,
        weighting_options=weighting_options,
        epochs=epochs, patience=patience, max_trial_seconds=max_trial_seconds, affinity_every=affinity_every, search=search, ray=ray, tracking_uri=uri, plugins=plugins,
        path=path.resolve() if path else None, raw=top,
    )


@dataclass
class Objective:
    """A search objective: its name, the result key it reads and its direction."""

    name: str
    key: str
    direction: str


@dataclass
class Plan:
    """A space checked against the registered plugins and the data set's problem: what the search samples."""

    space: Space
    problem: Problem
    strategies: dict[str, tuple[Any, dict[str, Knob]]]
    backbone_kind: Any
    backbone: dict[str, Knob]
    training: dict[str, Knob]
    weightings: dict[str, tuple[type, dict[str, Knob]]]
    weighting: Knob
    objectives: list[Objective]
    inputs: dict[str, Knob] = field(default_factory=dict)  # the input layer's knobs; empty without categorical features


def apply_task_overrides(problem: Problem, tasks: dict[str, dict[str, Any]]) -> Problem:
    """The data set's problem with the metric (or kind/classes) a space sets per task."""
    valid = problem.task_names
    for name in tasks:
        if name not in valid:
            raise SpaceError(f"tasks.{name}", f"unknown task {name!r}; {did_you_mean(name, valid)}")
    new_tasks = []
    for task in problem.tasks:
        spec = tasks.get(task.name, {})
        kind = spec.get("kind", task.kind)
        metric = spec.get("metric", task.metric if kind == task.kind else "")
        new_tasks.append(Task(task.name, kind, metric, int(spec.get("classes", task.classes))))
    return replace(problem, tasks=tuple(new_tasks))


def resolve(space: Space, registry: Any, problem: Problem) -> Plan:
    """Check every name and knob of ``space`` against ``registry`` and the data set's ``problem``."""
    problem = apply_task_overrides(problem, space.tasks)

    kind = registry.lookup("backbones", space.backbone_kind, "backbone.kind")
    if kind.input_ranks is not None and len(problem.input_shape) not in kind.input_ranks:
        raise SpaceError(
            "backbone.kind",
            f"backbone kind {kind.name!r} needs inputs with {' or '.join(map(str, kind.input_ranks))} axes; "
            f"data set {space.dataset!r} has input shape {tuple(problem.input_shape)}",
        )
    backbone = _merge_knobs(kind.knobs, space.backbone, "backbone", f"backbone kind {kind.name!r}")

    try:
        values = kind.value_ranges(backbone, problem.input_shape)  # what bounds naming a backbone value read
    except (ValueError, TypeError) as exc:
        raise SpaceError("backbone", f"backbone kind {kind.name!r} cannot be built from these values: {exc}") from None
    strategies = {}
    for name, overrides in space.strategies.items():
        strategy = registry.lookup("strategies", name, f"strategies.{name}")
        if not strategy.supports(kind.name):
            raise SpaceError(
                f"strategies.{name}",
                f"strategy {name!r} does not support backbone kind {kind.name!r}; it supports {', '.join(strategy.backbones)}",
            )
        knobs = _merge_knobs(strategy.knobs, overrides, f"strategies.{name}", f"strategy {name!r}")
        _check_backbone_bounds(strategy.knobs, knobs, values, f"strategies.{name}")
        strategy.check(knobs, {**backbone, **values}, f"strategies.{name}")
        strategy.check_problem(knobs, problem, f"strategies.{name}")
        strategies[name] = (strategy, knobs)

    names = [space.weighting.value] if isinstance(space.weighting, Fixed) else list(space.weighting.choices)
    weightings = {}
    for name in names:
        if not isinstance(name, str):
            raise SpaceError("training.weighting", f"expected weighting names, got {name!r}")
        cls = registry.lookup("weightings", name, "training.weighting")
        overrides = space.weighting_options.get(name, {})
        weightings[name] = (cls, _merge_knobs(cls.knobs, overrides, f"training.weighting_options.{name}", f"weighting {name!r}"))
        for strategy_name, (strategy, _) in strategies.items():
            reason = cls.incompatibility(strategy)
            if reason:
                raise SpaceError("training.weighting", f"weighting {name!r} cannot train strategy {strategy_name!r}: {reason}")
    for name in space.weighting_options:
        if name not in weightings:
            raise SpaceError(f"training.weighting_options.{name}",
                             f"{name!r} is not a weighting of this space; training.weighting offers {', '.join(weightings)}")

    objectives = []
    valid_objectives = problem.task_names + list(COST_OBJECTIVES)
    for name in space.search.objectives or problem.task_names:
        if name in COST_OBJECTIVES:
            objectives.append(Objective(name, name, COST_OBJECTIVES[name]))
        elif name in problem.task_names:
            objectives.append(Objective(name, f"val/{name}", problem.task(name).direction))
        else:
            raise SpaceError("search.objectives", f"unknown objective {name!r}; {did_you_mean(name, valid_objectives)}")
    for name in space.search.reference_point:
        if name not in [o.name for o in objectives]:
            raise SpaceError(f"search.reference_point.{name}", f"not an objective of this search; objectives: {', '.join(o.name for o in objectives)}")

    training = _merge_knobs(TRAINING_KNOBS, space.training, "training", "training")
    inputs = _merge_knobs(INPUT_KNOBS, space.inputs, "inputs", "the input layer")
    if space.inputs and not has_categories(problem):
        raise SpaceError("inputs", "the data set has no categorical features, so there is nothing to encode")
    return Plan(space, problem, strategies, kind, backbone, training, weightings, space.weighting, objectives,
                inputs if has_categories(problem) else {})


TABLE_KEYS = (*TABLE_FORMATS, "features", "exclude", "categorical", "numeric", "max_integer_levels", "split", "split_column", "group_column")


def _parse_table(data: dict, base_dir: Path) -> TableSpec:
    """The ``data:`` section naming a CSV or Parquet file; its path is relative to the space file."""
    _known_keys(data, TABLE_KEYS, "data")
    formats = [f for f in TABLE_FORMATS if f in data]
    if len(formats) > 1:
        raise SpaceError("data", "give one of csv: or parquet:, not both")
    fmt = formats[0]
    if not isinstance(data[fmt], str) or not data[fmt]:
        raise SpaceError(f"data.{fmt}", f"expected a file path, got {data[fmt]!r}")
    path = Path(data[fmt]).expanduser()
    features = data.get("features")
    if features is not None:
        features = _names(features, "data.features")
        if not features:
            raise SpaceError("data.features", "expected at least one feature column (or leave features out: every other column)")
    if "split" in data and "split_column" in data:
        raise SpaceError("data.split", "give split: (fractions) or split_column:, not both")
    split_raw = _mapping(data.get("split", {}), "data.split", "expected a mapping like {val: 0.15, test: 0.15, seed: 0}")
    _known_keys(split_raw, ("val", "test", "seed", "stratify"), "data.split")
    split = SplitSpec(
        val=_number(split_raw.get("val", 0.15), "data.split.val", positive=True),
        test=_number(split_raw.get("test", 0.15), "data.split.test", positive=True),
        seed=_int(split_raw.get("seed", 0), "data.split.seed", minimum=0),
        stratify=split_raw.get("stratify"),
    )
    if split.val + split.test >= 1:
        raise SpaceError("data.split", f"val + test must stay below 1, got {split.val} + {split.test}")
    if split.stratify is not None and "group_column" in data:
        raise SpaceError("data.split.stratify", "a group split cannot also be stratified; use one of them")
    return TableSpec(
        format=fmt,
        path=path if path.is_absolute() else (base_dir / path).resolve(),
        features=features,
        exclude=_names(data.get("exclude", []), "data.exclude"),
        categorical=_names(data.get("categorical", []), "data.categorical"),
        numeric=_names(data.get("numeric", []), "data.numeric"),
        max_integer_levels=_int(data.get("max_integer_levels", 10), "data.max_integer_levels", minimum=0),
        split=split,
        split_column=_column(data.get("split_column"), "data.split_column"),
        group_column=_column(data.get("group_column"), "data.group_column"),
    )


def _names(value: Any, path: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SpaceError(path, f"expected a list of column names, got {value!r}")
    return value


def _column(value: Any, path: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise SpaceError(path, f"expected a column name, got {value!r}")
    return value


def _check_backbone_bounds(declared: dict[str, Knob], knobs: dict[str, Knob], values: dict[str, Knob], path: str) -> None:
    """A space's range for a knob whose bound names a backbone value (``Int(0, "depth")``) must stay within it for every trial."""
    for name, knob in declared.items():
        if not isinstance(knob, Int) or knobs[name] is knob:
            continue
        low, high = knob_bounds(knobs[name])
        for bound, smallest in ((knob.high, True), (knob.low, False)):
            if not isinstance(bound, str):
                continue
            if bound not in values:
                raise SpaceError(f"{path}.{name}", f"its bound names {bound!r}, which this backbone kind does not have")
            lo, hi = knob_bounds(values[bound])
            where = f"the backbone's {bound} ({lo} to {hi})" if lo != hi else f"the backbone's {bound} ({lo})"
            if smallest and high > lo:
                raise SpaceError(f"{path}.{name}", f"{high} is above {where}; every trial's value must be at most {lo}")
            if not smallest and low < hi:
                raise SpaceError(f"{path}.{name}", f"{low} is below {where}; every trial's value must be at least {hi}")


def _merge_knobs(declared: dict[str, Knob], overrides: dict[str, Knob], path: str, owner: str) -> dict[str, Knob]:
    merged = dict(declared)
    for name, override in overrides.items():
        if name not in declared:
            raise SpaceError(f"{path}.{name}", f"unknown knob {name!r} of {owner}; {did_you_mean(name, declared)}")
        merged[name] = declared[name].narrow(override, f"{path}.{name}")
    return merged


def _mapping(value: Any, path: str, expected: str) -> dict:
    if value is None and path:
        raise SpaceError(path, f"missing; {expected}")
    if not isinstance(value, dict):
        raise SpaceError(path, f"{expected}; got {type(value).__name__} {value!r}")
    return value


def _known_keys(mapping: dict, known: tuple[str, ...], path: str) -> None:
    for key in mapping:
        if key not in known:
            where = f"{path}.{key}" if path else str(key)
            raise SpaceError(where, f"unknown key {key!r}; {did_you_mean(str(key), known).replace('valid names', 'valid keys')}")


def _int(value: Any, path: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpaceError(path, f"expected an integer, got {value!r}")
    if value < minimum:
        raise SpaceError(path, f"expected an integer >= {minimum}, got {value!r}")
    return value


def _number(value: Any, path: str, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpaceError(path, f"expected a number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise SpaceError(path, f"expected a number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)
