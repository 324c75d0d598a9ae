"""The glue between a search and Ray Tune: the Optuna searchers, the schedulers (early stopping), the stopper, and the trial logger (a Tune callback).

The search's durable record is the Optuna study (RDB storage next to the tracking store)
and the MLflow runs; Tune's own experiment state is never restored. So the objects here are
live objects of one ``run_search`` call: when Tune pickles them with its experiment state
they pickle as inert shells (``__getstate__``), and ``--resume`` starts a fresh Tune run
over the same study (see :mod:`mtl_search.search.run`).
"""
from __future__ import annotations

import math
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.progress_reporter import TrialProgressCallback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from ..config import NUMBER_KEY, REFERENCE_TASK_KEY, REPEAT_KEY, REPEAT_OF_KEY, STRATEGY_KEY
from ..record import EPOCH, LATENCY, SCORE, Objective, TrialRecord, is_epoch, is_final
from ..registry import Registry
from ..results.constraints import tell_constraints, violations
from ..results.records import LiveFront, epoch_line, reference_line, trial_label, trial_line
from ..results.search_run import Tracker
from ..results.trial_runs import BackgroundWriter
from .faults import kill_point
from .references import SingleTask, best_reference_trial

CONFIG_ATTR = "mtl_search.config"  # the Optuna trial's user attribute holding its full flat configuration
RERUN_ATTR = "mtl_search.rerun_of"  # on a trial enqueued by a resume: the trial number it runs again


@dataclass
class Interrupt:
    """Ctrl-C state of the search running in this process: the first stops scheduling, the second (or SIGTERM) cancels running trials."""

    draining: bool = False
    cancelled: bool = False
    echo: Callable[[str], None] = field(default=lambda line: None, repr=False)

    def __call__(self, signum: int = 0, frame: Any = None) -> None:
        """The SIGINT handler."""
        if not self.draining:
            self.draining = True
            self.echo("\ninterrupted: no new trials; running trials finish (Ctrl-C again to cancel them)")
        else:
            self.cancelled = True
            self.echo("\ninterrupted again: cancelling running trials")

    def terminate(self, signum: int = 0, frame: Any = None) -> None:
        """The SIGTERM handler: as two Ctrl-Cs, running trials are cancelled (recorded as stopped)."""
        if not self.cancelled:
            self.draining = self.cancelled = True
            self.echo("\nterminated: no new trials, cancelling running trials")


class _Live:
    """Pickles as an empty shell: Tune saves its callbacks and searcher with its state, which is never restored."""

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        pass


@dataclass(frozen=True)
class Rerun:
    """A trial Optuna has already been told the end of, to run again (its end never reached MLflow) with its configuration and number."""

    number: int
    config: dict[str, Any]


