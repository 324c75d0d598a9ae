"""space.yaml: schema, defaults and validation. Every error names the key path and what was expected."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ..config import DEFAULT_WEIGHTING
from ..data.problem import KINDS, Problem
from ..data.tables import TABLE_FORMATS, SplitSpec, TableSpec
from ..errors import ErrorCollector, SpaceError, did_you_mean
from ..knobs import (
    Fixed,
    Knob,
    check_named_bounds,
    knob_bounds,
    parse_range,
)
from ..nn.inputs import INPUT_KNOBS, has_categories
from ..record import COST_OBJECTIVES, GAIN_OBJECTIVES, Objective, group_key, val_key
from ..results.constraints import Constraint, check_constraints, parse_constraints
from ..training.trainer import TRAINING_KNOBS, TrainConfig
from .samplers import SAMPLERS

EARLY_STOPPING = ("none", "asha", "median", "pareto")
TASK_KEYS = ("kind", "metric", "classes", "after", "weight_column", "scale", "positive")
TOP_LEVEL = ("experiment", "plugins", "data", "tasks", "inputs", "backbone", "strategies", "training", "search", "tracking", "ray", "baseline")
MAX_TASK_OBJECTIVES = 4  # more tasks than this: the default objectives are delta_m and worst_gain


@dataclass(frozen=True)
class GroupObjective:
    """``{group: {name: ctr_cvr, tasks: [ctr, cvr]}}`` or ``ctr+cvr`` in ``search.objectives``: the mean gain of its tasks."""

    name: str
    tasks: tuple[str, ...]
    path: str


BASELINE_MODES = ("search", "fixed")
FIXED_TOWER_WIDTH = 16  # the fixed reference's tower width (``baseline: {mode: fixed}``)


@dataclass
class BaselineSpec:
    """``baseline:``: the single-task references' configuration (``false``: no references, no gains).

    ``mode: search`` (the default): ``trials`` reference trials per task (None: the budget of
    one strategy, :meth:`reference_trials`), sampled from the space's backbone, input and
    training ranges and run as trials; the best on validation is the task's reference. ``mode: fixed``: one reference per task at one configuration, each
    knob left out at its range's midpoint (``Knob.midpoint``). In both modes ``backbone``,
    ``training`` and ``inputs`` pin knob values, and ``tower_width`` pins the width of the
    reference's one hidden tower layer (searched over its default range, or
    ``FIXED_TOWER_WIDTH`` in fixed mode, when left out). ``gbdt``: fit the GBDT
    comparison row on a table (:mod:`mtl_search.search.gbdt`).
    """

    enabled: bool = True
    backbone: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    tower_width: int | None = None
    mode: str = "search"
    trials: int | None = None
    gbdt: bool = False

    def reference_trials(self, trials: int, strategies: int) -> int:
        """Reference trials per task: ``trials`` as given, else the budget one strategy gets, ⌈search trials / strategies⌉."""
        return self.trials if self.trials is not None else -(-trials // max(1, strategies))


@dataclass
class SearchSpec:
    trials: int = 20
    sampler: str = "tpe"
    objectives: list[str | GroupObjective] = field(default_factory=list)  # empty: the default (see resolve)
    concurrency: int = 1
    seed: int = 0
    reference_point: dict[str, float] = field(default_factory=dict)
    early_stopping: str = "none"  # none | asha | median (the trainer's scalarised ``score``) | pareto (the objectives)
    max_failures: int | None = None  # failed trials tolerated before the search aborts; None: no limit
    constraints: list[Constraint] = field(default_factory=list)  # thresholds a trial must meet to be on the front
    repeats: int = 0  # seeds per front trial and reference for the noise of gains (0: off; else at least 2)


@dataclass
class RaySpec:
    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0


@dataclass
class Space:
    """A parsed space. Ranges are Knobs; ``resolve`` checks them against the registered plugins."""

    experiment: str = "mtl-search"  # a space read from a file: the file's name
    dataset: str = ""  # a registered data set's name, or "csv"/"parquet" for the user's table
    dataset_options: dict[str, Any] = field(default_factory=dict)
    strategies: dict[str, dict[str, Knob]] = field(default_factory=dict)
    table: TableSpec | None = None
    inputs: dict[str, Knob] = field(default_factory=dict)
    backbone_kind: str = "mlp"
    backbone: dict[str, Knob] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    training: dict[str, Knob] = field(default_factory=dict)
    weighting: Knob = Fixed(DEFAULT_WEIGHTING)
    weighting_options: dict[str, dict[str, Knob]] = field(default_factory=dict)
    epochs: int = TrainConfig.epochs
    patience: int = TrainConfig.patience
    max_trial_seconds: float | None = None
    affinity_every: int = 0  # task affinity measured every this many steps (0: off)
    search: SearchSpec = field(default_factory=SearchSpec)
    ray: RaySpec = field(default_factory=RaySpec)
    baseline: BaselineSpec = field(default_factory=BaselineSpec)
    tracking_uri: str | None = None
    plugins: list[str] = field(default_factory=list)
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, with a key given twice in one mapping an error (the safe loader keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden by the keys beside it
                continue
            key = self.construct_object(key_node, deep=True)
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping (first at line {first_line[key]}); keep one", key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load_space(path: str | Path) -> Space:
    """Read and check the structure of a space file (plugins are checked by ``resolve``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpaceError("", f"cannot read space file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpaceError("", f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if raw is None:  # nothing but blank lines, comments or an empty document
        raise SpaceError("", f"{path}: the space file is empty; it needs at least data: and strategies:, "
                             "e.g. data: {dataset: synthetic_correlated} and strategies: {hard_sharing: {}}")
    return parse_space(raw, path)


def parse_space(raw: Any, path: Path | None = None) -> Space:
    """Check the structure of an already-loaded space mapping.

    Every independent error is reported at once: each section (and each strategy, task,
    setting within one) is checked even when an earlier one failed; one error is raised as a
    :class:`SpaceError`, several as a :class:`SpaceErrors` listing each with its key path.
    A section left out, or one that fails, takes the defaults of the fields it fills.
    """
    top = _mapping(raw, "", "the space file must be a mapping of keys")
    errors = ErrorCollector()
    with errors.section():
        _known_keys(top, TOP_LEVEL, "")
    fields: dict[str, Any] = {}
    for parse in (_parse_experiment, _parse_data, _parse_tasks, _parse_inputs, _parse_backbone, _parse_strategies, _parse_training,
                  _parse_search, _parse_tracking, _parse_ray, _parse_baseline, _parse_plugins):
        with errors.section():
            fields.update(parse(top, path, errors, fields))
    errors.raise_if_any()
    return Space(**fields, path=path.resolve() if path else None, raw=top)


Fields = dict[str, Any]  # the Space fields a section's parser fills


def _parse_experiment(top: dict, path: Path | None, errors: ErrorCollector, parsed: Fields) -> Fields:
    experiment = top.get("experiment", path.stem if path else Space.experiment)
    if not isinstance(experiment, str) or not experiment.strip():
        raise SpaceError("experiment", f"expected a non-empty name, got {experiment!r}")
    return {"experiment": experiment}


def _parse_data(top: dict, path: Path | None, errors: ErrorCollector, parsed: Fields) -> Fields:
    data = _mapping(top.get("data"), "data", "expected a mapping with 'dataset' (and optional 'options'), or 'csv'/'parquet' with a table's path")
    if any(k in data for k in TABLE_FORMATS):
        table = _parse_table(data, path.parent if path else Path.cwd())
        return {"table": table, "dataset": table.format, "dataset_options": {}}
    _known_keys(data, ("dataset", "options", *TABLE_FORMATS), "data")
    dataset = data.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        raise SpaceError("data.dataset", f"expected the name of a registered data set (or csv:/parquet: a table's path), got {dataset!r}")
    return {"dataset": dataset, "dataset_options": dict(_mapping(data.get("options", {}), "data.options", "expected a mapping of option values"))}


def _parse_tasks(top: dict, path: Path | None, errors: ErrorCollector, parsed: Fields) -> Fields:
    tasks: dict[str, dict[str, Any]] = {}
    table = parsed.get("table")
    for name, spec in _mapping(top.get("tasks", {}), "tasks", "expected a mapping of task name to {kind, metric}").items():
        with errors.section():
            spec = _mapping(spec, f"tasks.{name}", "expected a mapping like {kind: regression, metric: mse}")
            _known_keys(spec, TASK_KEYS, f"tasks.{name}")
            if "kind" in spec and spec["kind"] not in KINDS:
                raise SpaceError(f"tasks.{name}.kind", f"unknown kind {spec['kind']!r}; {did_you_mean(spec['kind'], KINDS)}")
            for key in ("after", "weight_column"):
                if key in spec and (not isinstance(spec[key], str) or not spec[key]):
                    raise SpaceError(f"tasks.{name}.{key}", f"expected a {'task' if key == 'after' else 'column'} name, got {spec[key]!r}")
            if "scale" in spec and not isinstance(spec["scale"], bool):
                raise SpaceError(f"tasks.{name}.scale", f"expected true or false, got {spec['scale']!r}")
            if "scale" in spec and spec.get("kind", "regression") != "regression":
                raise SpaceError(f"tasks.{name}.scale", f"only a regression target is standardised; {name!r} is {spec['kind']}")
            if table is None and "weight_column" in spec:
                raise SpaceError(f"tasks.{name}.weight_column", "sample weights are read from a table's column; "
                                 "this space's data is a registered data set (data.dataset), not csv:/parquet:")
            if "positive" in spec and (table is None or spec.get("kind") != "binary"):
                raise SpaceError(f"tasks.{name}.positive", "names the positive class of a binary target column of a table "
                                 "(kind: binary, data: csv:/parquet:)")
            tasks[str(name)] = spec
    return {"tasks": tasks}


def _parse_inputs(top: dict, path: Path | None, errors: ErrorCollector, parsed: Fields) -> Fields:
    inputs_raw = _mapping(top.get("inputs", {}), "inputs", "expected a mapping like {encoding: {choice: [onehot, embedding]}}")
    return {"inputs": _ranges(inputs_raw, "inputs", errors)}


def _parse_backbone(top: dict, path: Path | None, errors: ErrorCollector, parsed: Fields) -> Fields:
    backbone_raw = _mapping(top.get("backbone", {}), "backbone", "expected a mapping like {kind: mlp, depth: 3}")
    fields = {"backbone": _ranges({k: v for k, v in backbone_raw.items() if k != "kind"}, "backbone", errors)}
    kind = backbone_raw.get("kind", Space.backbone_kind)
    if not isinstance(kind, str):
        errors.add(SpaceError("backbone.kind", f"expected a backbone kind name, got {kind!r}"))
        return fields
    return {**fields, "backbone_kind": kind}


def _parse_strategies(top: dict, path: Path | None, errors: ErrorCollector, parsed: Fields) -> Fields:
    strategies_raw = top.get("strategies")
    if not isinstance(strategies_raw, dict) or not strategies_raw:
        raise SpaceError("strategies", "expected a non-empty mapping of strategy name to knob overrides, e.g. {hard_sharing: {}}")
    strategies = {}
    for name, overrides in strategies_raw.items():
        with errors.section():
            overrides = _mapping(overrides if overrides is not None else {}, f"strategies.{name}", "expected a mapping of knob overrides (or {})")
            strategies[str(name)] = _ranges(overrides, f"strategies.{name}", errors)
    return {"strategies": strategies}


def _parse_training(top: dict, path: Path | None, errors: ErrorCollector, parsed: Fields) -> Fields:
    training_raw = _mapping(top.get("training", {}), "training", "expected a mapping")
    fields: Fields = {}
    with errors.section():
        _known_keys(training_raw, ("epochs", "patience", "max_trial_seconds", "affinity_every", "weighting", "weighting_options",
                                   *TRAINING_KNOBS), "training")
    with errors.section():
        fields["epochs"] = _int(training_raw.get("epochs", Space.epochs), "training.epochs", minimum=1)
    with errors.section():
        fields["patience"] = _int(training_raw.get("patience", Space.patience), "training.patience", minimum=0)
    with errors.section():
        fields["affinity_every"] = _int(training_raw.get("affinity_every", Space.affinity_every), "training.affinity_every", minimum=0)
    with errors.section():
        if training_raw.get("max_trial_seconds") is not None:
            fields["max_trial_seconds"] = _number(training_raw["max_trial_seconds"], "training.max_trial_seconds", positive=True)
    fields["training"] = _ranges({k: training_raw.get(k, getattr(TrainConfig, k)) for k in TRAINING_KNOBS}, "training", errors)
    with errors.section():
        weighting = parse_range(training_raw.get("weighting", DEFAULT_WEIGHTING), "training.weighting")
        if weighting.values() is None:  # a range of numbers
            raise SpaceError("training.weighting", "expected a weighting name or {choice: [names]}")
        fields["weighting"] = weighting
    with errors.section():
        options_raw = _mapping(training_raw.get("weighting_options", {}), "training.weighting_options",
                               "expected a mapping of weighting name to knob overrides, e.g. {gradnorm: {alpha: 1.5}}")
        options = {}
        for name, overrides in options_raw.items():
            where = f"training.weighting_options.{name}"
            with errors.section():
                overrides = _mapping(overrides, where, "expected a mapping of knob overrides")
                options[str(name)] = _ranges(overrides, where, errors)
        fields["weighting_options"] = options
    return fields


SEARCH_KEYS = ("trials", "sampler", "objectives", "concurrency", "seed", "reference_point", "early_stopping", "max_failures",
               "constraints", "repeats")


def _parse_search(top: dict, path: Path | None, errors: ErrorCollector, parsed: Fields) -> Fields:
    search = SearchSpec()
    fields = {"search": search}
    search_raw = _mapping(top.get("search", {}), "search", "expected a mapping")
    with errors.section():
        _known_keys(search_raw, SEARCH_KEYS, "search")
    with errors.section():
        sampler = search_raw.get("sampler", SearchSpec.sampler)
        if sampler not in SAMPLERS:
            raise SpaceError("search.sampler", f"unknown sampler {sampler!r}; {did_you_mean(str(sampler), SAMPLERS)}")
        search.sampler = sampler
    with errors.section():
        early_stopping = search_raw.get("early_stopping", SearchSpec.early_stopping)
        if early_stopping not in EARLY_STOPPING:
            raise SpaceError("search.early_stopping", f"unknown early stopping {early_stopping!r}; {did_you_mean(str(early_stopping), EARLY_STOPPING)}")
        search.early_stopping = early_stopping
    with errors.section():
        if search_raw.get("max_failures") is not None:
            search.max_failures = _int(search_raw["max_failures"], "search.max_failures", minimum=0)
    with errors.section():
        if search_raw.get("repeats") not in (None, 0, False):
            search.repeats = _int(search_raw["repeats"], "search.repeats", minimum=2)
    with errors.section():
        search.objectives = _parse_objectives(search_raw.get("objectives", []))
    with errors.section():
        reference = _mapping(search_raw.get("reference_point", {}), "search.reference_point", "expected a mapping of objective to value")
        for key, value in reference.items():
            with errors.section():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise SpaceError(f"search.reference_point.{key}", f"expected a number, got {value!r}")
                search.reference_point[str(key)] = float(value)
    for key, minimum in (("trials", 1), ("concurrency", 1), ("seed", 0)):
        with errors.section():
            setattr(search, key, _int(search_raw.get(key, getattr(SearchSpec, key)), f"search.{key}", minimum=minimum))
    with errors.section():
        search.constraints = parse_constraints(search_raw.get("constraints"))
    return fields


def _parse_tracking(top: dict, path: Path | None, errors: ErrorCollector, parsed: Fields) -> Fields:
    tracking = _mapping(top.get("tracking", {}), "tracking", "expected a mapping like {uri: sqlite:///...}")
    _known_keys(tracking, ("uri",), "tracking")
    uri = tracking.get("uri", Space.tracking_uri)
    if uri is not None and not isinstance(uri, str):
        raise SpaceError("tracking.uri", f"expected a tracking URI string, got {uri!r}")
    return {"tracking_uri": uri}


def _parse_ray(top: dict, path: Path | None, errors: ErrorCollector, parsed: Fields) -> Fields:
    ray = RaySpec()
    ray_raw = _mapping(top.get("ray", {}), "ray", "expected a mapping")
    with errors.section():
        _known_keys(ray_raw, ("address", "cpus_per_trial", "gpus_per_trial"), "ray")
    with errors.section():
        address = ray_raw.get("address", RaySpec.address)
        if address is not None and not isinstance(address, str):
            raise SpaceError("ray.address", f"expected an address string (auto, host:port, ray://host:10001), got {address!r}")
        ray.address = address
    with errors.section():
        ray.cpus_per_trial = _number(ray_raw.get("cpus_per_trial", RaySpec.cpus_per_trial), "ray.cpus_per_trial", positive=True)
    with errors.section():
        ray.gpus_per_trial = _number(ray_raw.get("gpus_per_trial", RaySpec.gpus_per_trial), "ray.gpus_per_trial", positive=False)
    return {"ray": ray}


def _parse_plugins(top: dict, path: Path | None, errors: ErrorCollector, parsed: Fields) -> Fields:
    plugins = top.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) and p for p in plugins):
        raise SpaceError("plugins", f"expected a list of module names or .py paths, got {plugins!r}")
    return {"plugins": plugins}


