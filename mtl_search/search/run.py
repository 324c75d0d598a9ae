"""A search as a straight line: prepare, open the record, run the trials, close the record.

Optuna proposes configurations (define-by-run, ask and tell), Ray Tune runs them, MLflow
records them. The data set is built once on the driver and reaches the trials through
Ray's object store (``tune.with_parameters``); the MLflow logging is a Tune callback on the
driver. The durable record of a search is its Optuna study (``optuna.db`` next to the
tracking store) and its MLflow runs: ``--resume`` rebuilds what is done from them and starts
a fresh Tune run for the rest, so a search killed at any moment loses no trial and runs none
twice. :func:`run_search` prints nothing (progress lines go to ``progress``); the command
line prints the front.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..config import NUMBER_KEY, REPEAT_KEY, REPEAT_OF_KEY
from ..errors import MtlSearchError
from ..record import ROLE_REFERENCE, ROLE_REPEAT, ROLE_TRIAL, STUDY, TASK_METRICS, Objective, TrialRecord, val_key
from ..registry import Registry
from ..results.records import SearchRecord, format_value, hypervolume_history, mark_front, metric_label, repeat_noise
from ..results.search_run import Tracker, open_tracker
from ..results.store import check_tracking_store, sqlite_path, sqlite_uri, store_folder, store_lock
from .faults import kill_point
from .gbdt import search_gbdt
from .prepare import prepare
from .references import References, best_references, fixed_references
from .sampling import ReferenceSpace, TrialSpace, make_sampler
from .space import Plan, Space
from .trial import make_trial_plan, tune_trainable
from .tune import (
    CONFIG_ATTR,
    RERUN_ATTR,
    DrainingScheduler,
    Interrupt,
    ListSearcher,
    OptunaSearcher,
    QuietProgress,
    ReferenceSearcher,
    Rerun,
    Stopper,
    TrialLogger,
    make_scheduler,
)


@dataclass
class RunOptions:
    """Command-line overrides of a space."""

    trials: int | None = None
    concurrency: int | None = None
    address: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    resume: bool = False
    epoch_progress: bool = False  # a progress line per trained epoch (the command line sets it on a terminal)


def ensure_ray(address: str | None) -> None:
    """Connect to ``address`` (auto, host:port, ray://host:10001) or start a local Ray instance sized to the machine (once per process)."""
    import ray

    if ray.is_initialized():
        return
    # Trials' own output (checkpoint notices, shutdown noise) stays in Ray's logs; a failing
    # trial's traceback reaches the user through Tune's error file and MLflow.
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        if address:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        else:  # "local": a new instance, never a cluster someone else started on this machine (ray.init's default joins one)
            ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    except ConnectionError as exc:
        raise MtlSearchError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None
    if threading.current_thread() is threading.main_thread() and on_sigterm is not None:
        signal.signal(signal.SIGTERM, on_sigterm)  # ray.init sets its own (exit at once); the search's stops it in order


RAY_CONNECT_SECONDS = 10  # how long a Ray address has to accept a connection (ray.init itself would wait for ever)


def check_ray_address(address: str | None) -> None:
    """MtlSearchError naming ``address`` when nothing accepts a connection there (``auto``, or none: Ray's to find or start)."""
    import socket

    host, _, port = (address or "").removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_CONNECT_SECONDS).close()
    except (OSError, OverflowError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise MtlSearchError(f"cannot connect to the Ray cluster at {address!r}: {reason}") from None


class Background:
    """``call()`` on a thread of its own; ``result()`` joins it and returns its value or raises what it raised.

    The search sets up its stores and single-task references on one while the main thread
    starts Ray (which must start on the main thread: its daemons die with the thread that
    started them).
    """

    def __init__(self, call: Callable[[], Any]):
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(call,), name="search-setup", daemon=True)
        self.thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.value = call()
        except BaseException as exc:  # handed to result(), in the search's thread
            self.error = exc

    def result(self) -> Any:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value