class OptunaSearcher(_Live, Searcher):
    """Proposes configurations with Optuna's ask-and-tell interface and tells it how each trial ended.

    A resumed search's re-runs come two ways: trials Optuna never learned the end of are
    enqueued in the study with their parameters (``RERUN_ATTR`` names the trial number they
    keep), and asked like any other; trials Optuna has ended but MLflow never recorded
    (``reruns``) are proposed first, with their configuration, and not told again. Every
    trial's full configuration is stored on its study trial (``CONFIG_ATTR``) before it
    starts. A finished trial is told its objective
    values; a trial the scheduler stopped early, PRUNED (its last epoch is not a result); an
    errored one, FAIL. ``stop`` is asked before every proposal (Ctrl-C, ``search.max_failures``).
    """

    def __init__(self, study: Any, space: Callable[[Any], dict[str, Any]], metrics: list[str],
                 reruns: list[Rerun] = (), stop: Callable[[], bool] = lambda: False, constraints: list[Any] = ()):
        Searcher.__init__(self)
        self.study, self.space, self.metrics, self.stop = study, space, list(metrics), stop
        self.reruns = list(reruns)
        self.trials: dict[str, Any] = {}  # Tune trial id -> its Optuna trial (None: a re-run Optuna already has the end of)
        self.constraints = list(constraints)  # search.constraints (mtl_search.results.constraints), told with each result

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.stop():
            return Searcher.FINISHED
        if self.reruns:
            self.trials[trial_id] = None
            return dict(self.reruns.pop(0).config)
        trial = self.study.ask()
        config = self.space(trial)  # an enqueued re-run's parameters are fixed: the same configuration again
        if RERUN_ATTR in trial.user_attrs:
            config[NUMBER_KEY] = trial.user_attrs[RERUN_ATTR]
        trial.set_user_attr(CONFIG_ATTR, config)  # what a resumed search re-runs if this trial never reaches MLflow
        self.trials[trial_id] = trial
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        import optuna

        trial = self.trials.pop(trial_id, None)
        if trial is None:
            return
        if result is None and not error:  # stopped while pending (DrainingScheduler): it never ran
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        result = result or {}
        if not error and is_final(result):
            values = [result.get(metric, math.nan) for metric in self.metrics]
            if all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                if self.constraints:  # where Optuna's constrained samplers read them
                    tell_constraints(trial, self.constraints, result)
                self.study.tell(trial, values)
                kill_point("trial_told")
                return
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL if error or is_final(result) else optuna.trial.TrialState.PRUNED)
        kill_point("trial_told")

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the study in its RDB storage is the searcher's state."""

    def restore(self, checkpoint_path: str) -> None:  # pragma: no cover - Tune's state is never restored
        pass


class ReferenceSearcher(_Live, Searcher):
    """Proposes the single-task reference trials: one :class:`OptunaSearcher` (a study of its own) per task, each with a budget.

    Each proposal goes to the task proposed least so far (then the one with most trials
    left), so the tasks' references advance together; a trial's end is told to its task's study.
    """

    def __init__(self, searchers: dict[str, OptunaSearcher], budgets: dict[str, int], stop: Callable[[], bool] = lambda: False):
        Searcher.__init__(self)
        self.searchers, self.budgets, self.stop = searchers, dict(budgets), stop
        self.owner: dict[str, str] = {}  # Tune trial id -> its task
        self.proposed = {task: 0 for task in budgets}

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        while not self.stop():
            open_tasks = [task for task, left in self.budgets.items() if left > 0]
            if not open_tasks:
                break
            task = min(open_tasks, key=lambda t: (self.proposed[t], -self.budgets[t]))
            self.proposed[task] += 1
            config = self.searchers[task].suggest(trial_id)
            if not isinstance(config, dict):
                self.budgets[task] = 0
                continue
            self.budgets[task] -= 1
            self.owner[trial_id] = task
            return config
        return Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        task = self.owner.pop(trial_id, None)
        if task is not None:
            self.searchers[task].on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the studies in their RDB storage are the searcher's state."""

    def restore(self, checkpoint_path: str) -> None:  # pragma: no cover - Tune's state is never restored
        pass


class ListSearcher(_Live, Searcher):
    """Proposes the given configurations in order, then finishes (the repeats of ``search.repeats``: nothing to learn)."""

    def __init__(self, configs: list[dict[str, Any]], stop: Callable[[], bool] = lambda: False):
        Searcher.__init__(self)
        self.configs, self.stop = list(configs), stop

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.stop() or not self.configs:
            return Searcher.FINISHED
        return dict(self.configs.pop(0))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: a resumed search lists the repeats MLflow has not recorded again."""

    def restore(self, checkpoint_path: str) -> None:  # pragma: no cover - Tune's state is never restored
        pass


class DrainingScheduler(_Live, TrialScheduler):
    """Tune's scheduler ``inner`` (early stopping, or first in first out), which starts no trial once ``draining()``.

    Tune asks the searcher ahead: at ``max_concurrent_trials`` 16 on 2 cores, 14 suggested
    trials wait PENDING for a slot, and would start one by one after a Ctrl-C. Once draining,
    each PENDING trial is stopped before Tune can start it (the searcher tells Optuna it
    failed: it never ran; ``--resume`` samples afresh in its place).
    """

    def __init__(self, inner: TrialScheduler | None, draining: Callable[[], bool]):
        self.inner, self.draining = inner or FIFOScheduler(), draining

    @property
    def metric(self) -> str | None:
        return self.inner.metric

    @property
    def supports_buffered_results(self) -> bool:
        return self.inner.supports_buffered_results

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return self.inner.set_search_properties(metric, mode, **spec)

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self.inner.on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self.inner.on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        return self.inner.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self.inner.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self.inner.on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        """The inner scheduler's choice; once draining, none, and every PENDING trial stopped (Tune calls this before it starts any)."""
        if not self.draining():
            return self.inner.choose_trial_to_run(tune_controller)
        for trial in list(tune_controller.get_trials()):
            if trial.status == Trial.PENDING:
                tune_controller.stop_trial(trial)
        return None

    def debug_string(self) -> str:
        return self.inner.debug_string()


