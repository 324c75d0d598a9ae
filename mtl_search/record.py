"""A trial's record: every key a trial reports, every MLflow tag and run role, the typed trial, its one encoder and decoder.

This module is the one owner of the names a trial's figures travel under. A trial reports
flat mappings (through Ray Tune): each epoch's :func:`epoch_metrics`, then its final result
(:meth:`TrialResult.to_flat`). The driver logs them to MLflow (:func:`logged_epoch_metrics`,
:func:`logged_final_metrics`) and reads them back into a :class:`TrialRecord`
(:meth:`TrialRecord.from_result` from Tune's last result, :meth:`TrialRecord.from_run`
from an MLflow run): both go through one decoder, :func:`split_figures`. The search run's
figures (references, the GBDT row, a repeated trial's noise) are encoded and decoded here too.

Keys (percent gains: ``results.metrics``):

- per task ``val/<task>``, ``test/<task>`` (its metric), ``gain/<task>``, ``test_gain/<task>``
  (its gain over its single-task reference), ``group/<name>`` (a group objective's mean gain);
- summaries ``delta_m``, ``worst_gain``, ``test_delta_m``, ``test_worst_gain``; costs
  ``params``, ``latency``, ``train_seconds``;
- per epoch ``epoch``, ``score``, ``train_loss/<task>``, ``val_loss/<task>``, ``weight/<task>``;
- a strategy's own figures ``model/<name>`` (metrics) and, as tags, the model's ``model/<name>``.

Nothing here imports from mtl_search's subpackages: everything above may import it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .config import NUMBER_KEY, REFERENCE_TASK_KEY, REPEAT_KEY, REPEAT_OF_KEY, STRATEGY_KEY

# --- what a trial reports ----------------------------------------------------------------------
VAL = "val/"  # per-task validation metric: val/<task>
TEST = "test/"  # per-task test metric: test/<task>
GAIN = "gain/"  # per-task validation gain over the reference, percent: gain/<task>
TEST_GAIN = "test_gain/"  # the same on the test split
GROUP = "group/"  # a group objective's mean validation gain: group/<name>
DELTA_M = "delta_m"
WORST_GAIN = "worst_gain"
TEST_DELTA_M = "test_delta_m"
TEST_WORST_GAIN = "test_worst_gain"
PARAMS = "params"
LATENCY = "latency"
TRAIN_SECONDS = "train_seconds"
COST_METRICS = (PARAMS, LATENCY, TRAIN_SECONDS)  # a trial's final figures besides per-task metrics
COST_OBJECTIVES = {PARAMS: "min", LATENCY: "min"}
GAIN_SUMMARIES = (DELTA_M, WORST_GAIN, TEST_DELTA_M, TEST_WORST_GAIN)
GAIN_OBJECTIVES = (DELTA_M, WORST_GAIN)
EPOCH = "epoch"
SCORE = "score"  # the trainer's early-stopping score (the scheduler's metric)
TRAIN_LOSS = "train_loss/"
VAL_LOSS = "val_loss/"
WEIGHT = "weight/"  # a task's loss weight in that epoch
EPOCH_PREFIXES = (TRAIN_LOSS, VAL, VAL_LOSS, WEIGHT)
FINAL = "final"  # True on a trial's last report, its result
EPOCHS_TRAINED = "epochs_trained"
MODEL = "model/"  # a strategy's own figures (MultiTaskModel.trial_metrics) and tags (trial_tags)
SHARING_MAP_JSON = "sharing_map_json"
TAGS_JSON = "tags_json"
DEVICE, NODE_ID = "device", "node_id"  # where a trial ran (the device, the Ray node), in every report
PLACEMENT = (DEVICE, NODE_ID)

METRIC_DIRECTIONS = {"mse": "min", "mae": "min", "logloss": "min", "auc": "max", "accuracy": "max"}  # every task metric's direction

# --- the search run's figures -------------------------------------------------------------------
REFERENCE = "reference/"  # the single-task references: reference/val/<task>, reference/test/<task>
GBDT = "gbdt/"  # the GBDT comparison row: gbdt/val/<task>, gbdt/test/<task>, gbdt/seconds
GBDT_SECONDS = GBDT + "seconds"
GBDT_GAIN = "gbdt_gain/"  # a trial's validation gain over the GBDT row, percent, per task (report columns)
NOISE = "noise/"  # a repeated front trial's spread over seeds: noise/<figure>/{mean,std,n,significant}
AFFINITY = "affinity/"  # task affinity: affinity/<strategy>/<i>/<j> on a search run, affinity/<i>/<j> on a groups run
HYPERVOLUME = "hypervolume"
FRONT_SIZE = "front_size"

# --- MLflow tags --------------------------------------------------------------------------------
ROLE = "mtl_search.role"  # what a run is: one of ROLES
ROLE_SEARCH, ROLE_TRIAL, ROLE_REFERENCE, ROLE_REPEAT, ROLE_GROUPS = "search", "trial", "reference", "repeat", "groups"
STRATEGY = "mtl_search.strategy"
FAMILY = "mtl_search.family"
PARETO = "mtl_search.pareto"
VIOLATES = "mtl_search.violates"  # the search.constraints a finished trial violates ("; "-separated, empty: feasible)
NUMBER = "mtl_search.trial_number"
OBJECTIVES = "mtl_search.objectives"
TASK_METRICS = "mtl_search.task_metrics"  # JSON {task: metric} on the search run: what its val/test values measure
STATUS = "mtl_search.status"  # "stopped" on a trial the scheduler (or a second Ctrl-C) ended early
ERROR = "mtl_search.error"  # a failed trial's last error line
PLACEMENT_TAGS = {DEVICE: "mtl_search.device", NODE_ID: "mtl_search.node_id"}
CHECKPOINT = "mtl_search.checkpoint"  # the folder of a finished trial's saved model (a Tune checkpoint)
STUDY = "mtl_search.study"  # the search's Optuna study (in optuna.db next to the tracking store)
REFERENCE_TASK = "mtl_search.reference_task"  # on a single-task reference trial: its task
BEST_REFERENCE = "mtl_search.reference_best"  # "true" on the reference trial chosen as its task's reference
REPEAT_OF = "mtl_search.repeat_of"  # on a repeat: the run id of the trial it trains again
REPEAT = "mtl_search.repeat"  # on a repeat: its seed index, 1, 2, ...
REFERENCE_RUNS = "mtl_search.reference_runs"  # JSON {task: run id} on the search run: the chosen reference trials
REFERENCE_POINT = "mtl_search.reference_point"  # JSON list: the hypervolume's reference point (a tag: it moves as trials finish)
INTERRUPTED = "mtl_search.interrupted"  # on a search stopped by Ctrl-C (its run ends KILLED; --resume continues it)
NEGATIVE_TRANSFER = "mtl_search.negative_transfer"
PYFUNC_ERROR = "mtl_search.pyfunc_error"  # on a front trial whose pyfunc model could not be logged
PARENT = "mlflow.parentRunId"  # MLflow's system tags
NOTE = "mlflow.note.content"
EXPERIMENT_KIND = "mlflow.experimentKind"
VIEW = "mlflow.sharedViewState.mtl_search"  # an experiment tag: the runs table's stored view of a search (results.review)

# MLflow run status -> a trial's status; a tag STATUS overrides it (stopped)
_RUN_STATUS = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "killed"}


def val_key(task: str) -> str:
    return VAL + task


def test_key(task: str) -> str:
    return TEST + task


def gain_key(task: str) -> str:
    return GAIN + task


def group_key(name: str) -> str:
    return GROUP + name


def is_gain_key(key: str) -> bool:
    """A key of a gain figure (``results.metrics.gain_metrics`` writes them)."""
    return key.startswith((GAIN, TEST_GAIN, GROUP)) or key in GAIN_SUMMARIES


def is_trial_figure(key: str) -> bool:
    """A final per-trial figure that a TrialRecord keeps in ``metrics`` (costs, Δm, worst gain, groups)."""
    return key in COST_METRICS or key in GAIN_SUMMARIES or key.startswith(GROUP)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _by_prefix(values: Mapping[str, Any], prefix: str) -> dict[str, float]:
    return {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}


# --- typed values ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Objective:
    """A search objective: its name, the result key it reads and its direction; ``tasks`` for a group's mean gain."""

    name: str
    key: str
    direction: str
    tasks: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The form MLflow stores (the search run's ``mtl_search.objectives`` tag)."""
        data: dict[str, Any] = {"name": self.name, "key": self.key, "direction": self.direction}
        if self.tasks:
            data["tasks"] = list(self.tasks)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Objective":
        return cls(str(data["name"]), str(data["key"]), str(data["direction"]), tuple(data.get("tasks", ())))


@dataclass(frozen=True)
class Spread:
    """Values of one figure over repeated seeds: their mean, sample standard deviation, count, and whether the mean is beyond noise."""

    mean: float
    std: float
    n: int
    significant: bool

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "significant": self.significant}


