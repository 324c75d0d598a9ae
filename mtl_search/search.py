"""A search: Optuna proposes configurations (define-by-run), Ray Tune runs them, MLflow records them.

The data set is built once on the driver and reaches the trials through Ray's object
store (``tune.with_parameters``). The MLflow logging is a Tune callback on the driver.
"""
from __future__ import annotations

import math
import os
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .data import Dataset
from .errors import SpaceError, did_you_mean
from .knobs import Knob
from .plugins import Registry, load_registry
from .results import SearchRecord, TrialRecord, format_table, hypervolume_history, mark_front, trial_table
from .space import Plan, Space, resolve
from .tables import load_table
from .tracking import Tracker, default_store_dir, resolve_tracking_uri
from .trial import NUMBER_KEY, STRATEGY_KEY, TrialPlan, param_name, tune_trainable


def build_dataset(space: Space, registry: Registry) -> Dataset:
    """Build the space's data set (a registered one with its options, or the user's table); bad input is a SpaceError."""
    if space.table is not None:
        return load_table(space.table, space.tasks)
    entry = registry.lookup("datasets", space.dataset, "data.dataset")
    for key in space.dataset_options:
        if key not in entry.options:
            raise SpaceError(f"data.options.{key}", f"unknown option of data set {space.dataset!r}; {did_you_mean(key, entry.options)}")
    try:
        return entry.factory(**{**entry.options, **space.dataset_options})
    except (ValueError, TypeError) as exc:
        raise SpaceError("data.options", f"data set {space.dataset!r} rejected its options: {exc}") from None


def prepare(space: Space, registry: Registry | None = None) -> tuple[Plan, Dataset, Registry]:
    """Load plugins, build the data set and check the whole space against both."""
    registry = registry or load_registry(space.plugins, space.base_dir)
    for info in registry.plugins:
        if info.error and info.source == "space":
            raise SpaceError("plugins", f"plugin {info.name!r} could not be loaded: {info.error}")
    dataset = build_dataset(space, registry)
    plan = resolve(space, registry, dataset.problem)
    dataset.problem = plan.problem
    return plan, dataset, registry


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
        # a strategy's bound may name a backbone knob or the depth, which some kinds derive (conv: len(channels))
        depth = self.backbone_kind.build(self.input_shape, **backbone).depth
        _suggest_all(trial, strategy, self.strategies[strategy], config, {**backbone, "depth": depth})
        _suggest_all(trial, "training", self.training, config)
        weighting = self.weighting.suggest(trial, "training.weighting")
        config["training.weighting"] = weighting
        _suggest_all(trial, f"weighting.{weighting}", self.weightings[weighting], config)
        return config


def _suggest_all(trial: Any, section: str, knobs: dict[str, Knob], into: dict[str, Any], context: dict[str, Any] | None = None) -> dict[str, Any]:
    values = {name: knob.suggest(trial, param_name(section, name), context) for name, knob in knobs.items()}
    into.update({param_name(section, name): value for name, value in values.items()})
    return values


def make_sampler(name: str, seed: int, concurrency: int) -> Any:
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=concurrency > 1, seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    try:
        return optuna.samplers.GPSampler(seed=seed)
    except ImportError as exc:  # GPSampler needs scipy
        raise SpaceError("search.sampler", f"the gp sampler needs extra packages: {exc}") from None


def make_trial_plan(plan: Plan) -> TrialPlan:
    """What a worker needs to train any configuration of ``plan`` (everything but the data)."""
    space = plan.space
    return TrialPlan(
        problem=plan.problem,
        strategies={name: s for name, (s, _) in plan.strategies.items()},
        backbone_kind=plan.backbone_kind,
        weightings={name: cls for name, (cls, _) in plan.weightings.items()},
        epochs=space.epochs, patience=space.patience, seed=space.search.seed,
        cpus_per_trial=space.ray.cpus_per_trial, gpus_per_trial=space.ray.gpus_per_trial,
    )


@dataclass
class RunOptions:
    """Command-line overrides of a space."""

    trials: int | None = None
    concurrency: int | None = None
    address: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None


def ensure_ray(address: str | None) -> None:
    """Connect to ``address`` or start a local Ray instance sized to the machine (once per process)."""
    import ray

    if ray.is_initialized():
        return
    # Trials' own output (checkpoint notices, shutdown noise) stays in Ray's logs; a failing
    # trial's traceback reaches the user through Tune's error file and MLflow.
    ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=False)


