"""A front trial's model as an MLflow pyfunc model: ``mlflow.pyfunc.load_model("runs:/<id>/model").predict(rows)``.

At the end of a search (and when a resumed search finishes) every trial on the front gets,
besides its saved model folder (:mod:`mtl_search.results.saved_models`, the run's
``model/`` artifacts), an MLflow logged model named ``model`` of its run: a pyfunc model
"from code" (:mod:`mtl_search.results.pyfunc_model`, no pickle) whose artifacts are the
same three files plus ``requires.json`` (the strategy, the backbone kind, and the plugin and
distribution that provide them). ``runs:/<id>/model`` and, once registered,
``models:/<name>/<version>`` load it; ``mlflow models serve`` serves it.

The model's input is what the user holds: for a model trained on a table, a pandas
DataFrame with the raw feature columns by name (text categories, blanks or NaN for missing
values, as the training table held them; other columns are ignored); for a model trained on
a tensor data set, its array (rows x input shape). Its output is a DataFrame with the columns
of ``mtl-search predict``: one per task (regression value, P(y=1), or for a multiclass task
its argmax and ``task:k`` per class), and ``task.joint`` for a funnel task. A signature and
an input example are logged with it.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

import mlflow

from ..data.problem import Problem
from ..errors import MtlSearchError
from ..record import PYFUNC_ERROR
from .saved_models import (
    CONFIG_FILE,
    MODEL_ARTIFACT,
    MODEL_FILE,
    PROBLEM_FILE,
    load_model_dir,
    prediction_rows,
)

REQUIRES_FILE = "requires.json"  # what loading needs: strategy, backbone kind, their plugins and distributions
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
DISTRIBUTION = "mtl-search"


class FrontModel(mlflow.pyfunc.PythonModel):
    """The pyfunc model of a trial: the project's own loader and ``prediction_rows`` behind MLflow's ``predict``."""

    def load_context(self, context: Any) -> None:
        directory = Path(context.artifacts[MODEL_FILE]).parent
        check_requirements(json.loads((directory / REQUIRES_FILE).read_text()))
        self.model = load_model_dir(directory)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Per-task predictions of ``model_input`` (a DataFrame of raw feature columns, or an array for an array model), one column per output.

        (MLflow validates nothing from a DataFrame type hint; the logged signature is the contract.)
        """
        return pd.DataFrame(prediction_rows(self.model, model_inputs(model_input, self.model.problem)))


def model_inputs(data: Any, problem: Problem) -> Any:
    """The model's ``x`` of ``data``: a DataFrame of raw feature columns (table models) or an array (others).

    A missing column, or text in a numeric column, is an MtlSearchError naming the column.
    """
    import torch

    if problem.features is None:
        x = np.asarray(data.to_numpy() if hasattr(data, "to_numpy") else data, dtype=np.float32)
        if x.size % math.prod(problem.input_shape) or x.ndim == 0:
            raise MtlSearchError(f"an input of shape {x.shape} does not hold rows of shape {tuple(problem.input_shape)}")
        return torch.from_numpy(x.reshape(-1, *problem.input_shape))
    import pyarrow as pa

    if not isinstance(data, pd.DataFrame):
        raise MtlSearchError(f"the model takes a pandas DataFrame of its feature columns ({', '.join(problem.features.names)}), "
                             f"got {type(data).__name__}")
    features = problem.features
    missing = [name for name in features.names if name not in data.columns]
    if missing:
        raise MtlSearchError(f"the rows lack column {', '.join(repr(n) for n in missing)} "
                             f"(the model's features: {', '.join(features.names)})")
    columns = {}
    for feature in features.numeric:
        column = data[feature.name]
        if not pd.api.types.is_numeric_dtype(column):  # text (a CSV read as strings, JSON): "" is a blank
            column = column.replace("", None)
        try:
            columns[feature.name] = pa.array(pd.to_numeric(column, errors="raise"), type=pa.float64(), from_pandas=True)
        except (ValueError, TypeError):
            raise MtlSearchError(f"column {feature.name!r} is numeric in the model; it holds text") from None
    for feature in features.categorical:
        columns[feature.name] = pa.array([_category_text(v) for v in data[feature.name]], type=pa.string())
    return features.encode(pa.table(columns))