def negative_transfer(gains: Mapping[str, float]) -> bool:
    """True when some task is worse than its single-task reference (a negative gain)."""
    return any(math.isfinite(g) and g < 0 for g in gains.values())


def negative_transfer_beyond_noise(noise: Mapping[str, Spread]) -> bool:
    """True when some task's gain over repeated seeds is significantly below 0."""
    return any(s.significant and s.mean < 0 for key, s in noise.items() if key.startswith(GAIN))


@dataclass
class Figures:
    """A trial's reported figures, decoded: per-task val/test metrics and gains, and its other final figures."""

    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    gains: dict[str, float] = field(default_factory=dict)
    test_gains: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # costs, delta_m, worst_gain, group/<name> (is_trial_figure)


def split_figures(values: Mapping[str, Any], finished: bool) -> Figures:
    """The one decoder of a trial's flat figures (a Tune result, or an MLflow run's metrics).

    A trial that did not finish keeps only its costs: per-epoch values are not its result.
    """
    numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if not finished:
        return Figures(metrics={k: v for k, v in numbers.items() if k in COST_METRICS})
    return Figures(_by_prefix(numbers, VAL), _by_prefix(numbers, TEST), _by_prefix(numbers, GAIN), _by_prefix(numbers, TEST_GAIN),
                   {k: v for k, v in numbers.items() if is_trial_figure(k)})