def _ranges(raw: dict, path: str, errors: ErrorCollector) -> dict[str, Knob]:
    """Each value of ``raw`` parsed as a range (``parse_range``); a bad one is collected and left out."""
    knobs = {}
    for key, value in raw.items():
        with errors.section():
            knobs[key] = parse_range(value, f"{path}.{key}")
    return knobs


OBJECTIVES_EXPECTED = "expected a list of task names, params, latency, delta_m, worst_gain or groups ({group: {name: n, tasks: [a, b]}} or a+b)"


def _parse_objectives(raw: Any) -> list[str | GroupObjective]:
    if not isinstance(raw, list):
        raise SpaceError("search.objectives", f"{OBJECTIVES_EXPECTED}, got {raw!r}")
    out: list[str | GroupObjective] = []
    for i, item in enumerate(raw):
        path = f"search.objectives[{i}]"
        if isinstance(item, str) and "+" in item:
            tasks = tuple(t.strip() for t in item.split("+"))
            out.append(GroupObjective(item, tasks, path))
        elif isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and list(item) == ["group"]:
            group = _mapping(item["group"], f"{path}.group", "expected {name: ..., tasks: [...]}")
            _known_keys(group, ("name", "tasks"), f"{path}.group")
            tasks = group.get("tasks")
            if not isinstance(tasks, list) or not all(isinstance(t, str) and t for t in tasks):
                raise SpaceError(f"{path}.group.tasks", f"expected a list of task names, got {tasks!r}")
            name = group.get("name", "+".join(tasks))
            if not isinstance(name, str) or not name:
                raise SpaceError(f"{path}.group.name", f"expected a non-empty name, got {name!r}")
            out.append(GroupObjective(name, tuple(tasks), f"{path}.group"))
        else:
            raise SpaceError(path, f"{OBJECTIVES_EXPECTED}, got {item!r}")
        if isinstance(out[-1], GroupObjective) and (len(out[-1].tasks) < 2 or len(set(out[-1].tasks)) != len(out[-1].tasks) or not all(out[-1].tasks)):
            raise SpaceError(out[-1].path, f"a group needs at least two distinct task names, got {list(out[-1].tasks)!r}")
    names = [o if isinstance(o, str) else o.name for o in out]
    if len(set(names)) != len(names):
        raise SpaceError("search.objectives", f"an objective is listed twice: {names!r}")
    return out


