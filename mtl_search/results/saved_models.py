"""A trial's model on disk and back: saved next to what rebuilding it needs, loaded from an MLflow run, used to predict.

A model directory (a trial's checkpoint; the ``model/`` artifact of a trial on the front) holds

- ``model.pt``: the state dict, for ``torch.load(path, weights_only=True)``;
- ``config.json``: the trial's exact sampled configuration (strategy, backbone, knobs, training);
- ``problem.json``: the problem (input shape, tasks with a standardised regression target's
  training mean and std, a table's features) and the backbone kind.

Rebuilding goes through the same factory as the trial (:func:`mtl_search.nn.create.create_model`)
with the recorded problem and configuration, so the plugin that provides the strategy (and
backbone kind) must be installed. A model trained on a table holds its input layer, whose
statistics and vocabularies travel in the state dict: it predicts from the raw columns.
A standardised regression target's statistics travel in ``problem.json``: :func:`predict`
gives the target's own units.
"""
from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import TrialConfig
from ..data.features import TableFeatures
from ..data.problem import Problem, Task
from ..errors import MtlSearchError
from ..nn.create import create_model
from ..nn.model import MultiTaskModel

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
PROBLEM_FILE = "problem.json"
MODEL_ARTIFACT = "model"  # the artifact folder of a trial run


def problem_to_json(problem: Problem) -> dict[str, Any]:
    """The problem as JSON: input shape, tasks (with a standardised target's statistics), and a table's feature description."""
    return {"input_shape": list(problem.input_shape),
            "tasks": [{"name": t.name, "kind": t.kind, "metric": t.metric, "classes": t.classes,
                       **({"after": t.after} if t.after is not None else {}),
                       **({"target_mean": t.target_mean, "target_std": t.target_std} if t.standardised else {}),
                       **({"labels": list(t.labels)} if t.labels else {})} for t in problem.tasks],
            "features": problem.features.to_dict() if problem.features is not None else None}


def problem_from_json(data: dict[str, Any]) -> Problem:
    features = TableFeatures.from_dict(data["features"]) if data.get("features") else None
    return Problem(tuple(data["input_shape"]), tuple(Task(**task) for task in data["tasks"]), features=features)


def save_model(directory: str | Path, model: MultiTaskModel, config: dict[str, Any], problem: Problem, backbone_kind: str) -> None:
    """Write ``model.pt``, ``config.json`` and ``problem.json`` into ``directory``, each atomically (a whole file or none)."""
    directory = Path(directory)
    # CPU tensors, so a model trained on a GPU loads anywhere; non-tensor entries (a module's extra state) stay as they are
    state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in model.state_dict().items()}
    _atomic(directory / MODEL_FILE, lambda path: torch.save(state, path))
    _atomic(directory / CONFIG_FILE, lambda path: path.write_text(json.dumps(config)))
    _atomic(directory / PROBLEM_FILE, lambda path: path.write_text(json.dumps({"problem": problem_to_json(problem), "backbone_kind": backbone_kind})))


def _atomic(target: Path, write: Any) -> None:
    """``write(temporary path)``, then rename it to ``target``: a reader never sees a half-written file."""
    temporary = target.with_name(f".{target.name}.tmp")
    write(temporary)
    os.replace(temporary, target)


def load_model_dir(directory: str | Path, registry: Any = None) -> MultiTaskModel:
    """Rebuild the model saved in ``directory`` and load its weights (eval mode, CPU)."""
    from ..registry import load_registry

    directory = Path(directory)
    missing = [name for name in (MODEL_FILE, CONFIG_FILE, PROBLEM_FILE) if not (directory / name).is_file()]
    if missing:
        raise MtlSearchError(f"{directory}: not a saved model, missing {', '.join(missing)}")
    config = TrialConfig.from_flat(json.loads((directory / CONFIG_FILE).read_text()))
    spec = json.loads((directory / PROBLEM_FILE).read_text())
    problem = problem_from_json(spec["problem"])
    registry = registry or load_registry()
    strategy = _registered(registry.strategies, config.strategy, "strategy")
    kind = _registered(registry.backbones, spec["backbone_kind"], "backbone kind")
    model = create_model(problem, strategy, kind, config.knobs, config.backbone, config.inputs)
    model.load_state_dict(torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True))
    return model.eval()


def _registered(items: dict[str, Any], name: str, kind: str) -> Any:
    if name not in items:
        raise MtlSearchError(f"the model needs {kind} {name!r}, which no installed plugin provides (installed: {', '.join(sorted(items))})")
    return items[name]


def load_model(source: str | Path, tracking_uri: str | None = None, registry: Any = None) -> MultiTaskModel:
    """The trained model of a trial, rebuilt and in eval mode: ``source`` is a trial's MLflow run id, or a saved model folder.

    Trials on the front carry their model in MLflow; ``tracking_uri`` defaults to the default
    store (``sqlite:///<cwd>/mlflow/mlflow.db``). A folder is one ``save_model`` wrote (a
    trial's checkpoint, or a downloaded ``model/`` artifact).
    """
    if Path(source).is_dir():
        return load_model_dir(source, registry)
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from .store import resolve_tracking_uri

    run_id = str(source)
    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise MtlSearchError(f"no run {run_id!r} in {client.tracking_uri}") from None
    # the run's own folder, not runs:/<id>/model, which MLflow merges with the run's pyfunc model, resolving that through the global tracking URI
    folder = f"{run.info.artifact_uri}/{MODEL_ARTIFACT}"
    if not any(a.path.endswith(MODEL_FILE) for a in mlflow.artifacts.list_artifacts(artifact_uri=folder, tracking_uri=client.tracking_uri)):
        raise MtlSearchError(f"run {run_id} has no model: only trials on the Pareto front carry one (tag mtl_search.pareto=true)")
    with tempfile.TemporaryDirectory() as tmp:
        return load_model_dir(mlflow.artifacts.download_artifacts(artifact_uri=folder, dst_path=tmp, tracking_uri=client.tracking_uri), registry)


