"""A search read back from MLflow: the latest search run, its trial runs, and the :class:`SearchRecord` they make."""
from __future__ import annotations

import json
from typing import Any

from ..errors import MtlSearchError
from ..record import (
    HYPERVOLUME,
    OBJECTIVES,
    PARENT,
    REFERENCE_POINT,
    REFERENCE_RUNS,
    ROLE,
    ROLE_REFERENCE,
    ROLE_REPEAT,
    ROLE_SEARCH,
    ROLE_TRIAL,
    TASK_METRICS,
    Objective,
    TrialRecord,
    gbdt_from_metrics,
    param_value,
    references_from_metrics,
)
from .records import SearchRecord


def child_runs(client: Any, experiment_ids: list[str], parent_id: str, role: str | None) -> list[Any]:
    """The runs under search run ``parent_id``: with ``role`` (``trial``, ``reference``, ``repeat``), only those."""
    where = f"tags.`{PARENT}` = '{parent_id}'" + (f" and tags.`{ROLE}` = '{role}'" if role else "")
    return client.search_runs(experiment_ids, filter_string=where, max_results=50000)


def trial_record(run: Any) -> TrialRecord:
    """A trial as its MLflow run holds it."""
    return TrialRecord.from_run(run.info.run_id, run.info.status, run.data.params, run.data.metrics, run.data.tags)


def search_runs(client: Any, experiment_ids: list[str], latest: bool = True) -> list[Any]:
    """The search (parent) runs of ``experiment_ids``, newest first (``latest``: only the newest)."""
    if not experiment_ids:
        return []
    return client.search_runs(experiment_ids, filter_string=f"tags.`{ROLE}` = '{ROLE_SEARCH}'",
                              order_by=["attributes.start_time DESC"], max_results=1 if latest else 50000)


def _latest_search_runs(client: Any, uri: str, experiment: str | None) -> list:
    """The latest search run of ``experiment`` (default: of any experiment), as a list of zero or one run."""
    if experiment:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            names = [e.name for e in client.search_experiments()]
            raise MtlSearchError(f"no experiment named {experiment!r} in {uri}; experiments: {', '.join(names) or 'none'}")
        return search_runs(client, [found.experiment_id])
    return search_runs(client, [e.experiment_id for e in client.search_experiments()])


def latest_search_run(uri: str) -> Any:
    """The store's latest search run (an MLflow ``Run``), or None when there is none."""
    from mlflow.tracking import MlflowClient

    runs = _latest_search_runs(MlflowClient(tracking_uri=uri), uri, None)
    return runs[0] if runs else None


def load_search(uri: str, experiment: str | None) -> SearchRecord:
    """The latest search of ``experiment`` (default: the experiment of the latest search) as recorded in MLflow."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = _latest_search_runs(client, uri, experiment)
    if not runs:
        raise MtlSearchError(f"no search recorded in {uri}" + (f" for experiment {experiment!r}" if experiment else "") + "; run `mtl-search run SPACE` first")
    parent = runs[0]
    tags, metrics = parent.data.tags, parent.data.metrics
    records = [trial_record(run) for run in child_runs(client, [parent.info.experiment_id], parent.info.run_id, None)]
    # A trial killed by a crash and run again after --resume has a newer run with the same number.
    rerun = {t.identity for t in records if t.status != "killed"}
    records = [t for t in records if t.status != "killed" or t.identity not in rerun]
    return SearchRecord(client.get_experiment(parent.info.experiment_id).name, parent.info.run_id,
                        [Objective.from_json(o) for o in json.loads(tags[OBJECTIVES])],
                        sorted((t for t in records if t.role == ROLE_TRIAL), key=lambda t: t.number),
                        hypervolume=metrics.get(HYPERVOLUME),
                        task_metrics=json.loads(tags.get(TASK_METRICS, "{}")),
                        reference_point=json.loads(tags[REFERENCE_POINT]) if REFERENCE_POINT in tags else None,
                        references=references_from_metrics(metrics), gbdt=gbdt_from_metrics(metrics),
                        reference_trials=sorted((t for t in records if t.role == ROLE_REFERENCE),
                                                key=lambda t: (t.reference_task, t.number)),
                        reference_runs=json.loads(tags.get(REFERENCE_RUNS, "{}")),
                        repeats=sorted((t for t in records if t.role == ROLE_REPEAT), key=lambda t: (t.repeat_of, t.repeat)),
                        strategies=param_value(parent.data.params.get("strategies", "[]")))
