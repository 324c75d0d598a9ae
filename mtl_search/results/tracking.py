"""MLflow: one parent run per search, one child run per trial, the front and its artifacts.

All logging happens on the driver (workers need no tracking access). The default store is
``sqlite:///<cwd>/mlflow/mlflow.db`` with artifacts under ``<cwd>/mlflow/artifacts``.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import MtlSearchError
from .metrics import (
    COST_METRICS,
    DELTA_M,
    GAIN,
    GBDT,
    NEGATIVE_TRANSFER_TAG,
    REFERENCE,
    TEST,
    TEST_GAIN,
    VAL,
    WORST_GAIN,
    Objective,
    is_gain_key,
    is_trial_figure,
    negative_transfer,
)
from .records import SearchRecord, TrialRecord, reference_run_name, trial_run_name
from .review import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    log_search_review,
    set_review_view,
)

ROLE = "mtl_search.role"
STRATEGY = "mtl_search.strategy"
FAMILY = "mtl_search.family"
PARETO = "mtl_search.pareto"
VIOLATES = "mtl_search.violates"  # the search.constraints a finished trial violates ("; "-separated, empty: feasible)
NUMBER = "mtl_search.trial_number"
OBJECTIVES = "mtl_search.objectives"
TASK_METRICS = "mtl_search.task_metrics"  # JSON {task: metric} on the search run: what its val/test values measure
STATUS = "mtl_search.status"  # set to "stopped" on a trial the scheduler (or a second Ctrl-C) ended early
PLACEMENT_TAGS = {"device": "mtl_search.device", "node_id": "mtl_search.node_id"}
CHECKPOINT = "mtl_search.checkpoint"  # the folder of a finished trial's saved model (a Tune checkpoint)
STUDY = "mtl_search.study"  # the search's Optuna study (in optuna.db next to the tracking store)
REFERENCE_TASK = "mtl_search.reference_task"  # on a single-task reference trial (role "reference"): its task
BEST_REFERENCE = "mtl_search.reference_best"  # "true" on the reference trial chosen as its task's reference
REPEAT_OF = "mtl_search.repeat_of"  # on a repeat (role "repeat"): the run id of the trial it trains again
REPEAT = "mtl_search.repeat"  # on a repeat: its seed index, 1, 2, ...
NOISE = "noise/"  # a repeated front trial's spread over seeds: noise/<figure>/{mean,std,n,significant}
REFERENCE_RUNS = "mtl_search.reference_runs"  # JSON {task: run id} on the search run: the chosen reference trials
REFERENCE_POINT = "mtl_search.reference_point"  # JSON list: the hypervolume's reference point (a tag: it moves as trials finish, a param may not change)
INTERRUPTED = "mtl_search.interrupted"  # set on a search stopped by Ctrl-C (its run ends KILLED; --resume continues it)
PARENT = "mlflow.parentRunId"
NOTE = "mlflow.note.content"
EPOCH_PREFIXES = ("train_loss/", "val/", "val_loss/", "weight/")


def default_store_dir(cwd: Path | None = None) -> Path:
    return (cwd or Path.cwd()).resolve() / "mlflow"


def default_tracking_uri(cwd: Path | None = None) -> str:
    return f"sqlite:///{default_store_dir(cwd) / 'mlflow.db'}"


def resolve_tracking_uri(uri: str | None) -> str:
    """An absolute tracking URI: the default store, or ``uri`` with a relative sqlite path made absolute."""
    if not uri:
        return default_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri:
        raise MtlSearchError(f"tracking URI {uri!r}: expected sqlite:///path/to/mlflow.db or http(s)://server (MLflow's file store is not supported)")
    return uri


def require_store(uri: str) -> str:
    """``uri`` when it names a complete tracking store; else MtlSearchError (reading commands create nothing).

    For a sqlite store: the file must exist and hold every table MLflow needs, read without
    writing (a store a search is creating right now is not complete yet: the reader waits
    rather than racing it to create the tables). Servers (``http(s)://``) are the server's business.
    """
    if not uri.startswith("sqlite:///"):
        return uri
    path = Path(uri[len("sqlite:///"):])
    if not path.is_file():
        raise MtlSearchError(f"no tracking store at {path}: no search has been run here; "
                             "run `mtl-search run SPACE` in this folder first, or give --tracking-uri")
    if not _store_complete(path):
        raise MtlSearchError(f"{path} is not a complete MLflow store (a search starting now may still be creating it); "
                             "try again in a moment")
    return uri


def _store_complete(path: Path) -> bool:
    """Whether the sqlite file holds every table of MLflow's schema (read-only: nothing is created or migrated)."""
    import sqlite3

    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            connection.close()
    except sqlite3.Error:
        return False
    try:
        import mlflow.store.tracking.dbmodels.models  # noqa: F401  (defines the tables on Base)
        from mlflow.store.db.base_sql_model import Base

        expected = set(Base.metadata.tables)  # as MLflow's own check (store.db.utils._all_tables_exist)
    except ImportError:  # pragma: no cover - MLflow moved its models: fall back to the tables every version has
        expected = {"experiments", "runs", "metrics", "params", "tags", "alembic_version"}
    return "alembic_version" in tables and expected <= tables


@contextlib.contextmanager
def store_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.lock`` exclusively: searches started together in one folder create its stores one at a time.

    MLflow and Optuna each create their sqlite tables on first use; two processes doing it at
    once fail with "table ... already exists".
    """
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_tracking_store(uri: str | None, source: str = "tracking.uri") -> str:
    """The absolute tracking URI, or an MtlSearchError naming ``source`` when the store is unusable.

    Checked before anything else starts: a scheme MLflow cannot use, a sqlite path whose
    folder cannot be created, a server that does not answer.
    """
    resolved = resolve_tracking_uri(uri)
    scheme = resolved.split("://", 1)[0]
    if scheme not in ("sqlite", "http", "https"):
        raise MtlSearchError(f"{source}: {resolved!r} is not a tracking store mtl-search can use; "
                             "expected sqlite:///path/to/mlflow.db or http(s)://host:port")
    if scheme == "sqlite":
        path = Path(resolved[len("sqlite:///"):])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MtlSearchError(f"{source}: cannot create the folder of {path}: {exc.strerror or exc}") from None
        if path.exists() and not path.is_file():
            raise MtlSearchError(f"{source}: {path} is not a file")
    else:
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(resolved.rstrip("/") + "/health", timeout=10).close()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise MtlSearchError(f"{source}: the MLflow server at {resolved} does not answer ({reason})") from None
    return resolved


def open_tracker(uri: str | None, experiment: str, source: str = "tracking.uri") -> "Tracker":
    """A Tracker on ``uri`` (default store when None), checked first (:func:`check_tracking_store`); errors name ``source``."""
    resolved = check_tracking_store(uri, source)
    try:
        return Tracker(resolved, experiment)
    except MtlSearchError:
        raise
    except Exception as exc:  # what the store's driver says, in one line
        raise MtlSearchError(f"{source}: cannot open the tracking store {resolved}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


class Tracker:
    """Writes a search and its trials to an MLflow tracking store."""

    def __init__(self, uri: str, experiment: str):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            location = None
            if uri.startswith("sqlite:///"):
                artifacts = Path(uri[len("sqlite:///"):]).parent / "artifacts"
                artifacts.mkdir(parents=True, exist_ok=True)
                location = artifacts.as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = found.experiment_id
        self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        self.experiment = experiment

    # --- the search (parent) run -------------------------------------------------------
    def start_search(self, name: str, objectives: list[Objective], params: dict[str, Any], space_text: str,
                     tags: dict[str, str] | None = None) -> str:
        tags = {ROLE: "search", OBJECTIVES: json.dumps([o.to_json() for o in objectives]), **(tags or {})}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self._log_params(run.info.run_id, params)
        self.client.log_text(run.info.run_id, space_text, "space.yaml")
        return run.info.run_id

    def latest_search(self) -> Any:
        """The experiment's most recent search (parent) run, or None."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{ROLE}` = 'search'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if runs else None

    def reopen_search(self, run_id: str) -> list[TrialRecord]:
        """Take up an interrupted search: its runs left RUNNING become KILLED; returns the trials and reference trials it recorded before."""
        for run in self.children(run_id, role=None):
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, "KILLED")
        self.client.update_run(run_id, status="RUNNING")
        return [t for t in (_trial_record(run) for run in self.children(run_id, role=None)) if t.status != "killed"]

    def log_references(self, run_id: str, references: dict[str, dict[str, float]], chosen: dict[str, str] | None = None) -> None:
        """The single-task references' metrics on the search run (``reference/val/<task>``, ``reference/test/<task>``).

        ``chosen``: the reference trial run chosen per task, tagged on that run and on the search run.
        """
        from mlflow.entities import Metric

        now = _now_ms()
        metrics = [Metric(f"{REFERENCE}{split}/{task}", float(v), now, 0) for split, values in references.items()
                   for task, v in values.items() if _finite(v)]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)
        if chosen:
            for reference_run in chosen.values():
                self.client.set_tag(reference_run, BEST_REFERENCE, "true")
            self.client.set_tag(run_id, REFERENCE_RUNS, json.dumps(chosen))

    def load_references(self, run_id: str) -> dict[str, dict[str, float]] | None:
        """The references a search run recorded (``log_references``), or None."""
        return _references(self.client.get_run(run_id).data.metrics)

    def log_gbdt(self, run_id: str, comparison: dict[str, Any]) -> None:
        """The GBDT comparison row on the search run: ``gbdt/val/<task>``, ``gbdt/test/<task>``, ``gbdt/seconds``."""
        from mlflow.entities import Metric

        now = _now_ms()
        metrics = [Metric(f"{GBDT}{split}/{task}", float(v), now, 0) for split in ("val", "test")
                   for task, v in comparison[split].items() if _finite(v)]
        self.client.log_batch(run_id, metrics=[*metrics, Metric(f"{GBDT}seconds", float(comparison["seconds"]), now, 0)])

    def load_gbdt(self, run_id: str) -> dict[str, Any] | None:
        """The GBDT row a search run recorded (``log_gbdt``), or None."""
        return _gbdt(self.client.get_run(run_id).data.metrics)

    def children(self, parent_id: str, role: str | None = "trial") -> list[Any]:
        """The trial runs of a search run (``role="reference"``: its single-task reference trials; None: both)."""
        return _children(self.client, [self.experiment_id], parent_id, role)

    def _affinity_by_strategy(self, run_id: str, now: int) -> list[Any]:
        """The trials' task affinity (``training.affinity_every``) averaged per strategy: ``affinity/<strategy>/<i>/<j>``."""
        from mlflow.entities import Metric

        from ..training.affinity import mean_by_strategy

        trials = [(r.data.tags.get(STRATEGY, ""), r.data.metrics) for r in self.children(run_id) if r.info.status == "FINISHED"]
        means = mean_by_strategy(trials)
        return [Metric(f"affinity/{s}/{pair}", v, now, 0) for s, pairs in means.items() for pair, v in pairs.items()]

    def finish_search(self, record: SearchRecord, history: list[tuple[float, int]], status: str = "FINISHED") -> None:
        from mlflow.entities import Metric

        run_id = record.search_run_id
        for trial in record.trials:
            if trial.status == "finished":
                self.client.set_tag(trial.run_id, PARETO, "true" if trial.pareto else "false")
                if trial.violations is not None:
                    self.client.set_tag(trial.run_id, VIOLATES, "; ".join(trial.violations))
            if trial.pareto and trial.checkpoint and os.path.isdir(trial.checkpoint):
                self.client.log_artifacts(trial.run_id, trial.checkpoint, "model")
        now = _now_ms()
        metrics = [Metric("hypervolume", hv, now, step) for step, (hv, _) in enumerate(history, 1)]
        metrics += [Metric("front_size", float(size), now, step) for step, (_, size) in enumerate(history, 1)]
        metrics += self._affinity_by_strategy(run_id, now)
        for start in range(0, len(metrics), 500):
            self.client.log_batch(run_id, metrics=metrics[start:start + 500])
        if record.reference_point is not None:
            self.client.set_tag(run_id, REFERENCE_POINT, json.dumps([round(v, 6) for v in record.reference_point]))
        log_search_review(self.client, run_id, record, history)
        set_review_view(self.client, self.experiment_id, record)
        self.client.set_tag(run_id, NOTE, summary_markdown(record))
        if record.interrupted:
            self.client.set_tag(run_id, INTERRUPTED, "true")
        self.client.set_terminated(run_id, status)

    # --- trial (child) runs --------------------------------------------------------------
    def start_trial(self, parent_id: str, number: int, strategy: str, params: dict[str, Any], family: str = "",
                    reference_task: str | None = None, repeat_of: str | None = None, repeat: int = 0) -> str:
        """A trial's run under the search run.

        ``reference_task``: a single-task reference trial of that task (role ``reference``);
        ``repeat_of``: a repeat with seed index ``repeat`` of that run (role ``repeat``).
        """
        tags = {PARENT: parent_id, ROLE: "trial", STRATEGY: strategy, FAMILY: family, NUMBER: str(number)}
        name = trial_run_name(number, strategy)
        if reference_task is not None:
            tags.update({ROLE: "reference", REFERENCE_TASK: reference_task})
            name = reference_run_name(reference_task, number)
        if repeat_of is not None:
            tags.update({ROLE: "repeat", REPEAT_OF: repeat_of, REPEAT: str(repeat)})
            name = f"{name}-repeat-{repeat}"
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def record_placement(self, run_id: str, result: dict[str, Any]) -> None:
        """Tag the trial with the device and Ray node it runs on."""
        for key, tag in PLACEMENT_TAGS.items():
            if key in result:
                self.client.set_tag(run_id, tag, str(result[key]))

    def log_epoch(self, run_id: str, result: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step, now = int(result["epoch"]), _now_ms()
        metrics = [Metric(k, float(v), now, step) for k, v in result.items()
                   if (k.startswith(EPOCH_PREFIXES) or k == "score") and _finite(v)]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def finish_trial(self, run_id: str, result: dict[str, Any], checkpoint: str | None = None) -> None:
        """A trial's final metrics and sharing map; ``checkpoint``: the folder of its saved model (logged later if it is on the front)."""
        from mlflow.entities import Metric

        from ..nn.model import (
            SharingMap,  # torch: only where a trial ends, not in reading commands
        )
        from .plots import sharing_map_figure

        step, now = int(result.get("epochs_trained", 0)), _now_ms()
        keys = [k for k in result if k.startswith((VAL, TEST, "model/")) or k in (*COST_METRICS, "epochs_trained") or is_gain_key(k)]
        self.client.log_batch(run_id, metrics=[Metric(k, float(result[k]), now, step) for k in keys if _finite(result[k])])
        gains = {k[len(GAIN):]: float(v) for k, v in result.items() if k.startswith(GAIN) and _finite(v)}
        if gains:
            self.client.set_tag(run_id, NEGATIVE_TRANSFER_TAG, "true" if negative_transfer(gains) else "false")
        for key, value in json.loads(result.get("tags_json") or "{}").items():
            self.client.set_tag(run_id, key, value[:5000])
        maps = json.loads(result.get("sharing_map_json") or "{}")
        self.client.log_dict(run_id, maps, "sharing_map.json")
        if maps:
            import matplotlib.pyplot as plt

            figure = sharing_map_figure({k: SharingMap.from_dict(v) for k, v in maps.items()})
            self.client.log_figure(run_id, figure, "sharing_map.png")
            plt.close(figure)
        if checkpoint:
            self.client.set_tag(run_id, CHECKPOINT, checkpoint)
        self.client.set_terminated(run_id, "FINISHED")

    def log_noise(self, run_id: str, noise: dict[str, Any]) -> None:
        """A repeated front trial's spreads over seeds (``noise/<figure>/mean`` ...) and its negative transfer beyond noise."""
        from mlflow.entities import Metric

        now = _now_ms()
        metrics = [Metric(f"{NOISE}{key}/{stat}", float(value), now, 0) for key, spread in noise.items()
                   for stat, value in spread.to_json().items() if _finite(float(value))]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)
        below = any(s.significant and s.mean < 0 for key, s in noise.items() if key.startswith(GAIN))
        self.client.set_tag(run_id, NEGATIVE_TRANSFER_TAG, "true" if below else "false")

    def stop_trial(self, run_id: str) -> None:
        """A trial ended early (scheduler or cancel): KILLED in MLflow, tagged ``stopped``, kept out of the front."""
        self.client.set_tag(run_id, STATUS, "stopped")
        self.client.set_terminated(run_id, "KILLED")

    def fail_trial(self, run_id: str, error: str) -> None:
        self.client.log_text(run_id, error, "error.txt")
        self.client.set_tag(run_id, "mtl_search.error", error.strip().splitlines()[-1][:500] if error.strip() else "error")
        self.client.set_terminated(run_id, "FAILED")

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start:start + 100])