class QuietProgress(TrialProgressCallback):
    """Tune's per-trial console lines, off (Tune adds its own unless one is given): the search prints its progress.

    Even at ``verbose=0`` Tune's prints "Trial ... completed. Last result:" for a trial that
    ended without a result (a pending trial stopped by :class:`DrainingScheduler`).
    """

    def on_trial_result(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_trial_error(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_trial_complete(self, *args: Any, **kwargs: Any) -> None:
        pass


class Stopper(_Live, tune.Stopper):
    """Stops every trial once ``stop_all()`` says so (a second Ctrl-C, ``search.max_failures`` exceeded)."""

    def __init__(self, stop_all: Callable[[], bool]):
        self.should_stop = stop_all

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.should_stop()


class TrialLogger(_Live, tune.Callback):
    """The Tune callback that records each trial in MLflow as it starts, reports epochs and ends.

    Creating a trial's run is immediate (later writes need its id); the other writes go
    through a BackgroundWriter, so Tune's loop is not held up; ``close`` waits for them.
    ``earlier`` holds the trials a resumed search recorded before. Failed trials are counted:
    past ``max_failures`` the search is aborted (``abort_reason``). Progress lines go to ``echo``.

    With ``references`` (the task directions) it records single-task reference trials
    instead: runs of role ``reference``, kept off the front and out of the observers' hooks,
    each line showing its task's best reference so far. With ``repeats`` it records the
    repeats of trials with other seeds (``search.repeats``): runs of role ``repeat``, off the
    front and out of the hooks too.
    """

    def __init__(self, tracker: Tracker, parent_id: str, objectives: list[Objective], registry: Registry, total: int,
                 earlier: list[TrialRecord] = (), max_failures: int | None = None, echo: Callable[[str], None] = lambda line: None,
                 task_metrics: dict[str, str] | None = None, epochs: int | None = None, constraints: list[Any] = (),
                 references: dict[str, str] | None = None, repeats: bool = False):
        self.tracker, self.parent_id, self.objectives = tracker, parent_id, objectives
        self.references = references  # task -> direction, for a reference phase
        self.repeats = repeats
        self.epochs = epochs  # set: a line per trained epoch too (``epoch k of n``, current val per task)
        self.registry, self.total, self.echo, self.max_failures = registry, total, echo, max_failures
        self.task_metrics = task_metrics or {}  # task -> metric, so the progress lines name it
        self.run_ids: dict[str, str] = {}
        self.running: dict[str, Any] = {}  # trial id -> Tune trial, started and not yet ended
        self.placed: set[str] = set()
        self.records: list[TrialRecord] = list(earlier)
        self.front = LiveFront(objectives, self.records)  # updated one trial at a time
        self.failures = 0
        self.abort_reason: str | None = None
        self.constraints = list(constraints)  # search.constraints: an infeasible trial is left off the running front too
        self.writes = BackgroundWriter(echo)

    def close(self) -> None:
        """Wait for every queued MLflow write."""
        self.writes.close()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        config = dict(trial.config)
        strategy = config[STRATEGY_KEY]
        self.run_ids[trial.trial_id] = self.tracker.start_trial(self.parent_id, int(config[NUMBER_KEY]), strategy, config,
                                                                self._family(strategy), config.get(REFERENCE_TASK_KEY),
                                                                config.get(REPEAT_OF_KEY), int(config.get(REPEAT_KEY, 0)))
        self.running[trial.trial_id] = trial
        self.echo(f"{trial_label(config)}: started")
        kill_point("trial_started")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        if trial.trial_id not in self.placed:
            self.placed.add(trial.trial_id)
            self.writes.submit(self.tracker.record_placement, run_id, dict(result))
        if is_epoch(result):
            self.writes.submit(self.tracker.log_epoch, run_id, dict(result))
            if self.epochs:
                self.echo(epoch_line(dict(trial.config), result, self.epochs, self.task_metrics))
            kill_point("trial_training")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        result = dict(trial.last_result or {})
        kill_point("trial_ended")
        if not is_final(result):
            self.writes.submit(self.tracker.stop_trial, run_id)
            self._finish(trial, run_id, "stopped", result, None)
            return
        checkpoint = getattr(trial, "checkpoint", None)
        self.writes.submit(self.tracker.finish_trial, run_id, result, checkpoint.path if checkpoint is not None else None)
        self.writes.submit(kill_point, "trial_recorded")
        self._finish(trial, run_id, "finished", result, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        error = _error_text(trial)
        self.writes.submit(self.tracker.fail_trial, run_id, error)
        self._finish(trial, run_id, "failed", trial.last_result or {}, error)
        self.failures += 1
        if self.max_failures is not None and self.failures > self.max_failures and self.abort_reason is None:
            self.abort_reason = f"{self.failures} trials failed, more than search.max_failures={self.max_failures}; search aborted"
            self.echo(self.abort_reason)

    def stop_unfinished(self) -> None:
        """Record as stopped the trials Tune left running when it stopped the whole search (second Ctrl-C, max_failures)."""
        for trial_id, trial in list(self.running.items()):
            self.writes.submit(self.tracker.stop_trial, self.run_ids[trial_id])
            self._finish(trial, self.run_ids[trial_id], "stopped", {}, None)

    def _family(self, strategy: str) -> str:
        return SingleTask.family if strategy == SingleTask.name else self.registry.strategies[strategy].family

    def _finish(self, trial: Any, run_id: str, status: str, result: dict, error: str | None) -> None:
        self.running.pop(trial.trial_id, None)
        config = dict(trial.config)
        checkpoint = getattr(trial, "checkpoint", None)
        finished = status == "finished"
        record = TrialRecord.from_result(config, run_id, status, result, self._family(config[STRATEGY_KEY]), error,
                                         checkpoint.path if checkpoint is not None and finished else None)
        self.records.append(record)
        traceback_at = f"error.txt of MLflow run {run_id}" if status == "failed" else None
        if self.repeats:
            self.echo(trial_line(record, len(self.records), self.total, None, self.task_metrics, traceback_at))
            return
        if self.references is not None:
            self.echo(reference_line(record, len(self.records), self.total, self._best_reference(record.reference_task),
                                     self.task_metrics, traceback_at))
            return
        if self.constraints:  # an infeasible trial stays off the running front
            record.violations = violations(record, self.constraints) if status == "finished" else None
        self.front.add(record)
        self.echo(trial_line(record, len(self.records), self.total, self.front.size, self.task_metrics, traceback_at))
        self.writes.submit(self.registry.notify, "trial_finished", trial=record)  # after the trial's writes, as the hook promises


    def _best_reference(self, task: str) -> float | None:
        best = best_reference_trial(self.records, task, self.references[task])
        return best.val[task] if best is not None else None


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        return Path(path).read_text()
    error = getattr(trial, "error", None) or getattr(trial, "get_error", lambda: None)()
    return "".join(traceback.format_exception(error)) if isinstance(error, BaseException) else str(error or "unknown error")


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