# --- what a trial reports (the encoders) ---------------------------------------------------------
def epoch_metrics(epoch: int, score: float, train_loss: Mapping[str, float], val: Mapping[str, float],
                  val_loss: Mapping[str, float], weights: Mapping[str, float]) -> dict[str, Any]:
    """The flat mapping one epoch reports."""
    out: dict[str, Any] = {EPOCH: epoch, SCORE: score}
    for prefix, values in ((TRAIN_LOSS, train_loss), (VAL, val), (VAL_LOSS, val_loss), (WEIGHT, weights)):
        out.update({prefix + task: value for task, value in values.items()})
    return out


def epoch_costs(params: float, placement: Mapping[str, str]) -> dict[str, Any]:
    """What every epoch's report carries besides its metrics: the objectives Tune's searcher and schedulers watch.

    Latency is only measured at the end, so epochs carry a NaN latency.
    """
    return {PARAMS: params, LATENCY: math.nan, **placement}


@dataclass
class TrialResult:
    """What a finished trial reports: its figures, costs, where it ran and what its model says about itself."""

    val: dict[str, float]
    test: dict[str, float]
    params: float
    latency: float
    train_seconds: float
    epochs_trained: int
    score: float  # the scheduler's metric, of the model as returned
    gains: dict[str, float] = field(default_factory=dict)  # every gain key (results.metrics.gain_metrics); empty without references
    placement: dict[str, str] = field(default_factory=dict)
    model_metrics: dict[str, float] = field(default_factory=dict)
    model_tags: dict[str, str] = field(default_factory=dict)
    sharing_maps: dict[str, Any] = field(default_factory=dict)  # name -> SharingMap.to_dict()

    def to_flat(self) -> dict[str, Any]:
        """The encoder: the flat mapping the trial's last report carries (Tune passes it to the driver)."""
        out: dict[str, Any] = {FINAL: True, PARAMS: self.params, LATENCY: self.latency, TRAIN_SECONDS: self.train_seconds,
                               EPOCHS_TRAINED: self.epochs_trained, SCORE: self.score, **self.placement,
                               SHARING_MAP_JSON: json.dumps(self.sharing_maps)}
        out.update({VAL + t: v for t, v in self.val.items()})
        out.update({TEST + t: v for t, v in self.test.items()})
        out.update(self.gains)
        out.update({MODEL + k: float(v) for k, v in self.model_metrics.items()})
        out[TAGS_JSON] = json.dumps({MODEL + k: str(v) for k, v in self.model_tags.items()})
        return out


