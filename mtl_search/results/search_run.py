"""A search's MLflow run: the experiment, the parent run, the references and GBDT row on it, and its end (front, review, summary).

:class:`Tracker` writes a search and (through :class:`~.trial_runs.TrialRuns`) its trials;
:func:`open_tracker` checks the store first. Reading a search back is :mod:`.load`'s.
"""
from __future__ import annotations

import json
import os
from typing import Any

from ..errors import MtlSearchError
from ..record import (
    BEST_REFERENCE,
    EXPERIMENT_KIND,
    FRONT_SIZE,
    HYPERVOLUME,
    INTERRUPTED,
    NOTE,
    OBJECTIVES,
    PARETO,
    REFERENCE_POINT,
    REFERENCE_RUNS,
    ROLE,
    ROLE_SEARCH,
    ROLE_TRIAL,
    STRATEGY,
    VIOLATES,
    Objective,
    TrialRecord,
    affinity_key,
    gbdt_from_metrics,
    gbdt_metrics,
    reference_metrics,
    references_from_metrics,
)
from .load import child_runs, search_runs, trial_record
from .records import SearchRecord
from .review import EXPERIMENT_KIND_VALUE, log_search_review, set_review_view, summary_markdown
from .store import artifacts_folder, check_tracking_store, now_ms, sqlite_path
from .trial_runs import TrialRuns, log_metrics, log_params


def open_tracker(uri: str | None, experiment: str, source: str = "tracking.uri") -> "Tracker":
    """A Tracker on ``uri`` (default store when None), checked first (:func:`check_tracking_store`); errors name ``source``."""
    resolved = check_tracking_store(uri, source)
    try:
        return Tracker(resolved, experiment)
    except MtlSearchError:
        raise
    except Exception as exc:  # what the store's driver says, in one line
        raise MtlSearchError(f"{source}: cannot open the tracking store {resolved}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


class Tracker(TrialRuns):
    """Writes a search and its trials to an MLflow tracking store."""

    def __init__(self, uri: str, experiment: str):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        path = sqlite_path(uri)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            artifacts = artifacts_folder(uri)
            if artifacts is not None:
                artifacts.mkdir(parents=True, exist_ok=True)
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifacts.as_uri() if artifacts else None)
        else:
            self.experiment_id = found.experiment_id
        self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND, EXPERIMENT_KIND_VALUE)
        self.experiment = experiment

    def start_search(self, name: str, objectives: list[Objective], params: dict[str, Any], space_text: str,
                     tags: dict[str, str] | None = None) -> str:
        tags = {ROLE: ROLE_SEARCH, OBJECTIVES: json.dumps([o.to_json() for o in objectives]), **(tags or {})}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        log_params(self.client, run.info.run_id, params)
        self.client.log_text(run.info.run_id, space_text, "space.yaml")
        return run.info.run_id

    def latest_search(self) -> Any:
        """The experiment's most recent search (parent) run, or None."""
        runs = search_runs(self.client, [self.experiment_id])
        return runs[0] if runs else None

    def reopen_search(self, run_id: str) -> list[TrialRecord]:
        """Take up an interrupted search: its runs left RUNNING become KILLED; returns the trials and reference trials it recorded before."""
        for run in self.children(run_id, role=None):
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, "KILLED")
        self.client.update_run(run_id, status="RUNNING")
        return [t for t in (trial_record(run) for run in self.children(run_id, role=None)) if t.status != "killed"]

    def log_references(self, run_id: str, references: dict[str, dict[str, float]], chosen: dict[str, str] | None = None) -> None:
        """The single-task references' metrics on the search run (``reference/val/<task>``, ``reference/test/<task>``).

        ``chosen``: the reference trial run chosen per task, tagged on that run and on the search run.
        """
        metrics = reference_metrics(references)
        if metrics:
            log_metrics(self.client, run_id, metrics)
        if chosen:
            for reference_run in chosen.values():
                self.client.set_tag(reference_run, BEST_REFERENCE, "true")
            self.client.set_tag(run_id, REFERENCE_RUNS, json.dumps(chosen))

    def load_references(self, run_id: str) -> dict[str, dict[str, float]] | None:
        """The references a search run recorded (``log_references``), or None."""
        return references_from_metrics(self.client.get_run(run_id).data.metrics)

    def log_gbdt(self, run_id: str, comparison: dict[str, Any]) -> None:
        """The GBDT comparison row on the search run: ``gbdt/val/<task>``, ``gbdt/test/<task>``, ``gbdt/seconds``."""
        log_metrics(self.client, run_id, gbdt_metrics(comparison))

    def load_gbdt(self, run_id: str) -> dict[str, Any] | None:
        """The GBDT row a search run recorded (``log_gbdt``), or None."""
        return gbdt_from_metrics(self.client.get_run(run_id).data.metrics)

    def children(self, parent_id: str, role: str | None = ROLE_TRIAL) -> list[Any]:
        """The trial runs of a search run (``role="reference"``: its single-task reference trials; None: every role)."""
        return child_runs(self.client, [self.experiment_id], parent_id, role)

    def _affinity_by_strategy(self, run_id: str) -> dict[str, float]:
        """The trials' task affinity (``training.affinity_every``) averaged per strategy: ``affinity/<strategy>/<i>/<j>``."""
        from ..training.affinity import mean_by_strategy

        trials = [(r.data.tags.get(STRATEGY, ""), r.data.metrics) for r in self.children(run_id) if r.info.status == "FINISHED"]
        return {affinity_key(s, pair): v for s, pairs in mean_by_strategy(trials).items() for pair, v in pairs.items()}

    def finish_search(self, record: SearchRecord, history: list[tuple[float, int]], status: str = "FINISHED") -> None:
        """The search's end: front tags and models on its trials, hypervolume history, affinity, review artifacts, summary."""
        from mlflow.entities import Metric

        run_id = record.search_run_id
        for trial in record.trials:
            if trial.status == "finished":
                self.client.set_tag(trial.run_id, PARETO, "true" if trial.pareto else "false")
                if trial.violations is not None:
                    self.client.set_tag(trial.run_id, VIOLATES, "; ".join(trial.violations))
            if trial.pareto and trial.checkpoint and os.path.isdir(trial.checkpoint):
                self.client.log_artifacts(trial.run_id, trial.checkpoint, "model")
        now = now_ms()
        series = [Metric(HYPERVOLUME, hv, now, step) for step, (hv, _) in enumerate(history, 1)]
        series += [Metric(FRONT_SIZE, float(size), now, step) for step, (_, size) in enumerate(history, 1)]
        for start in range(0, len(series), 500):
            self.client.log_batch(run_id, metrics=series[start:start + 500])
        log_metrics(self.client, run_id, self._affinity_by_strategy(run_id))
        if record.reference_point is not None:
            self.client.set_tag(run_id, REFERENCE_POINT, json.dumps([round(v, 6) for v in record.reference_point]))
        log_search_review(self.client, run_id, record, history)
        set_review_view(self.client, self.experiment_id, record)
        self.client.set_tag(run_id, NOTE, summary_markdown(record))
        if record.interrupted:
            self.client.set_tag(run_id, INTERRUPTED, "true")
        self.client.set_terminated(run_id, status)