@torch.no_grad()
def predict(model: MultiTaskModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-task predictions in the task's own terms: a value in the target's units (regression), P(y=1) (binary), class probabilities (multiclass).

    A binary funnel task (``Task.after``) is predicted conditionally on its parent (P(convert |
    click)); ``<task>.joint`` is added for it: the probability that it and every task above it
    in the funnel are positive, the product of the conditionals along the funnel (ESMM's
    pCTCVR = pCTR x pCVR for click -> conversion).
    """
    model.eval()
    x = x.to(dtype=torch.float32).reshape(len(x), *model.problem.input_shape)
    return task_predictions(model.problem, model(x))


def task_predictions(problem: Problem, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's raw outputs in the tasks' own terms (:func:`predict`), in tensor operations only (an exported graph holds them)."""
    predictions = {}
    for task in problem.tasks:
        out = outputs[task.name]
        if task.kind == "binary":
            predictions[task.name] = torch.sigmoid(out.reshape(-1))
        elif task.kind == "multiclass":
            predictions[task.name] = torch.softmax(out, dim=1)
        else:
            predictions[task.name] = task.to_units(out.reshape(-1))
    for task in problem.tasks:
        chain = [task.name, *problem.ancestors(task.name)]
        if task.after is not None and all(problem.task(n).kind == "binary" for n in chain):
            predictions[joint_name(task.name)] = torch.stack([predictions[n] for n in chain]).prod(dim=0)
    return predictions


def joint_name(task: str) -> str:
    """The prediction column of a funnel task's joint probability (it and every task above it positive)."""
    return f"{task}.joint"


def read_inputs(path: str | Path, problem: Problem, warn: Callable[[str], None] = lambda line: None) -> torch.Tensor:
    """The model input of the rows in ``path``, for a model of ``problem``.

    A model trained on a table reads the raw feature columns by name from a CSV or Parquet
    file (text categories, blanks for missing values: as the training table held them; other
    columns are ignored); its input layer applies the training statistics. A model trained
    on a tensor data set reads a plain numeric CSV, one column per input feature, header row
    optional.
    """
    path = Path(path)
    if not path.is_file():
        raise MtlSearchError(f"{path}: no such file")
    if problem.features is not None:
        from ..data.tables import read_feature_columns

        return read_feature_columns(path, problem.features, warn)
    return read_numeric_csv(path, math.prod(problem.input_shape))


def read_numeric_csv(path: Path, width: int) -> torch.Tensor:
    """A plain numeric CSV of ``width`` columns, with or without a header row."""
    lines = list(csv.reader(path.read_text().splitlines()))
    first = 1 if lines and not _numeric(lines[0]) else 0  # a header row
    values = []
    for number, row in enumerate(lines[first:], first + 1):
        if not row:
            continue
        if len(row) != width:
            raise MtlSearchError(f"{path}, line {number}: {len(row)} columns, the model takes {width} features")
        if not _numeric(row):
            raise MtlSearchError(f"{path}, line {number}: a value is not a finite number")
        values.append([float(v) for v in row])
    if not values:
        raise MtlSearchError(f"{path}: no rows of features")
    return torch.tensor(values)


def _numeric(row: list[str]) -> bool:
    try:
        return all(math.isfinite(float(v)) for v in row)
    except ValueError:
        return False


def prediction_rows(model: MultiTaskModel, x: torch.Tensor) -> list[dict[str, float]]:
    """One row per input: a column per task, named after the class whose probability it gives.

    Regression: ``task``. Binary: ``task:<positive class>`` (``task`` when the data set names no
    classes). Multiclass: ``task`` = the most probable class and ``task:<class>`` per class (the
    class index when unnamed). A funnel task also has ``task.joint``.
    """
    predictions = predict(model, x)
    rows: list[dict[str, Any]] = [{} for _ in range(len(x))]
    for task in model.problem.tasks:
        values = predictions[task.name]
        names = task.labels or [str(k) for k in range(task.classes)]
        for row, value in zip(rows, values):
            if task.kind == "multiclass":
                best = int(value.argmax())
                row[task.name] = task.labels[best] if task.labels else best
                row.update({f"{task.name}:{names[k]}": float(p) for k, p in enumerate(value)})
            elif task.kind == "binary" and task.labels:
                row[f"{task.name}:{task.labels[-1]}"] = float(value)
            else:
                row[task.name] = float(value)
        if joint_name(task.name) in predictions:
            for row, value in zip(rows, predictions[joint_name(task.name)]):
                row[joint_name(task.name)] = float(value)
    return rows