def _category_text(value: Any) -> str | None:
    """A category as the training table's text: None for a blank; ``3`` (not ``3.0``) for an integral number a DataFrame made a float."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def check_requirements(requires: dict[str, Any]) -> None:
    """MtlSearchError naming the plugin and its distribution when what the model needs is not installed."""
    from ..registry import load_registry

    registry = load_registry()
    for kind, attribute in (("strategy", "strategies"), ("backbone_kind", "backbones")):
        need = requires[kind]
        if need["name"] not in getattr(registry, attribute):
            where = f"distribution {need['distribution']}" if need.get("distribution") else "a module a space named"
            raise MtlSearchError(f"the model needs {kind.replace('_', ' ')} {need['name']!r} from plugin {need['plugin']!r} "
                                 f"({where}), which is not installed here"
                                 + (f": pip install {need['distribution']}" if need.get("distribution") else ""))


def requirements(strategy: str, backbone_kind: str, registry: Any) -> dict[str, Any]:
    """``requires.json``: the strategy and backbone kind with the plugin that provides each and its distribution (name, version)."""
    entry_points = {ep.name: ep for ep in importlib.metadata.entry_points(group="mtl_search")}

    def provider(attribute: str, name: str) -> dict[str, Any]:
        plugin = next((p.name for p in registry.plugins if name in p.provides.get(attribute, [])), None)
        dist = getattr(entry_points.get(plugin), "dist", None)
        if plugin is not None and plugin.startswith("mtl_search."):  # the core's own blocks
            dist = importlib.metadata.distribution(DISTRIBUTION)
        return {"name": name, "plugin": plugin, "distribution": dist.name if dist else None, "version": dist.version if dist else None}

    return {"strategy": provider("strategies", strategy), "backbone_kind": provider("backbones", backbone_kind)}


def signature_and_example(model: Any) -> tuple[Any, Any]:
    """The model's MLflow signature and a two-row input example (typical values; then every value missing, for a table).

    The output schema is inferred from the model's own predictions of the example, so it has exactly ``predict``'s columns.
    """
    import warnings

    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import ColSpec, Schema, TensorSpec
    from mlflow.types.schema import AnyType

    problem = model.problem
    if problem.features is None:
        example = np.zeros((2, *problem.input_shape), dtype=np.float32)
        inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, *problem.input_shape))])
    else:
        features = problem.features
        example = pd.DataFrame({**{f.name: [round(f.mean, 6), np.nan] for f in features.numeric},
                                **{f.name: [f.categories[0] if f.categories else None, None] for f in features.categorical}})
        # the columns by name, of any type: a user's numeric column may be integers (pandas: int64, which MLflow will not
        # cast to double) and a batch's category column all blanks (float NaN); model_inputs checks the values and names the column
        inputs = Schema([ColSpec(AnyType(), name) for name in features.names])
    output = pd.DataFrame(prediction_rows(model, model_inputs(example, problem)))
    with warnings.catch_warnings():  # a multiclass task's argmax is an integer column: of an output, missing values are no concern
        warnings.simplefilter("ignore", UserWarning)
        outputs = infer_signature(output).inputs
    return ModelSignature(inputs=inputs, outputs=outputs), example


def log_pyfunc_model(tracking_uri: str, run_id: str, directory: str | Path, registry: Any = None) -> None:
    """Log the saved model in ``directory`` as the pyfunc logged model ``model`` of run ``run_id`` (a front trial's, at the search's end)."""
    from ..registry import load_registry

    directory = Path(directory)
    config = json.loads((directory / CONFIG_FILE).read_text())
    spec = json.loads((directory / PROBLEM_FILE).read_text())
    registry = registry or load_registry()
    requires = requirements(config["strategy"], spec["backbone_kind"], registry)
    signature, example = signature_and_example(load_model_dir(directory, registry))
    pip = [f"{DISTRIBUTION}=={importlib.metadata.version(DISTRIBUTION)}"]
    pip += sorted({f"{n['distribution']}=={n['version']}" for n in requires.values() if n["distribution"] not in (None, DISTRIBUTION)})
    with tempfile.TemporaryDirectory() as tmp, global_tracking_uri(tracking_uri):
        (Path(tmp) / REQUIRES_FILE).write_text(json.dumps(requires))
        artifacts = {name: str(directory / name) for name in (MODEL_FILE, CONFIG_FILE, PROBLEM_FILE)}
        artifacts[REQUIRES_FILE] = str(Path(tmp) / REQUIRES_FILE)
        with mlflow.start_run(run_id=run_id):
            mlflow.pyfunc.log_model(name=MODEL_ARTIFACT, python_model=str(MODEL_CODE), artifacts=artifacts,
                                    signature=signature, input_example=example, pip_requirements=pip,
                                    metadata={"mtl_search": requires})


def log_front_models(tracking_uri: str, record: Any, registry: Any = None) -> None:
    """At a search's end: the pyfunc model of every front trial with a saved model that has none yet (a resumed search's earlier front keeps its own).

    A model that cannot be logged is a warning and a tag on its run (``mtl_search.pyfunc_error``),
    never a lost search record: the run keeps its model folder, which ``mtl-search predict`` uses.
    """
    import sys
    import traceback

    from mlflow.tracking import MlflowClient

    from ..console import quiet_artifact_downloads

    quiet_artifact_downloads()  # logging validates the input example on a downloaded copy: no progress bars in the search's output
    client = MlflowClient(tracking_uri)
    for trial in record.trials:
        if not (trial.pareto and trial.checkpoint and os.path.isdir(trial.checkpoint)) or _logged_model(client, trial.run_id):
            continue
        try:
            log_pyfunc_model(tracking_uri, trial.run_id, trial.checkpoint, registry)
        except Exception as exc:  # a plugin's model that fails on the input example
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            client.set_tag(trial.run_id, PYFUNC_ERROR, reason)
            print(f"warning: no MLflow pyfunc model for run {trial.run_id} ({reason}); `mtl-search predict` still uses its model folder\n"
                  f"{traceback.format_exc()}", file=sys.stderr)


def _logged_model(client: Any, run_id: str) -> Any:
    """The pyfunc model (MLflow logged model ``model``) of run ``run_id``, or None."""
    experiment = client.get_run(run_id).info.experiment_id
    return next((m for m in client.search_logged_models([experiment], filter_string=f"name = '{MODEL_ARTIFACT}'")
                 if m.source_run_id == run_id), None)


@contextlib.contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to ``uri`` for the block, then as it was (unset included).

    MLflow's fluent logging, and its resolution of ``runs:/<id>/model`` (the run's logged
    model), go through the global URI. ``mlflow.set_tracking_uri`` keeps it in the
    environment (``MLFLOW_TRACKING_URI``), which is therefore what is restored.
    """
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def register_model(run_id: str, name: str, tracking_uri: str) -> int:
    """Register the pyfunc model of trial run ``run_id`` in the store's Model Registry as ``name``; returns the new version.

    A bad run id, or a run without a model (only trials on the front carry one), is an MtlSearchError.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        model = _logged_model(client, run_id)
    except MlflowException:
        raise MtlSearchError(f"no run {run_id!r} in {tracking_uri}") from None
    if model is None:
        raise MtlSearchError(f"run {run_id} has no pyfunc model: only trials on the Pareto front carry one (tag mtl_search.pareto=true)")
    with global_tracking_uri(tracking_uri):
        try:
            version = mlflow.register_model(f"models:/{model.model_id}", name)
        except MlflowException as exc:
            raise MtlSearchError(f"cannot register run {run_id}'s model as {name!r}: {exc.message}") from None
    return int(version.version)