@dataclass
class Resumption:
    """What the durable record says of a search: trials done, and trials to run again with their number and configuration."""

    done: list[TrialRecord] = field(default_factory=list)
    reruns: list[Rerun] = field(default_factory=list)  # trials Optuna has ended, proposed again as they were
    enqueued: int = 0  # trials re-run through the study's queue, with their parameters and number


def reconcile(study: Any, done: list[TrialRecord]) -> Resumption:
    """Bring the Optuna study in line with the trials MLflow recorded, and list the trials to run again.

    ``done`` are the trials with a terminal MLflow run (finished, failed, stopped), by trial
    number (a study trial's number, or for a re-run the number it keeps). An Optuna trial still
    RUNNING whose end reached MLflow is told that end. One whose end did not is failed in
    Optuna and enqueued again with its parameters, keeping its number: it runs from the start
    with the same configuration. One Optuna has ended but MLflow has not recorded is run again
    as it was, and not told twice. A trial that never received its configuration never
    started: it is failed, and a fresh sample takes its place.
    """
    import optuna

    by_number = {t.number: t for t in done}
    state = optuna.trial.TrialState
    reruns, enqueued = [], 0
    for trial in study.get_trials(deepcopy=False):
        config = trial.user_attrs.get(CONFIG_ATTR)
        number = config[NUMBER_KEY] if config else trial.number
        record = by_number.get(number)
        if record is not None:
            if trial.state == state.RUNNING:
                values = record.objective_values(_objectives(study)) if record.status == "finished" else None
                if values is not None:
                    study.tell(trial.number, values)
                else:
                    study.tell(trial.number, state=state.PRUNED if record.status == "stopped" else state.FAIL)
            continue
        if trial.state == state.RUNNING:
            study.tell(trial.number, state=state.FAIL)
            if config is not None:
                study.enqueue_trial(trial.params, user_attrs={RERUN_ATTR: number})
                enqueued += 1
        elif config is not None and trial.state == state.COMPLETE:
            reruns.append(Rerun(number, config))
    return Resumption(done, reruns, enqueued)


def _objectives(study: Any) -> list[Objective]:
    return [Objective.from_json(o) for o in study.user_attrs["objectives"]]