def is_final(result: Mapping[str, Any]) -> bool:
    """Whether a report is a trial's final result (else an epoch's)."""
    return bool(result.get(FINAL))


def is_epoch(result: Mapping[str, Any]) -> bool:
    """Whether a report is an epoch's."""
    return not is_final(result) and EPOCH in result


def logged_epoch_metrics(result: Mapping[str, Any]) -> tuple[int, dict[str, float]]:
    """The step and the metrics an epoch's report logs to its trial run."""
    return int(result[EPOCH]), {k: float(v) for k, v in result.items()
                                if (k.startswith(EPOCH_PREFIXES) or k == SCORE) and _finite(v)}


def logged_final_metrics(result: Mapping[str, Any]) -> tuple[int, dict[str, float]]:
    """The step and the metrics a final result logs to its trial run."""
    keys = [k for k in result if k.startswith((VAL, TEST, MODEL)) or k in (*COST_METRICS, EPOCHS_TRAINED) or is_gain_key(k)]
    return int(result.get(EPOCHS_TRAINED, 0)), {k: float(result[k]) for k in keys if _finite(result[k])}


def result_tags(result: Mapping[str, Any]) -> dict[str, str]:
    """The model's own tags a final result carries (``model/<name>``)."""
    return json.loads(result.get(TAGS_JSON) or "{}")


def result_sharing_maps(result: Mapping[str, Any]) -> dict[str, Any]:
    """The sharing maps a final result carries, as dicts (``SharingMap.from_dict`` reads each)."""
    return json.loads(result.get(SHARING_MAP_JSON) or "{}")


def placement_of(result: Mapping[str, Any]) -> dict[str, str]:
    """Where a trial ran (device, Ray node id), from any of its reports."""
    return {k: str(result[k]) for k in PLACEMENT if k in result}


# --- a trial's run: its tags, params and name -----------------------------------------------
def trial_run_name(number: int, strategy: str) -> str:
    """The name of a trial's MLflow run, e.g. ``trial-007-mmoe``."""
    return f"trial-{number:03d}-{strategy}"


def reference_run_name(task: str, number: int) -> str:
    """The MLflow run name of task ``task``'s single-task reference trial ``number``."""
    return f"reference-{task}-{number:03d}"


def trial_run_tags(parent_id: str, number: int, strategy: str, family: str, reference_task: str | None = None,
                   repeat_of: str | None = None, repeat: int = 0) -> tuple[str, dict[str, str]]:
    """A trial run's name and tags: role ``trial``, ``reference`` (``reference_task``) or ``repeat`` (``repeat_of``)."""
    tags = {PARENT: parent_id, ROLE: ROLE_TRIAL, STRATEGY: strategy, FAMILY: family, NUMBER: str(number)}
    name = trial_run_name(number, strategy)
    if reference_task is not None:
        tags.update({ROLE: ROLE_REFERENCE, REFERENCE_TASK: reference_task})
        name = reference_run_name(reference_task, number)
    if repeat_of is not None:
        tags.update({ROLE: ROLE_REPEAT, REPEAT_OF: repeat_of, REPEAT: str(repeat)})
        name = f"{name}-repeat-{repeat}"
    return name, tags


def param_text(value: Any) -> str:
    """A param as MLflow stores it (a string): lists and dicts as JSON (:func:`param_value` reads it back)."""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


_PYTHON_LITERALS = {"True": True, "False": False, "None": None}  # str() of a bool or None, as param_text writes them


def param_value(text: str) -> Any:
    """A param as logged back to its JSON (or Python literal) value where it is one."""
    if text in _PYTHON_LITERALS:
        return _PYTHON_LITERALS[text]
    try:
        return json.loads(text)
    except ValueError:
        return text