def _parse_baseline(top: dict, path: Path | None, errors: ErrorCollector, parsed: Fields) -> Fields:
    baseline = _baseline(top.get("baseline", {}))
    search = parsed.get("search", SearchSpec())
    if search.repeats and not (baseline.enabled and baseline.mode == "search"):
        errors.add(SpaceError("search.repeats", "repeats measure the noise of the gains over searched single-task references: "
                              "they need baseline mode search (the default)"))
    return {"baseline": baseline}


def _baseline(raw: Any) -> BaselineSpec:
    if raw is False:
        return BaselineSpec(enabled=False)
    raw = _mapping(raw if raw is not None else {}, "baseline", "expected false (no single-task references) or a mapping like {trials: 4, training: {lr: 0.001}}")
    _known_keys(raw, ("mode", "trials", "backbone", "training", "inputs", "tower_width", "gbdt"), "baseline")
    mode = raw.get("mode", BaselineSpec.mode)
    if mode not in BASELINE_MODES:
        raise SpaceError("baseline.mode", f"expected one of {', '.join(BASELINE_MODES)}, got {mode!r}")
    if mode == "fixed" and "trials" in raw:
        raise SpaceError("baseline.trials", "a fixed reference is one configuration trained once per task; remove trials: or use mode: search")
    trials = _int(raw["trials"], "baseline.trials", minimum=1) if "trials" in raw else None
    sections = {}
    for key in ("backbone", "training", "inputs"):
        section = _mapping(raw.get(key, {}), f"baseline.{key}", "expected a mapping of knob name to one value")
        for name, value in section.items():
            if isinstance(value, (dict, list)) and not (key == "backbone" and isinstance(value, list)):
                raise SpaceError(f"baseline.{key}.{name}", f"expected one value (it pins the references' {key} knob), got {value!r}")
        sections[key] = {str(k): v for k, v in section.items()}
    tower_width = _int(raw["tower_width"], "baseline.tower_width", minimum=1) if "tower_width" in raw else None
    gbdt = raw.get("gbdt", BaselineSpec.gbdt)
    if not isinstance(gbdt, bool):
        raise SpaceError("baseline.gbdt", f"expected true or false, got {gbdt!r}")
    return BaselineSpec(True, sections["backbone"], sections["training"], sections["inputs"], tower_width, mode, trials, gbdt)


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

    def smallest_configuration(self, strategy: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """(strategy knobs, backbone values, input-layer values) of ``strategy``'s smallest configuration in this plan."""
        from ..nn.create import smallest_configuration

        return smallest_configuration(self.problem, self.strategies[strategy][1], self.backbone_kind, self.backbone, self.inputs)


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
        if "scale" in spec and kind != "regression":
            raise SpaceError(f"tasks.{task.name}.scale", f"only a regression target is standardised; {task.name!r} is {kind}")
        metric = spec.get("metric", task.metric if kind == task.kind else "")
        new_tasks.append(replace(task, kind=kind, metric=metric, classes=int(spec.get("classes", task.classes)), after=spec.get("after", task.after),
                                 **({} if kind == task.kind else {"target_mean": 0.0, "target_std": 1.0})))
    return replace(problem, tasks=tuple(new_tasks))


def unscaled_tasks(space: Space) -> list[str]:
    """The tasks whose regression target the space keeps in its own units (``tasks.<name>.scale: false``)."""
    return [name for name, spec in space.tasks.items() if spec.get("scale") is False]


def resolve(space: Space, registry: Any, problem: Problem) -> Plan:
    """Check every name and knob of ``space`` against ``registry`` and the data set's ``problem``.

    Independent errors are reported together (a :class:`SpaceErrors` when there are several):
    each strategy, weighting and objective is checked even after another failed.
    """
    errors = ErrorCollector()
    problem_checked = problem
    with errors.section():
        problem_checked = apply_task_overrides(problem, space.tasks)
    problem = problem_checked

    kind, backbone = None, {}
    with errors.section():
        kind = registry.lookup("backbones", space.backbone_kind, "backbone.kind")
        if kind.input_ranks is not None and len(problem.input_shape) not in kind.input_ranks:
            raise SpaceError(
                "backbone.kind",
                f"backbone kind {kind.name!r} needs inputs with {' or '.join(map(str, kind.input_ranks))} axes; "
                f"data set {space.dataset!r} has input shape {tuple(problem.input_shape)}",
            )
    if kind is not None:
        with errors.section():
            backbone = _merge_knobs(kind.knobs, space.backbone, "backbone", f"backbone kind {kind.name!r}")
    backbone_ok = kind is not None and not errors
    values: dict[str, Knob] = {}
    if backbone_ok:
        try:
            values = kind.value_ranges(backbone, problem.input_shape)  # what bounds naming a backbone value read
        except (ValueError, TypeError) as exc:
            errors.add(SpaceError("backbone", f"backbone kind {kind.name!r} cannot be built from these values: {exc}"))
            backbone_ok = False
    strategies = {}
    for name, overrides in space.strategies.items():
        with errors.section():
            strategy = registry.lookup("strategies", name, f"strategies.{name}")
            if kind is not None and not strategy.supports(kind.name):
                raise SpaceError(
                    f"strategies.{name}",
                    f"strategy {name!r} does not support backbone kind {kind.name!r}; it supports {', '.join(strategy.backbones)}",
                )
            knobs = _merge_knobs(strategy.knobs, overrides, f"strategies.{name}", f"strategy {name!r}")
            if backbone_ok:  # these reason about the backbone's ranges: only once they are valid
                # bounds naming other knobs (of the strategy, the backbone) name something and never make a range empty
                check_named_bounds(knobs, {**backbone, **values}, f"strategies.{name}")
                _check_backbone_bounds(strategy.knobs, knobs, values, f"strategies.{name}")
                strategy.check(knobs, {**backbone, **values}, f"strategies.{name}")
            strategy.check_problem(knobs, problem, f"strategies.{name}")
            strategies[name] = (strategy, knobs)

    names = space.weighting.values()
    weightings = {}
    for name in names:
        with errors.section():
            if not isinstance(name, str):
                raise SpaceError("training.weighting", f"expected weighting names, got {name!r}")
            cls = registry.lookup("weightings", name, "training.weighting")
            overrides = space.weighting_options.get(name, {})
            weightings[name] = (cls, _merge_knobs(cls.knobs_for(problem), overrides, f"training.weighting_options.{name}", f"weighting {name!r}"))
            for strategy_name, (strategy, _) in strategies.items():
                reason = cls.incompatibility(strategy)
                if reason:
                    errors.add(SpaceError("training.weighting", f"weighting {name!r} cannot train strategy {strategy_name!r}: {reason}"))
    for name in space.weighting_options:
        if name not in weightings and name not in names:
            errors.add(SpaceError(f"training.weighting_options.{name}",
                                  f"{name!r} is not a weighting of this space; training.weighting offers {', '.join(map(str, names))}"))

    objectives: list[Objective] = []
    with errors.section():
        objectives = resolve_objectives(space.search.objectives, problem, space.baseline.enabled)
    for name in space.search.reference_point:
        if objectives and name not in [o.name for o in objectives]:
            errors.add(SpaceError(f"search.reference_point.{name}",
                                  f"not an objective of this search; objectives: {', '.join(o.name for o in objectives)}"))

    with errors.section():
        check_constraints(space.search.constraints, problem)
    training, inputs = {}, {}
    with errors.section():
        training = _merge_knobs(TRAINING_KNOBS, space.training, "training", "training")
    with errors.section():
        inputs = _merge_knobs(INPUT_KNOBS, space.inputs, "inputs", "the input layer")
        if space.inputs and not has_categories(problem):
            raise SpaceError("inputs", "the data set has no categorical features, so there is nothing to encode")
    errors.raise_if_any()
    plan = Plan(space, problem, strategies, kind, backbone, training, weightings, space.weighting, objectives,
                inputs if has_categories(problem) else {})
    if space.baseline.enabled:
        _baseline_sections(plan)  # a baseline: key naming no knob is an error before anything runs
    if space.baseline.gbdt and problem.features is None:
        raise SpaceError("baseline.gbdt", f"the GBDT comparison fits a table; data set {space.dataset!r} is not one (data: {{csv: ...}} or {{parquet: ...}})")
    return plan


def default_objectives(problem: Problem, references: bool) -> list[str]:
    """Every task, or for more than four tasks (with references) ``[delta_m, worst_gain]``."""
    if references and len(problem.tasks) > MAX_TASK_OBJECTIVES:
        return list(GAIN_OBJECTIVES)
    return problem.task_names


def resolve_objectives(listed: list[str | GroupObjective], problem: Problem, references: bool) -> list[Objective]:
    """The typed objectives of ``search.objectives``; a list naming only cost objectives (or none) gets the default task part first."""
    if all(isinstance(o, str) and o in COST_OBJECTIVES for o in listed):
        listed = [*default_objectives(problem, references), *listed]
    valid = problem.task_names + list(COST_OBJECTIVES) + list(GAIN_OBJECTIVES)
    objectives = []
    for i, item in enumerate(listed):
        if isinstance(item, GroupObjective):
            for task in item.tasks:
                if task not in problem.task_names:
                    raise SpaceError(f"{item.path}", f"unknown task {task!r} in group {item.name!r}; {did_you_mean(task, problem.task_names)}")
            if not references:
                raise SpaceError(item.path, "a group objective is the mean gain over single-task references; remove `baseline: false`")
            objectives.append(Objective(item.name, group_key(item.name), "max", item.tasks))
        elif item in COST_OBJECTIVES:
            objectives.append(Objective(item, item, COST_OBJECTIVES[item]))
        elif item in GAIN_OBJECTIVES:
            if not references:
                raise SpaceError(f"search.objectives[{i}]", f"{item} is measured against single-task references; remove `baseline: false`")
            objectives.append(Objective(item, item, "max"))
        elif item in problem.task_names:
            objectives.append(Objective(item, val_key(item), problem.task(item).direction))
        else:
            raise SpaceError(f"search.objectives[{i}]", f"unknown objective {item!r}; {did_you_mean(item, valid)}")
    return objectives


@dataclass
class ReferenceSettings:
    """The resolved reference configuration: one value per backbone, training and input knob."""

    backbone: dict[str, Any]
    training: dict[str, Any]
    inputs: dict[str, Any]
    tower_width: int


def reference_settings(plan: Plan) -> ReferenceSettings:
    """The fixed reference's configuration: values from ``baseline:``, midpoints for the rest (a key naming no knob: SpaceError)."""
    values = {section: {name: given.get(name, knob.midpoint()) for name, knob in knobs.items()}
              for section, knobs, given in _baseline_sections(plan)}
    tower_width = plan.space.baseline.tower_width
    return ReferenceSettings(values["backbone"], values["training"], values["inputs"],
                             FIXED_TOWER_WIDTH if tower_width is None else tower_width)


def reference_ranges(plan: Plan) -> dict[str, dict[str, Knob]]:
    """The searched references' ranges: the space's backbone, training and input knobs, those ``baseline:`` pins as constants."""
    return {section: {name: Fixed(given[name]) if name in given else knob for name, knob in knobs.items()}
            for section, knobs, given in _baseline_sections(plan)}


def _baseline_sections(plan: Plan) -> list[tuple[str, dict[str, Knob], dict[str, Any]]]:
    spec = plan.space.baseline
    sections = [("backbone", plan.backbone, spec.backbone), ("training", plan.training, spec.training), ("inputs", plan.inputs, spec.inputs)]
    for section, knobs, given in sections:
        for name in given:
            if name not in knobs:
                raise SpaceError(f"baseline.{section}.{name}", f"not a {section} knob of this space; {did_you_mean(name, knobs)}")
    return sections


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
    """A space's range for a knob whose bound names a backbone value (``Int(0, "depth")``) or another knob of the strategy
    (``Int(1, "experts")``; that knob first) must stay within it for every trial."""
    for name, knob in declared.items():
        if not knob.bound_names() or knobs[name] is knob:
            continue
        low, high = knob_bounds(knobs[name])
        for bound, smallest in ((knob.high, True), (knob.low, False)):
            if not isinstance(bound, str):
                continue
            sibling = bound in knobs and bound != name  # a knob of the strategy takes precedence over a backbone value
            if not sibling and bound not in values:
                raise SpaceError(f"{path}.{name}", f"its bound names {bound!r}, which this backbone kind does not have")
            lo, hi = knob_bounds(knobs[bound], {**values, **knobs}) if sibling else knob_bounds(values[bound])
            owner = f"knob {bound}" if sibling else f"the backbone's {bound}"
            where = f"{owner} ({lo} to {hi})" if lo != hi else f"{owner} ({lo})"
            if smallest and high > lo:
                raise SpaceError(f"{path}.{name}", f"{high} is above {where}; every trial's value must be at most {lo}")
            if not smallest and low < hi:
                raise SpaceError(f"{path}.{name}", f"{low} is below {where}; every trial's value must be at least {hi}")


def _merge_knobs(declared: dict[str, Knob], overrides: dict[str, Knob], path: str, owner: str) -> dict[str, Knob]:
    merged = dict(declared)
    errors = ErrorCollector()
    for name, override in overrides.items():
        with errors.section():
            if name not in declared:
                raise SpaceError(f"{path}.{name}", f"unknown knob {name!r} of {owner}; {did_you_mean(name, declared)}")
            merged[name] = declared[name].narrow(override, f"{path}.{name}")
    errors.raise_if_any()
    return merged


def _mapping(value: Any, path: str, expected: str) -> dict:
    if value is None and path:
        raise SpaceError(path, f"missing; {expected}")
    if not isinstance(value, dict):
        raise SpaceError(path, f"{expected}; got {type(value).__name__} {value!r}")
    return value


def _known_keys(mapping: dict, known: tuple[str, ...], path: str) -> None:
    errors = ErrorCollector()
    for key in mapping:
        if key not in known:
            where = f"{path}.{key}" if path else str(key)
            errors.add(SpaceError(where, f"unknown key {key!r}; {did_you_mean(str(key), known).replace('valid names', 'valid keys')}"))
    errors.raise_if_any()


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