class BackgroundWriter:
    """Runs tracking calls one at a time, in the order given, on a thread of its own.

    Tune's event loop calls the trial callbacks, and a trial that reports an epoch waits
    until that loop has handled it; an MLflow write there (a sharing-map figure takes a few
    hundred milliseconds) would stall every running trial. A call that raises is reported
    through ``warn`` and the writes after it go on.
    """

    def __init__(self, warn: Callable[[str], None]):
        self._warn = warn
        self._calls: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="mtl-search-tracking", daemon=True)
        self._thread.start()

    def submit(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue ``call(*args, **kwargs)``."""
        self._calls.put((call, args, kwargs))

    def close(self) -> None:
        """Wait until every queued call has run, then stop the thread."""
        self._calls.put(None)
        self._thread.join()

    def _work(self) -> None:
        while (item := self._calls.get()) is not None:
            call, args, kwargs = item
            try:
                call(*args, **kwargs)
            except Exception as exc:  # a failed write must not lose the ones after it
                self._warn(f"warning: MLflow did not record {call.__name__}: {type(exc).__name__}: {exc}")


def _latest_search_runs(client: Any, uri: str, experiment: str | None) -> list:
    """The latest search run of ``experiment`` (default: of any experiment), as a list of zero or one run."""
    if experiment:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            names = [e.name for e in client.search_experiments()]
            raise MtlSearchError(f"no experiment named {experiment!r} in {uri}; experiments: {', '.join(names) or 'none'}")
        experiment_ids = [found.experiment_id]
    else:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiment_ids, filter_string=f"tags.`{ROLE}` = 'search'", order_by=["attributes.start_time DESC"], max_results=1) if experiment_ids else []


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
    objectives = [Objective.from_json(o) for o in json.loads(parent.data.tags[OBJECTIVES])]
    children = _children(client, [parent.info.experiment_id], parent.info.run_id, None)
    records = [_trial_record(run) for run in children]
    # A trial killed by a crash and run again after --resume has a newer run with the same number.
    rerun = {_identity(t) for t in records if t.status != "killed"}
    records = [t for t in records if t.status != "killed" or _identity(t) not in rerun]
    trials = [t for t in records if t.role == "trial"]
    experiment_name = client.get_experiment(parent.info.experiment_id).name
    return SearchRecord(experiment_name, parent.info.run_id, objectives, sorted(trials, key=lambda t: t.number),
                        hypervolume=parent.data.metrics.get("hypervolume"),
                        task_metrics=json.loads(parent.data.tags.get(TASK_METRICS, "{}")),
                        reference_point=json.loads(parent.data.tags[REFERENCE_POINT]) if REFERENCE_POINT in parent.data.tags else None,
                        references=_references(parent.data.metrics), gbdt=_gbdt(parent.data.metrics),
                        reference_trials=sorted((t for t in records if t.role == "reference"),
                                                key=lambda t: (t.reference_task, t.number)),
                        repeats=sorted((t for t in records if t.role == "repeat"), key=lambda t: (t.repeat_of, t.repeat)),
                        strategies=_typed(parent.data.params.get("strategies", "[]")))


def _identity(trial: TrialRecord) -> tuple:
    """What a re-run after --resume shares with the run it replaces."""
    return trial.reference_task, trial.number, trial.repeat_of, trial.repeat


def _children(client: Any, experiment_ids: list[str], parent_id: str, role: str | None) -> list[Any]:
    """The runs under search run ``parent_id``: with ``role`` (``trial``, ``reference``), only those."""
    where = f"tags.`{PARENT}` = '{parent_id}'" + (f" and tags.`{ROLE}` = '{role}'" if role else "")
    return client.search_runs(experiment_ids, filter_string=where, max_results=50000)


def _references(metrics: dict[str, float]) -> dict[str, dict[str, float]] | None:
    found: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith(REFERENCE):
            split, task = key[len(REFERENCE):].split("/", 1)
            found.setdefault(split, {})[task] = value
    return found or None


def _gbdt(metrics: dict[str, float]) -> dict[str, Any] | None:
    if f"{GBDT}seconds" not in metrics:  # logged last, with the row
        return None
    found: dict[str, Any] = {"val": {}, "test": {}, "seconds": metrics[f"{GBDT}seconds"]}
    for key, value in metrics.items():
        split, _, task = key[len(GBDT):].partition("/") if key.startswith(GBDT) else ("", "", "")
        if split in ("val", "test") and task:
            found[split][task] = value
    return found


def _trial_record(run: Any) -> TrialRecord:
    """A trial as MLflow holds it."""
    metrics, tags = run.data.metrics, run.data.tags
    status = tags.get(STATUS) or {"FINISHED": "finished", "FAILED": "failed", "KILLED": "killed"}.get(run.info.status, run.info.status.lower())
    # per-epoch val metrics of a trial that did not finish are not its result
    final = metrics if status == "finished" else {}
    return TrialRecord(
        number=int(tags.get(NUMBER, -1)),
        run_id=run.info.run_id,
        strategy=tags.get(STRATEGY, ""),
        params={k: _typed(v) for k, v in run.data.params.items()},
        status=status,
        val={k[len(VAL):]: v for k, v in final.items() if k.startswith(VAL)},
        test={k[len(TEST):]: v for k, v in final.items() if k.startswith(TEST)},
        metrics={k: v for k, v in metrics.items() if "/" not in k or is_trial_figure(k)},
        gains={k[len(GAIN):]: v for k, v in final.items() if k.startswith(GAIN)},
        test_gains={k[len(TEST_GAIN):]: v for k, v in final.items() if k.startswith(TEST_GAIN)},
        error=tags.get("mtl_search.error"),
        pareto=tags.get(PARETO) == "true",
        checkpoint=tags.get(CHECKPOINT),
        family=tags.get(FAMILY, ""),
        placement={key: tags[tag] for key, tag in PLACEMENT_TAGS.items() if tag in tags},
        violations=(tags[VIOLATES].split("; ") if tags[VIOLATES] else []) if VIOLATES in tags else None,
        reference_task=tags.get(REFERENCE_TASK),
        repeat_of=tags.get(REPEAT_OF), repeat=int(tags.get(REPEAT, 0)),
        noise=_noise(metrics),
    )


def _noise(metrics: dict[str, float]) -> dict[str, Any]:
    """The spreads ``log_noise`` recorded, by figure."""
    from .metrics import Spread

    found: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith(NOISE):
            figure, stat = key[len(NOISE):].rsplit("/", 1)
            found.setdefault(figure, {})[stat] = value
    return {figure: Spread(v.get("mean", math.nan), v.get("std", math.nan), int(v.get("n", 0)), bool(v.get("significant", 0.0)))
            for figure, v in found.items()}


def summary_markdown(record: SearchRecord) -> str:
    """The search run's description: trial counts by status, best value per objective, per-family best, the front."""
    counts = Counter(t.status for t in record.trials)
    hv = f"{record.hypervolume:.6g}" if record.hypervolume is not None else "n/a"
    lines = [f"## Search `{record.experiment}`", "",
             f"{len(record.trials)} trials: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) +
             f"; front: {len(record.front)} trials; hypervolume: {hv}", ""]
    if record.interrupted:
        lines += ["**Interrupted** (Ctrl-C): `mtl-search run SPACE --resume` continues this search.", ""]
    names = [o.name for o in record.objectives]
    lines += ["| objective | best | trial | strategy |", "|---|---|---|---|"]
    for obj in record.objectives:
        best = _best(record.trials, obj)
        if best:
            lines.append(f"| {obj.name} ({obj.direction}) | {best[0]:.4g} | {best[1].run_name} | {best[1].strategy} |")
    lines += ["", "### Best per family", "", "| family | trials | on the front | " + " | ".join(f"best {n}" for n in names) + " |",
              "|---|---|---|" + "---|" * len(names)]
    for family in sorted({t.family for t in record.trials}):
        members = [t for t in record.trials if t.family == family]
        bests = [_best(members, obj) for obj in record.objectives]
        cells = [f"{b[0]:.4g} ({b[1].run_name})" if b else "n/a" for b in bests]
        lines.append(f"| {family or '?'} | {len(members)} | {sum(t.pareto for t in members)} | " + " | ".join(cells) + " |")
    gains = bool(record.references)
    extra = ["Δm %", "worst gain %", "negative transfer"] if gains else []
    lines += ["", "### Front", "", "| trial | strategy | " + " | ".join(names + extra) + " |", "|---|---|" + "---|" * len(names + extra)]
    for t in sorted(record.front, key=lambda t: t.number):
        values = t.objective_values(record.objectives) or []
        cells = [f"{v:.4g}" for v in values]
        if gains:
            cells += [_number(t.metrics.get(DELTA_M)), _number(t.metrics.get(WORST_GAIN)), "yes" if t.negative_transfer else "no"]
        lines.append(f"| {t.run_name} | {t.strategy} | " + " | ".join(cells) + " |")
    if record.gbdt:
        tasks = list(record.gbdt["val"])
        lines += ["", "### GBDT comparison (HistGradientBoosting per task; gains of the front's trials over it, validation %)", "",
                  "| | " + " | ".join(f"{t} {record.task_metrics.get(t, '')}".strip() for t in tasks) + " |", "|---|" + "---|" * len(tasks),
                  "| gbdt val | " + " | ".join(f"{record.gbdt['val'][t]:.4g}" for t in tasks) + " |",
                  "| gbdt test | " + " | ".join(f"{record.gbdt['test'].get(t, math.nan):.4g}" for t in tasks) + " |"]
        for t in sorted(record.front, key=lambda t: t.number):
            gains = record.gbdt_gains(t)
            lines.append(f"| {t.run_name} | " + " | ".join(_number(gains.get(task)) for task in tasks) + " |")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return f"{value:+.2f}" if isinstance(value, float) and math.isfinite(value) else "n/a"


def _best(trials: list[TrialRecord], objective: Objective) -> tuple[float, TrialRecord] | None:
    """The best finished value of one objective and the trial that reached it."""
    scored = [(values[0], t) for t in trials if t.status == "finished" and (values := t.objective_values([objective]))]
    if not scored:
        return None
    pick = min if objective.direction == "min" else max
    return pick(scored, key=lambda pair: pair[0])


_PYTHON_LITERALS = {"True": True, "False": False, "None": None}  # str() of a bool or None, as _log_params writes them


def _typed(text: str) -> Any:
    """A param as logged (MLflow stores strings) back to its JSON (or Python literal) value where it is one."""
    if text in _PYTHON_LITERALS:
        return _PYTHON_LITERALS[text]
    try:
        return json.loads(text)
    except ValueError:
        return text


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