# --- the typed trial ------------------------------------------------------------------------
@dataclass
class TrialRecord:
    """One trial as recorded: configuration, status, per-task val/test metrics, the other final figures."""

    number: int
    run_id: str
    strategy: str
    params: dict[str, Any]
    status: str  # finished | failed | stopped (ended early by the scheduler or a cancel) | killed (by a crash)
    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # costs, delta_m, worst_gain, group/<name> (is_trial_figure)
    gains: dict[str, float] = field(default_factory=dict)  # per task: validation gain over its single-task reference, percent
    test_gains: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    checkpoint: str | None = None
    pareto: bool = False
    family: str = ""
    placement: dict[str, str] = field(default_factory=dict)  # device and Ray node id where it ran
    violations: list[str] | None = None  # the search.constraints it violates (empty: feasible); None: no constraints
    reference_task: str | None = None  # a single-task reference trial's task (None: a multi-task trial)
    repeat_of: str | None = None  # a repeat (search.repeats): the run id of the trial it trains again with another seed
    repeat: int = 0  # a repeat's seed index, 1, 2, ...
    noise: dict[str, Spread] = field(default_factory=dict)  # a repeated front trial: gain/<task>, delta_m, test_... over its seeds

    @classmethod
    def from_result(cls, config: Mapping[str, Any], run_id: str, status: str, result: Mapping[str, Any], family: str,
                    error: str | None = None, checkpoint: str | None = None) -> "TrialRecord":
        """A trial as the driver sees it end: its flat configuration and Tune's last report."""
        figures = split_figures(result, status == "finished")
        return cls(number=int(config[NUMBER_KEY]), run_id=run_id, strategy=config[STRATEGY_KEY], params=dict(config), status=status,
                   **vars(figures), error=error, checkpoint=checkpoint, family=family, placement=placement_of(result),
                   reference_task=config.get(REFERENCE_TASK_KEY), repeat_of=config.get(REPEAT_OF_KEY),
                   repeat=int(config.get(REPEAT_KEY, 0)))

    @classmethod
    def from_run(cls, run_id: str, run_status: str, params: Mapping[str, str], metrics: Mapping[str, float],
                 tags: Mapping[str, str]) -> "TrialRecord":
        """A trial as its MLflow run holds it (``run_status``: MLflow's FINISHED, FAILED, KILLED, RUNNING ...)."""
        status = tags.get(STATUS) or _RUN_STATUS.get(run_status, run_status.lower())
        figures = split_figures(metrics, status == "finished")
        figures.metrics = {**{k: v for k, v in metrics.items() if "/" not in k}, **figures.metrics}
        return cls(
            number=int(tags.get(NUMBER, -1)), run_id=run_id, strategy=tags.get(STRATEGY, ""),
            params={k: param_value(v) for k, v in params.items()}, status=status, **vars(figures),
            error=tags.get(ERROR), pareto=tags.get(PARETO) == "true", checkpoint=tags.get(CHECKPOINT), family=tags.get(FAMILY, ""),
            placement={key: tags[tag] for key, tag in PLACEMENT_TAGS.items() if tag in tags},
            violations=(tags[VIOLATES].split("; ") if tags[VIOLATES] else []) if VIOLATES in tags else None,
            reference_task=tags.get(REFERENCE_TASK), repeat_of=tags.get(REPEAT_OF), repeat=int(tags.get(REPEAT, 0)),
            noise=noise_from_metrics(metrics),
        )

    @property
    def role(self) -> str:
        """``trial`` (a multi-task trial), ``reference`` (a single-task reference trial) or ``repeat`` (either, with another seed)."""
        return ROLE_REPEAT if self.repeat_of is not None else ROLE_REFERENCE if self.reference_task is not None else ROLE_TRIAL

    @property
    def identity(self) -> tuple:
        """What a re-run after --resume shares with the run it replaces."""
        return self.reference_task, self.number, self.repeat_of, self.repeat

    @property
    def run_name(self) -> str:
        """The child run's name in MLflow (what the plots label front points with)."""
        if self.reference_task is not None:
            return reference_run_name(self.reference_task, self.number)
        return trial_run_name(self.number, self.strategy)

    @property
    def negative_transfer(self) -> bool:
        """Some task is worse than its single-task reference on validation; with repeats, significantly worse."""
        if self.noise:
            return negative_transfer_beyond_noise(self.noise)
        return negative_transfer(self.gains)

    def value(self, key: str) -> float | None:
        """The figure a result key names (``val/<task>``, ``test/<task>``, ``gain/<task>``, ``delta_m``, ``params``, ...)."""
        for prefix, values in ((VAL, self.val), (TEST, self.test), (GAIN, self.gains), (TEST_GAIN, self.test_gains)):
            if key.startswith(prefix):
                return values.get(key[len(prefix):])
        return self.metrics.get(key)

    def objective_values(self, objectives: Iterable[Objective]) -> list[float] | None:
        """Values of the objectives, or None when the trial has no finite value for one of them."""
        values = []
        for obj in objectives:
            value = self.value(obj.key)
            if value is None or not math.isfinite(value):
                return None
            values.append(float(value))
        return values

    def to_json(self) -> dict[str, Any]:
        data = {"number": self.number, "run_id": self.run_id, "strategy": self.strategy, "family": self.family,
                "params": self.params, "status": self.status, "val": self.val, "test": self.test, "pareto": self.pareto,
                "metrics": self.metrics, "error": self.error, **self.placement,
                **({"feasible": not self.violations, "violations": self.violations} if self.violations is not None else {})}
        if self.gains:
            data.update({"gains": self.gains, "test_gains": self.test_gains, "negative_transfer": self.negative_transfer})
        if self.noise:
            data["noise"] = {key: s.to_json() for key, s in self.noise.items()}
        return data