@contextlib.contextmanager
def process_settings(interrupt: Interrupt) -> Iterator[None]:
    """The process-wide settings a search needs, set for its duration and restored after.

    Optuna and Tune's console output (a config box, per-trial notices, experimental-feature
    warnings) is off: the search reports its own progress. Ctrl-C and SIGTERM are the search's
    (:class:`Interrupt`): Tune's own handler would stop running trials at once.
    """
    import optuna

    settings = {
        "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",  # short trials: Tune warns at each state save
        "RAY_AIR_NEW_OUTPUT": "0",
        "TUNE_DISABLE_SIGINT_HANDLER": "1",
    }
    saved_env = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    in_main_thread = threading.current_thread() is threading.main_thread()  # only there can a signal handler be set
    previous = {sig: signal.signal(sig, handler) for sig, handler in ((signal.SIGINT, interrupt), (signal.SIGTERM, interrupt.terminate))} \
        if in_main_thread else {}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        optuna.logging.set_verbosity(verbosity)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_search(space: Space, options: RunOptions | None = None, registry: Registry | None = None,
               progress: Callable[[str], None] | None = None) -> SearchRecord:
    """Run (or with ``options.resume`` continue) a whole search and record it in MLflow; returns the record with the front marked.

    With searched references (``baseline: {mode: search}``, the default) the single-task
    reference trials run first, then the multi-task trials, whose gains are measured against
    the final references. ``progress`` receives a line as each trial starts and ends
    (nothing is printed otherwise). Raises MtlSearchError (SpaceError for the space) on bad
    input, before Ray starts.
    """
    echo = progress or (lambda line: None)
    options = options or RunOptions()
    plan, dataset, registry = prepare(space, registry)
    trials = options.trials or space.search.trials
    concurrency = options.concurrency or space.search.concurrency
    experiment = options.experiment or space.experiment
    objectives = plan.objectives
    reference = [space.search.reference_point[o.name] for o in objectives] if space.search.reference_point else None
    task_metrics = {t.name: t.metric for t in plan.problem.tasks}  # every printed value names its metric
    source = "--tracking-uri" if options.tracking_uri else "tracking.uri"
    uri = check_tracking_store(options.tracking_uri or space.tracking_uri, source)  # before anything is created or started
    check_ray_address(options.address or space.ray.address)
    store = store_folder(uri)
    storage = sqlite_uri(store / "optuna.db")
    searched_references = space.baseline.enabled and space.baseline.mode == "search"

    interrupt = Interrupt(echo=echo)
    with process_settings(interrupt):
        def set_up() -> tuple[Tracker, str, Any, Resumption, list[TrialRecord], dict[str, Any], Any]:
            with store_lock(store):  # searches started together in one folder create the stores in turn
                tracker = open_tracker(uri, experiment, source)
                if options.resume:
                    search_run_id, study = _resumable(tracker, experiment, storage, space, concurrency, plan)
                    earlier = tracker.reopen_search(search_run_id)
                    resumption = reconcile(study, [t for t in earlier if t.role == ROLE_TRIAL])
                    echo(f"resuming search {experiment!r} (MLflow run {search_run_id}): {len(resumption.done)} of {trials} trials "
                         f"recorded, {len(resumption.reruns) + resumption.enqueued} to run again")
                else:
                    study_name = f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"  # unique: searches may start together
                    study = _create_study(storage, study_name, space.search.sampler, space.search.seed, concurrency, objectives, plan)
                    search_run_id = tracker.start_search(
                        study_name.replace(experiment, "search", 1), objectives,
                        {"trials": trials, "concurrency": concurrency, "sampler": space.search.sampler, "seed": space.search.seed,
                         "early_stopping": space.search.early_stopping,
                         "strategies": list(plan.strategies), "dataset": space.dataset, "backbone": plan.backbone_kind.name,
                         "baseline": space.baseline.mode if space.baseline.enabled else "none"},
                        space.path.read_text() if space.path else "",
                        tags={STUDY: study.study_name, TASK_METRICS: json.dumps(task_metrics)},
                    )
                    earlier, resumption = [], Resumption()
                    echo(f"search {experiment!r}: {trials} trials, strategies {', '.join(plan.strategies)}; MLflow run {search_run_id} "
                         f"at {tracker.uri}")
                reference_studies = _reference_studies(storage, study.study_name, plan, concurrency) if searched_references else {}
            # fixed single-task references (search/references.py): trained once before the trials, or read back on resume
            fixed = (fixed_references(plan, dataset, tracker, search_run_id, options.resume, echo)
                     if space.baseline.enabled and not searched_references else None)
            return tracker, search_run_id, study, resumption, earlier, reference_studies, fixed

        setup = Background(set_up)  # the stores (and fixed references), while Ray starts here
        try:
            ensure_ray(options.address or space.ray.address)
        finally:
            tracker, search_run_id, study, resumption, earlier, reference_studies, references = setup.result()
        # the GBDT comparison row (search/gbdt.py, baseline.gbdt): fitted once per search, or read back on resume
        gbdt = search_gbdt(plan, dataset, tracker, search_run_id, options.resume, echo)
        to_run = max(0, trials - len(resumption.done))
        logger = TrialLogger(tracker, search_run_id, objectives, registry, trials, resumption.done, space.search.max_failures, echo,
                             task_metrics, space.epochs if options.epoch_progress else None, space.search.constraints)
        status = "FINISHED"
        reference_trials = [t for t in earlier if t.role == ROLE_REFERENCE]
        repeats, chosen = [t for t in earlier if t.role == ROLE_REPEAT], {}
        going_on = lambda: not interrupt.draining and logger.abort_reason is None  # noqa: E731
        kill_point("search_started")
        try:
            if searched_references:
                phase = _ReferencePhase(plan, dataset, tracker, search_run_id, reference_trials, interrupt, echo, store, concurrency,
                                        task_metrics, options.epoch_progress, trials)
                reference_trials, references = phase.run(reference_studies, registry)
                chosen = phase.chosen
                if phase.abort_reason:
                    logger.abort_reason = phase.abort_reason
            if to_run and going_on():
                searcher = OptunaSearcher(study, TrialSpace(plan), [o.key for o in objectives], resumption.reruns[:to_run],
                                          stop=lambda: not going_on(), constraints=space.search.constraints)
                _fit(_trainable(dataset, make_trial_plan(plan, references), space), searcher, to_run, concurrency, logger,
                     f"{study.study_name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}", store, interrupt,
                     make_scheduler(space.search.early_stopping, space.epochs, objectives))
            if space.search.repeats and chosen and going_on():
                mark_front(logger.records, objectives, reference, space.search.constraints)
                repeats = _run_repeats(plan, dataset, tracker, search_run_id, references, [t for t in logger.records if t.pareto],
                                       chosen, repeats, {None: study, **reference_studies}, interrupt, echo, store, concurrency,
                                       task_metrics, registry)
        except BaseException:
            status = "FAILED"
            raise
        finally:
            if logger.abort_reason:
                status = "FAILED"
            elif interrupt.draining:
                status = "KILLED"  # interrupted: --resume continues it
            logger.stop_unfinished()
            logger.close()
            record = SearchRecord(experiment, search_run_id, objectives, logger.records, aborted=logger.abort_reason,
                                  interrupted=interrupt.draining, task_metrics=task_metrics, references=references,
                                  reference_trials=reference_trials, repeats=repeats, gbdt=gbdt,
                                  reference_runs={task: r.run_id for task, r in chosen.items()}, strategies=list(plan.strategies))
            record.hypervolume, record.reference_point = mark_front(record.trials, objectives, reference, space.search.constraints)
            if repeats and chosen:
                directions = {t.name: t.direction for t in plan.problem.tasks}
                for trial in record.front:
                    trial.noise = repeat_noise(trial, repeats, chosen, directions)
                    tracker.log_noise(trial.run_id, trial.noise)
            history = hypervolume_history(record.trials, objectives, record.reference_point) if record.reference_point else []
            tracker.finish_search(record, history, status)
            if status != "KILLED":  # interrupted: the resumed search logs them when it finishes
                from ..results.pyfunc import log_front_models

                log_front_models(tracker.client.tracking_uri, record, registry)
            registry.notify("search_finished", search=record)
    return record


