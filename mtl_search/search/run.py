"""A search: Optuna proposes configurations (define-by-run), Ray Tune runs them, MLflow records them.

The data set is built once on the driver and reaches the trials through Ray's object
store (``tune.with_parameters``). The MLflow logging is a Tune callback on the driver.
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import NUMBER_KEY, STRATEGY_KEY
from ..data.dataset import Dataset
from ..data.tables import load_table
from ..errors import MtlSearchError, SpaceError, did_you_mean
from ..registry import Registry, load_registry
from ..results.metrics import COST_METRICS, DELTA_M, GAIN, TEST_GAIN, WORST_GAIN, Objective, is_trial_figure
from ..results.records import (
    LiveFront,
    SearchRecord,
    TrialRecord,
    format_table,
    hypervolume_history,
    mark_front,
    trial_table,
)
from ..results.tracking import (
    PLACEMENT_TAGS,
    TUNE_PATH,
    BackgroundWriter,
    Tracker,
    default_store_dir,
    resolve_tracking_uri,
)
from .plan import (
    DefineByRun,
    grid_space,
    make_sampler,
    make_scheduler,
    make_trial_plan,
)
from .references import search_references
from .space import Plan, Space, resolve
from .trial import tune_trainable


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
    if space.search.sampler == "grid":
        grid_space(plan)  # a continuous knob is a SpaceError before anything runs
    return plan, dataset, registry


@dataclass
class RunOptions:
    """Command-line overrides of a space."""

    trials: int | None = None
    concurrency: int | None = None
    address: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    resume: bool = False


def ensure_ray(address: str | None) -> None:
    """Connect to ``address`` (auto, host:port, ray://host:10001) or start a local Ray instance sized to the machine (once per process)."""
    import ray

    if ray.is_initialized():
        return
    # Trials' own output (checkpoint notices, shutdown noise) stays in Ray's logs; a failing
    # trial's traceback reaches the user through Tune's error file and MLflow.
    try:
        if address:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        else:
            ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    except ConnectionError as exc:
        raise MtlSearchError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None


class SearchControl:
    """The live state of the search running in this process: interrupts, failures, the trial logger.

    Tune pickles its callbacks, stopper and searcher with the experiment and restores those
    copies on ``--resume``; so they keep no state of their own and consult ``_LIVE`` instead.
    """

    def __init__(self, max_failures: int | None, echo: Callable[[str], None]):
        self.max_failures, self.echo = max_failures, echo
        self.draining = False  # first Ctrl-C: no new trials
        self.cancelled = False  # second Ctrl-C: stop the running ones too
        self.failures = 0
        self.abort_reason: str | None = None
        self.logger: TrialLogger | None = None

    @property
    def stop_all(self) -> bool:
        return self.cancelled or self.abort_reason is not None

    @property
    def schedule_more(self) -> bool:
        return not (self.draining or self.stop_all)

    def interrupt(self, signum: int = 0, frame: Any = None) -> None:
        """SIGINT handler: the first stops scheduling, the second cancels running trials."""
        if not self.draining:
            self.draining = True
            self.echo("\ninterrupted: no new trials; running trials finish (Ctrl-C again to cancel them)")
        else:
            self.cancelled = True
            self.echo("\ninterrupted again: cancelling running trials")

    def count_failure(self) -> None:
        self.failures += 1
        if self.max_failures is not None and self.failures > self.max_failures and self.abort_reason is None:
            self.abort_reason = f"{self.failures} trials failed, more than search.max_failures={self.max_failures}; search aborted"
            self.echo(self.abort_reason)


_LIVE: SearchControl | None = None


def _live() -> SearchControl:
    if _LIVE is None:  # pragma: no cover - Tune calls these only during run_search
        raise RuntimeError("no search is running in this process")
    return _LIVE


def state_dir(tracking_uri: str) -> Path:
    """Where a search keeps its Optuna study and Tune state: next to a sqlite tracking store, else ./mlflow."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).parent
    return default_store_dir()


def run_search(space: Space, options: RunOptions | None = None, registry: Registry | None = None,
               echo: Callable[[str], None] = print) -> SearchRecord:
    """Run (or with ``options.resume`` continue) a whole search and record it in MLflow; returns the record with the front marked."""
    global _LIVE
    from ray import tune

    options = options or RunOptions()
    plan, dataset, registry = prepare(space, registry)
    trials = options.trials or space.search.trials
    concurrency = options.concurrency or space.search.concurrency
    experiment = options.experiment or space.experiment
    objectives = plan.objectives
    reference = [space.search.reference_point[o.name] for o in objectives] if space.search.reference_point else None

    tracker = Tracker(resolve_tracking_uri(options.tracking_uri or space.tracking_uri), experiment)
    store = state_dir(tracker.uri)
    earlier: list[TrialRecord] = []
    if options.resume:
        search_run_id, tune_path = _resumable(tracker, experiment)
        earlier = tracker.reopen_search(search_run_id)
        echo(f"resuming search {experiment!r} (MLflow run {search_run_id}): {len(earlier)} trials already recorded")
    else:
        tune_path = str(store / "ray_results" / f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}")
        search_run_id = tracker.start_search(
            Path(tune_path).name.replace(experiment, "search", 1), objectives,
            {"trials": trials, "concurrency": concurrency, "sampler": space.search.sampler, "seed": space.search.seed,
             "early_stopping": space.search.early_stopping,
             "strategies": list(plan.strategies), "dataset": space.dataset, "backbone": plan.backbone_kind.name},
            space.path.read_text() if space.path else "",
            tags={TUNE_PATH: tune_path},
        )
        echo(f"search {experiment!r}: {trials} trials, strategies {', '.join(plan.strategies)}; MLflow run {search_run_id} at {tracker.uri}")

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Tune snapshots its state whenever a trial checkpoints; with short trials it warns each time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The run prints its own progress lines; Tune's console output (a config box, TensorBoard hints) is noise here.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ctrl-C is ours (SearchControl.interrupt): Tune's handler would stop running trials at once.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # single-task references (search/references.py): trained once before the trials, or read back on resume
    references = search_references(plan, dataset, tracker, search_run_id, options.resume, echo)
    trial_plan = make_trial_plan(plan, references)
    ensure_ray(options.address or space.ray.address)
    control = SearchControl(space.search.max_failures, echo)
    control.logger = TrialLogger(tracker, search_run_id, objectives, registry, trials, echo, earlier, control)
    resources = {"cpu": space.ray.cpus_per_trial, "gpu": space.ray.gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(tune_trainable, dataset=dataset, plan=trial_plan), resources)
    if options.resume:
        tuner = tune.Tuner.restore(tune_path, trainable, resume_unfinished=True, resume_errored=False, restart_errored=False)
    else:
        searcher = _Searcher(
            space=DefineByRun(plan),
            metric=[o.key for o in objectives],
            mode=[o.direction for o in objectives],
            sampler=make_sampler(space.search.sampler, space.search.seed, concurrency, plan),
            storage=optuna.storages.RDBStorage(f"sqlite:///{store / 'optuna.db'}"),
            study_name=Path(tune_path).name,
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=make_scheduler(space.search.early_stopping, space.epochs),
                                        num_samples=trials, max_concurrent_trials=concurrency,
                                        # a new actor per trial costs a worker start and torch/mtl_search
                                        # imports (seconds on 2 busy cores); train_trial keeps no state across trials
                                        reuse_actors=True, trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(
                name=Path(tune_path).name,
                storage_path=str(Path(tune_path).parent),
                callbacks=[_CallbackRelay()],
                stop=_ControlStopper(),
                verbose=0,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
    status = "FINISHED"
    _LIVE = control
    in_main_thread = threading.current_thread() is threading.main_thread()  # only there can a signal handler be set
    previous_handler = signal.signal(signal.SIGINT, control.interrupt) if in_main_thread else None
    try:
        tuner.fit()
    except BaseException:
        status = "FAILED"
        raise
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous_handler)
        _LIVE = None
        if control.abort_reason:
            status = "FAILED"
        logger = control.logger
        logger.stop_unfinished()
        logger.close()
        record = SearchRecord(experiment, search_run_id, objectives, logger.records, aborted=control.abort_reason, references=references)
        record.hypervolume, record.reference_point = mark_front(record.trials, objectives, reference)
        history = hypervolume_history(record.trials, objectives, record.reference_point) if record.reference_point else []
        tracker.finish_search(record, history, status)
        registry.notify("search_finished", search=record)
    echo("\nPareto front (validation):")
    columns = ["number", "strategy", *[o.key for o in objectives if o.key.startswith("val/")], *[f"test/{t}" for t in plan.problem.task_names]]
    if references:
        columns += [DELTA_M, WORST_GAIN, "neg_transfer"]
    echo(format_table(trial_table(record, only_front=True), columns))
    hv = f"{record.hypervolume:.6g}" if record.hypervolume is not None else "n/a"
    counts = {s: sum(t.status == s for t in record.trials) for s in ("failed", "stopped")}
    echo(f"\n{len(record.trials)} trials ({counts['failed']} failed, {counts['stopped']} stopped early), front size {len(record.front)}, hypervolume {hv}")
    if record.aborted:
        echo(f"ABORTED: {record.aborted}")
    echo("review: mtl-search ui   |   mtl-search report --format json")
    return record


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _resumable(tracker: Tracker, experiment: str) -> tuple[str, str]:
    """The MLflow run id and Tune directory of the experiment's interrupted search."""
    from ray import tune

    latest = tracker.latest_search()
    if latest is None:
        raise MtlSearchError(f"--resume: no search of experiment {experiment!r} in {tracker.uri}")
    if latest.info.status == "FINISHED":
        raise MtlSearchError(f"--resume: the latest search of experiment {experiment!r} (run {latest.info.run_id}) finished; nothing to resume")
    tune_path = latest.data.tags.get(TUNE_PATH, "")
    if not tune_path or not tune.Tuner.can_restore(tune_path):
        raise MtlSearchError(f"--resume: the Ray Tune state of run {latest.info.run_id} ({tune_path or 'not recorded'}) is missing")
    return latest.info.run_id, tune_path


def _tune_bases() -> tuple[type, type, type]:
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    return tune.Callback, tune.Stopper, OptunaSearch


_Callback, _Stopper, _OptunaSearch = _tune_bases()


class _Searcher(_OptunaSearch):
    """OptunaSearch that tells Optuna the truth about trials that did not finish.

    A trial the scheduler stopped early reaches ``on_trial_complete`` with its last epoch's
    values; OptunaSearch would tell them as the trial's result (corrupting the front the
    sampler learns from). It is told PRUNED instead, and an errored trial FAIL.
    """

    def suggest(self, trial_id: str) -> Any:
        if not _live().schedule_more:
            return self.FINISHED
        return super().suggest(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        import optuna

        if not error and (result or {}).get("final"):
            super().on_trial_complete(trial_id, result, error)
            return
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        state = optuna.trial.TrialState.FAIL if error else optuna.trial.TrialState.PRUNED
        self._ot_study.tell(self._ot_trials[trial_id], state=state)
        self._completed_trials.add(trial_id)


class _ControlStopper(_Stopper):
    """Stops every trial after a second Ctrl-C or when ``search.max_failures`` is exceeded."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return _live().stop_all


class _CallbackRelay(_Callback):
    """Forwards Tune's trial events to the live search's TrialLogger."""

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _live().logger.start(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        _live().logger.result(trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _live().logger.complete(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _live().logger.error(trial)


class TrialLogger:
    """Logs each trial to MLflow as it starts, reports epochs and ends; prints progress.

    Creating a trial's run is immediate (later writes need its id); the other writes go
    through a BackgroundWriter, so Tune's loop is not held up; ``close`` waits for them.
    ``earlier`` holds the trials a resumed search recorded before it was interrupted: a trial
    Tune runs again that already finished (Tune's state lagged behind MLflow) is not logged twice.
    """

    def __init__(self, tracker: Tracker, parent_id: str, objectives: list[Objective], registry: Registry, total: int,
                 echo: Callable[[str], None], earlier: list[TrialRecord], control: SearchControl):
        self.tracker, self.parent_id, self.objectives = tracker, parent_id, objectives
        self.registry, self.total, self.echo, self.control = registry, total, echo, control
        self.run_ids: dict[str, str] = {}
        self.running: dict[str, Any] = {}  # trial id -> Tune trial, started and not yet ended
        self.placed: set[str] = set()
        self.records: list[TrialRecord] = list(earlier)
        self.recorded = {t.number for t in earlier}
        self.front = LiveFront(objectives, self.records)  # updated one trial at a time
        self.writes = BackgroundWriter(echo)

    def close(self) -> None:
        """Wait for every queued MLflow write."""
        self.writes.close()

    def start(self, trial: Any) -> None:
        config = dict(trial.config)
        if int(config[NUMBER_KEY]) not in self.recorded:
            strategy = config[STRATEGY_KEY]
            self.run_ids[trial.trial_id] = self.tracker.start_trial(self.parent_id, int(config[NUMBER_KEY]), strategy, config, self._family(strategy))
            self.running[trial.trial_id] = trial
            self.echo(f"trial {config[NUMBER_KEY]} {config[STRATEGY_KEY]}: started")

    def result(self, trial: Any, result: dict) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        if trial.trial_id not in self.placed:
            self.placed.add(trial.trial_id)
            self.writes.submit(self.tracker.record_placement, run_id, dict(result))
        if not result.get("final") and "epoch" in result:
            self.writes.submit(self.tracker.log_epoch, run_id, dict(result))

    def complete(self, trial: Any) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        result = dict(trial.last_result or {})
        if not result.get("final"):
            self.writes.submit(self.tracker.stop_trial, run_id)
            self._finish(trial, run_id, "stopped", result, None)
            return
        self.writes.submit(self.tracker.finish_trial, run_id, result)
        self._finish(trial, run_id, "finished", result, None)

    def error(self, trial: Any) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        error = _error_text(trial)
        self.writes.submit(self.tracker.fail_trial, run_id, error)
        self._finish(trial, run_id, "failed", trial.last_result or {}, error)
        self.control.count_failure()

    def stop_unfinished(self) -> None:
        """Record as stopped the trials Tune left running when it stopped the whole search (second Ctrl-C, max_failures)."""
        for trial_id, trial in list(self.running.items()):
            self.writes.submit(self.tracker.stop_trial, self.run_ids[trial_id])
            self._finish(trial, self.run_ids[trial_id], "stopped", {}, None)

    def _family(self, strategy: str) -> str:
        return self.registry.strategies[strategy].family

    def _finish(self, trial: Any, run_id: str, status: str, result: dict, error: str | None) -> None:
        self.running.pop(trial.trial_id, None)
        config = dict(trial.config)
        self.recorded.add(int(config[NUMBER_KEY]))
        checkpoint = getattr(trial, "checkpoint", None)
        finished = status == "finished"
        record = TrialRecord(
            number=int(config[NUMBER_KEY]), run_id=run_id, strategy=config[STRATEGY_KEY], params=config, status=status,
            val={k[4:]: v for k, v in result.items() if k.startswith("val/")} if finished else {},
            test={k[5:]: v for k, v in result.items() if k.startswith("test/")} if finished else {},
            metrics={k: v for k, v in result.items() if (k in COST_METRICS or (finished and is_trial_figure(k))) and isinstance(v, (int, float))},
            gains={k[len(GAIN):]: v for k, v in result.items() if k.startswith(GAIN)} if finished else {},
            test_gains={k[len(TEST_GAIN):]: v for k, v in result.items() if k.startswith(TEST_GAIN)} if finished else {},
            error=error, checkpoint=checkpoint.path if checkpoint is not None and finished else None,
            family=self._family(config[STRATEGY_KEY]),
            placement={k: str(result[k]) for k in PLACEMENT_TAGS if k in result},
        )
        self.records.append(record)
        self.front.add(record)
        values = ", ".join(f"{k}={v:.4g}" for k, v in record.val.items() if isinstance(v, float) and math.isfinite(v))
        line = f"[{len(self.records)}/{self.total}] trial {record.number} {record.strategy}: {status}"
        line += f" ({values})" if values else f": {(error or '').strip().splitlines()[-1] if error else ''}"
        if DELTA_M in record.metrics:
            line += f" Δm {record.metrics[DELTA_M]:+.2f}%" + (" (negative transfer)" if record.negative_transfer else "")
        self.echo(f"{line} | front size {self.front.size}")
        self.writes.submit(self.registry.notify, "trial_finished", trial=record)  # after the trial's writes, as the hook promises


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        return Path(path).read_text()
    error = getattr(trial, "error", None) or getattr(trial, "get_error", lambda: None)()
    return "".join(traceback.format_exception(error)) if isinstance(error, BaseException) else str(error or "unknown error")