# --- the search run's figures: references, the GBDT row, noise ----------------------------------
def reference_metrics(references: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The single-task references ``{"val": {task: m}, "test": {...}}`` as the search run's metrics."""
    return {f"{REFERENCE}{split}/{task}": float(v) for split, values in references.items() for task, v in values.items() if _finite(v)}


def references_from_metrics(metrics: Mapping[str, float]) -> dict[str, dict[str, float]] | None:
    """The references :func:`reference_metrics` encoded, or None."""
    found: dict[str, dict[str, float]] = {}
    for key, value in _by_prefix(metrics, REFERENCE).items():
        split, task = key.split("/", 1)
        found.setdefault(split, {})[task] = value
    return found or None


def gbdt_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """The GBDT row ``{"val": {task: m}, "test": {...}, "seconds": s}`` as the search run's metrics (the seconds mark a row logged)."""
    out = {f"{GBDT}{split}/{task}": float(v) for split in ("val", "test") for task, v in row[split].items() if _finite(v)}
    return {**out, GBDT_SECONDS: float(row["seconds"])}


def gbdt_from_metrics(metrics: Mapping[str, float]) -> dict[str, Any] | None:
    """The GBDT row :func:`gbdt_metrics` encoded, or None."""
    if GBDT_SECONDS not in metrics:
        return None
    found: dict[str, Any] = {"val": {}, "test": {}, "seconds": metrics[GBDT_SECONDS]}
    for key, value in _by_prefix(metrics, GBDT).items():
        split, _, task = key.partition("/")
        if split in ("val", "test") and task:
            found[split][task] = value
    return found


def noise_metrics(noise: Mapping[str, Spread]) -> dict[str, float]:
    """A repeated trial's spreads as its run's metrics: ``noise/<figure>/mean``, ``.../std``, ``.../n``, ``.../significant``."""
    return {f"{NOISE}{key}/{stat}": float(value) for key, s in noise.items() for stat, value in s.to_json().items()
            if _finite(float(value))}


def noise_from_metrics(metrics: Mapping[str, float]) -> dict[str, Spread]:
    """The spreads :func:`noise_metrics` encoded, by figure."""
    found: dict[str, dict[str, float]] = {}
    for key, value in _by_prefix(metrics, NOISE).items():
        figure, stat = key.rsplit("/", 1)
        found.setdefault(figure, {})[stat] = value
    return {figure: Spread(v.get("mean", math.nan), v.get("std", math.nan), int(v.get("n", 0)), bool(v.get("significant", 0.0)))
            for figure, v in found.items()}


def affinity_key(*names: str) -> str:
    """``affinity/<strategy>/<i>/<j>`` (a search run) or ``affinity/<i>/<j>`` (a groups run)."""
    return AFFINITY + "/".join(names)