def _trainable(dataset: Any, trial_plan: Any, space: Space) -> Any:
    """The Tune trainable of a phase: ``tune_trainable`` with the data set and the plan, and a trial's resources."""
    from ray import tune

    resources = {"cpu": space.ray.cpus_per_trial, "gpu": space.ray.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(tune_trainable, dataset=dataset, plan=trial_plan), resources)


def _fit(trainable: Any, searcher: Any, num_samples: int, concurrency: int, logger: TrialLogger, run_name: str, store: Path,
         interrupt: Interrupt, scheduler: Any) -> None:
    """One Tune run (a fresh one on every start or resume): ``num_samples`` trials that ``searcher`` proposes, recorded by ``logger``."""
    from ray import tune

    # Tune asks the searcher ahead: once draining, the trials already suggested must not start
    draining = DrainingScheduler(scheduler, lambda: interrupt.draining or logger.abort_reason is not None)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=draining,
                                    num_samples=num_samples, max_concurrent_trials=concurrency,
                                    # a new actor per trial costs a worker start and torch/mtl_search
                                    # imports (seconds on 2 busy cores); train_trial keeps no state across trials
                                    reuse_actors=True, trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=run_name, storage_path=str(store / "ray_results"), callbacks=[logger, QuietProgress()],
            stop=Stopper(lambda: interrupt.cancelled or logger.abort_reason is not None),
            verbose=0, checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    tuner.fit()