def run_search(space: Space, options: RunOptions | None = None, registry: Registry | None = None,
               echo: Callable[[str], None] = print) -> SearchRecord:
    """Run a whole search and record it in MLflow; returns the record with the front marked."""
    from ray import tune

    options = options or RunOptions()
    plan, dataset, registry = prepare(space, registry)
    trials = options.trials or space.search.trials
    concurrency = options.concurrency or space.search.concurrency
    experiment = options.experiment or space.experiment
    objectives = [{"name": o.name, "key": o.key, "direction": o.direction} for o in plan.objectives]
    reference = [space.search.reference_point[o["name"]] for o in objectives] if space.search.reference_point else None

    tracker = Tracker(resolve_tracking_uri(options.tracking_uri or space.tracking_uri), experiment)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    search_run_id = tracker.start_search(
        f"search-{stamp}", objectives,
        {"trials": trials, "concurrency": concurrency, "sampler": space.search.sampler, "seed": space.search.seed,
         "strategies": list(plan.strategies), "dataset": space.dataset, "backbone": plan.backbone_kind.name},
        space.path.read_text() if space.path else "",
    )
    echo(f"search {experiment!r}: {trials} trials, strategies {', '.join(plan.strategies)}; MLflow run {search_run_id} at {tracker.uri}")

    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Tune snapshots its state whenever a trial checkpoints; with short trials it warns each time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    searcher = OptunaSearch(
        space=DefineByRun(plan),
        metric=[o["key"] for o in objectives],
        mode=[o["direction"] for o in objectives],
        sampler=make_sampler(space.search.sampler, space.search.seed, concurrency),
    )
    trial_plan = make_trial_plan(plan)
    ensure_ray(options.address or space.ray.address)
    callback = _TrackingCallback(tracker, search_run_id, objectives, registry, trials, echo)
    resources = {"cpu": space.ray.cpus_per_trial, "gpu": space.ray.gpus_per_trial}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(tune_trainable, dataset=dataset, plan=trial_plan), resources),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=trials, max_concurrent_trials=concurrency, reuse_actors=True,
                                    trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
        run_config=tune.RunConfig(
            name=f"{experiment}-{stamp}",
            storage_path=str(default_store_dir() / "ray_results"),
            callbacks=[callback],
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    status = "FINISHED"
    try:
        tuner.fit()
    except BaseException:
        status = "FAILED"
        raise
    finally:
        record = SearchRecord(experiment, search_run_id, objectives, callback.records)
        record.hypervolume, record.reference_point = mark_front(record.trials, objectives, reference)
        history = hypervolume_history(record.trials, objectives, record.reference_point) if record.reference_point else []
        figure = _front_figure(record)
        tracker.finish_search(record, history, figure, status)
        registry.notify("search_finished", search=record)
    echo("\nPareto front (validation):")
    columns = ["number", "strategy", *[f"val/{o['name']}" for o in objectives if o["key"].startswith("val/")], *[f"test/{t}" for t in plan.problem.task_names]]
    echo(format_table(trial_table(record, only_front=True), columns))
    hv = f"{record.hypervolume:.6g}" if record.hypervolume is not None else "n/a"
    echo(f"\n{len(record.trials)} trials ({sum(t.status == 'failed' for t in record.trials)} failed), front size {len(record.front)}, hypervolume {hv}")
    echo("review: mtl-search ui   |   mtl-search report --format json")
    return record


def _front_figure(record: SearchRecord) -> Any:
    scored = [(t, t.objective_values(record.objectives)) for t in record.trials]
    scored = [(t, v) for t, v in scored if v is not None]
    if not scored:
        return None
    from .plots import front_figure

    return front_figure([v for _, v in scored], [o["name"] for o in record.objectives], [o["direction"] for o in record.objectives],
                        [t.strategy for t, _ in scored], [f"trial-{t.number:03d}" for t, _ in scored], [t.pareto for t, _ in scored])


def _tune_callback_base() -> type:
    from ray import tune

    return tune.Callback


class _TrackingCallback(_tune_callback_base()):
    """Logs each trial to MLflow as it starts, reports epochs and ends; prints progress."""

    def __init__(self, tracker: Tracker, parent_id: str, objectives: list[dict[str, str]], registry: Registry, total: int,
                 echo: Callable[[str], None]):
        self.tracker, self.parent_id, self.objectives = tracker, parent_id, objectives
        self.registry, self.total, self.echo = registry, total, echo
        self.run_ids: dict[str, str] = {}
        self.records: list[TrialRecord] = []

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        config = dict(trial.config)
        self.run_ids[trial.trial_id] = self.tracker.start_trial(self.parent_id, int(config[NUMBER_KEY]), config[STRATEGY_KEY], config)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if not result.get("final") and "epoch" in result:
            self.tracker.log_epoch(self.run_ids[trial.trial_id], result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        run_id = self.run_ids[trial.trial_id]
        if not result.get("final"):
            self._finish(trial, run_id, "failed", result, "the trial ended without a final result")
            return
        self.tracker.finish_trial(run_id, result)
        self._finish(trial, run_id, "finished", result, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = _error_text(trial)
        self._finish(trial, self.run_ids[trial.trial_id], "failed", trial.last_result or {}, error)

    def _finish(self, trial: Any, run_id: str, status: str, result: dict, error: str | None) -> None:
        config = dict(trial.config)
        if status == "failed":
            self.tracker.fail_trial(run_id, error or "failed")
        checkpoint = getattr(trial, "checkpoint", None)
        record = TrialRecord(
            number=int(config[NUMBER_KEY]), run_id=run_id, strategy=config[STRATEGY_KEY], params=config, status=status,
            val={k[4:]: v for k, v in result.items() if k.startswith("val/")} if status == "finished" else {},
            test={k[5:]: v for k, v in result.items() if k.startswith("test/")} if status == "finished" else {},
            metrics={k: v for k, v in result.items() if k in ("params", "latency", "train_seconds") and isinstance(v, (int, float))},
            error=error, checkpoint=checkpoint.path if checkpoint is not None and status == "finished" else None,
        )
        self.records.append(record)
        mark_front(self.records, self.objectives)
        values = ", ".join(f"{k}={v:.4g}" for k, v in record.val.items() if isinstance(v, float) and math.isfinite(v))
        line = f"[{len(self.records)}/{self.total}] trial {record.number} {record.strategy}: {status}"
        line += f" ({values})" if values else f": {(error or '').strip().splitlines()[-1] if error else ''}"
        self.echo(f"{line} | front size {sum(t.pareto for t in self.records)}")
        self.registry.notify("trial_finished", trial=record)


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        return Path(path).read_text()
    error = getattr(trial, "error", None) or getattr(trial, "get_error", lambda: None)()
    return "".join(traceback.format_exception(error)) if isinstance(error, BaseException) else str(error or "unknown error")