class _ReferencePhase:
    """The searched single-task references: the reference trials of each task on Ray Tune, then the best per task.

    ``earlier`` are the reference trials a resumed search recorded; each task's study is
    reconciled with them like the trials' study (no reference trial lost or run twice).
    """

    def __init__(self, plan: Plan, dataset: Any, tracker: Tracker, search_run_id: str, earlier: list[TrialRecord], interrupt: Interrupt,
                 echo: Callable[[str], None], store: Path, concurrency: int, task_metrics: dict[str, str], epoch_progress: bool,
                 trials: int):
        self.trials = trials  # the search's trials: the references' default budget is one strategy's share
        self.plan, self.dataset, self.tracker, self.search_run_id, self.earlier = plan, dataset, tracker, search_run_id, earlier
        self.interrupt, self.echo, self.store, self.concurrency = interrupt, echo, store, concurrency
        self.task_metrics, self.epoch_progress = task_metrics, epoch_progress
        self.abort_reason: str | None = None
        self.chosen: dict[str, TrialRecord] = {}  # each task's reference trial, once the references are done

    def run(self, studies: dict[str, Any], registry: Registry) -> tuple[list[TrialRecord], References | None]:
        """The reference trials (earlier and new) and the references; None when interrupted or aborted before they were done."""
        space = self.plan.space
        searchers, budgets, total = {}, {}, 0
        for task, study in studies.items():
            task_space = ReferenceSpace(self.plan, task)
            budget = task_space.budget(self.trials)
            resumption = reconcile(study, [t for t in self.earlier if t.reference_task == task])
            budgets[task] = max(0, budget - len(resumption.done))
            searchers[task] = OptunaSearcher(study, task_space, [val_key(task)], resumption.reruns[:budgets[task]])
            total += budget
        directions = {t.name: t.direction for t in self.plan.problem.tasks}
        logger = TrialLogger(self.tracker, self.search_run_id, [], registry, total, self.earlier, space.search.max_failures, self.echo,
                             self.task_metrics, space.epochs if self.epoch_progress else None, references=directions)
        left = sum(budgets.values())
        try:
            if left:
                self.echo(f"single-task references: {left} of {total} reference trials to run ({', '.join(f'{t} {n}' for t, n in budgets.items())})")
                searcher = ReferenceSearcher(searchers, budgets, stop=lambda: self.interrupt.draining or logger.abort_reason is not None)
                name = f"{next(iter(studies.values())).study_name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
                # no search.early_stopping here: one scheduler would rank different tasks' trials against each
                # other (and could stop every trial of a task); each trains to its own patience, as a trial does
                _fit(_trainable(self.dataset, make_trial_plan(self.plan), space), searcher, left, self.concurrency, logger, name,
                     self.store, self.interrupt, None)
        finally:
            logger.stop_unfinished()
            logger.close()
        self.abort_reason = logger.abort_reason
        if self.interrupt.draining or logger.abort_reason is not None:
            return logger.records, None
        references, chosen = best_references(logger.records, self.plan.problem)
        self.chosen = chosen
        self.tracker.log_references(self.search_run_id, references, {task: r.run_id for task, r in chosen.items()})
        self.echo("references (best of each task's reference trials, validation): " + ", ".join(
            f"{metric_label(task, self.task_metrics)} {format_value(references['val'][task])} ({r.run_name})" for task, r in chosen.items()))
        return logger.records, references


def _run_repeats(plan: Plan, dataset: Any, tracker: Tracker, search_run_id: str, references: References, front: list[TrialRecord],
                 chosen: dict[str, TrialRecord], earlier: list[TrialRecord], studies: dict[str | None, Any], interrupt: Interrupt,
                 echo: Callable[[str], None], store: Path, concurrency: int, task_metrics: dict[str, str], registry: Registry) -> list[TrialRecord]:
    """``search.repeats``: each front trial and each task's chosen reference trained again with seeds 1 .. K − 1 (the repeats).

    The configurations come from the studies (``studies[None]``: the trials', else by task);
    repeats a resumed search recorded are kept, the rest run as one Tune run of their own.
    """
    space = plan.space
    configs = {task: {t.user_attrs[CONFIG_ATTR][NUMBER_KEY]: t.user_attrs[CONFIG_ATTR] for t in study.get_trials(deepcopy=False)
                      if CONFIG_ATTR in t.user_attrs} for task, study in studies.items()}
    done = {(r.repeat_of, r.repeat) for r in earlier}
    originals = [(None, t) for t in front] + list(chosen.items())
    wanted = [{**configs[task][original.number], REPEAT_KEY: k, REPEAT_OF_KEY: original.run_id}
              for task, original in originals for k in range(1, space.search.repeats) if (original.run_id, k) not in done]
    logger = TrialLogger(tracker, search_run_id, [], registry, len(originals) * (space.search.repeats - 1), earlier,
                         space.search.max_failures, echo, task_metrics, repeats=True)
    try:
        if wanted:
            echo(f"repeats: {len(wanted)} trainings with other seeds ({len(front)} front trials, {len(chosen)} references, "
                 f"{space.search.repeats} seeds each)")
            _fit(_trainable(dataset, make_trial_plan(plan, references), space), ListSearcher(wanted, stop=lambda: interrupt.draining),
                 len(wanted), concurrency, logger, f"{studies[None].study_name}-repeats-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
                 store, interrupt, None)  # trained in full, as the front trials were
    finally:
        logger.stop_unfinished()
        logger.close()
    return logger.records


def _reference_studies(storage: str, study_name: str, plan: Plan, concurrency: int) -> dict[str, Any]:
    """One Optuna study per task for its reference trials (``<study>-reference-<task>``): loaded when it exists, else created."""
    import optuna

    existing = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    studies = {}
    for task in plan.problem.tasks:
        name = f"{study_name}-reference-{task.name}"
        task_space = ReferenceSpace(plan, task.name)
        sampler = task_space.sampler(concurrency, existing.get(name, 0))
        if name in existing:
            studies[task.name] = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        else:
            studies[task.name] = _create_study(storage, name, sampler, task_space.seed, concurrency,
                                               [Objective(task.name, val_key(task.name), task.direction)])
    return studies


def _create_study(storage: str, name: str, sampler: Any, seed: int, concurrency: int, objectives: list[Objective],
                  plan: Plan | None = None) -> Any:
    """A new Optuna study in ``storage``; ``sampler`` is a ``search.sampler`` name (built with ``seed``) or a sampler."""
    import optuna

    study = optuna.create_study(
        storage=optuna.storages.RDBStorage(storage), study_name=name,
        sampler=make_sampler(sampler, seed, concurrency, plan) if isinstance(sampler, str) else sampler,
        directions=["minimize" if o.direction == "min" else "maximize" for o in objectives],
    )
    study.set_user_attr("objectives", [o.to_json() for o in objectives])
    return study


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _resumable(tracker: Tracker, experiment: str, storage: str, space: Space, concurrency: int, plan: Plan) -> tuple[str, Any]:
    """The MLflow run id and the Optuna study of the experiment's unfinished search (exit 2 when it cannot be continued)."""
    import optuna

    latest = tracker.latest_search()
    if latest is None:
        raise MtlSearchError(f"--resume: no search of experiment {experiment!r} in {tracker.uri}")
    if latest.info.status == "FINISHED":
        raise MtlSearchError(f"--resume: the latest search of experiment {experiment!r} (run {latest.info.run_id}) finished; nothing to resume")
    name = latest.data.tags.get(STUDY)
    names = {s.study_name: s for s in optuna.get_all_study_summaries(storage)} if (store_exists := sqlite_path(storage).is_file()) else {}
    if not name or name not in names:
        kept = len(tracker.children(latest.info.run_id))
        where = storage if store_exists else f"{storage} (missing)"
        raise MtlSearchError(f"--resume: search run {latest.info.run_id} cannot be continued: its Optuna study "
                             f"({name or 'not recorded'}) is not in {where}; its {kept} trial runs stay in MLflow as they are")
    # a fresh seed: the first run's seed would replay its own samples
    sampler = make_sampler(space.search.sampler, space.search.seed + names[name].n_trials, concurrency, plan)
    return latest.info.run_id, optuna.load_study(study_name=name, storage=storage, sampler=sampler)
