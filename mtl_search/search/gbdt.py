"""The GBDT comparison row: what a tabular user would fit instead of a multi-task network.

With ``baseline: {gbdt: true}`` a search on a table fits scikit-learn's histogram gradient
boosting (``HistGradientBoostingRegressor`` for a regression task,
``HistGradientBoostingClassifier`` for a binary or multiclass one) per task, once, before the
trials, and reports its validation and test metrics beside the front with each trial's gain
over it (:func:`mtl_search.results.metrics.relative_gain`). It is a comparison, not the Δm
reference: Δm stays against the single-task networks (:mod:`.references`).

Same protocol as the trials:

- the same train / val / test rows (the Dataset's splits) and the same metric functions
  (:meth:`mtl_search.data.problem.Task.evaluate`, weighted by the task's sample weights);
- per task, only the rows with that task's label: a missing label is left out, and a funnel
  task (``after:``) sees only the rows its parent selects (the Dataset's label masks
  already say so);
- the features as the table's layout (:class:`mtl_search.data.features.TableFeatures`)
  holds them: numeric columns as their raw values with NaN where missing (HGB's own
  missing-value handling), categorical columns as native categorical features
  (``categorical_features``; a missing or unseen category is HGB's missing value). A
  categorical column of more than :data:`MAX_CATEGORIES` categories (HGB's limit) is given
  as its ordinal codes instead;
- early stopping on the validation split, on the loss (``X_val``/``y_val``, weighted), as a
  trial stops on its validation score; the other settings are :data:`GBDT_SETTINGS`
  (scikit-learn's defaults but a larger ``max_iter`` with patience ``n_iter_no_change``),
  seeded with ``search.seed``. Not tuned: one fit per task.

The result is recorded on the search run (``gbdt/val/<task>``, ``gbdt/test/<task>``,
``gbdt/seconds``) and read back on ``--resume`` instead of fitted again.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

from ..data.dataset import Dataset, Split
from ..data.features import TableFeatures
from ..data.problem import Task
from .space import Plan

GBDT_SETTINGS: dict[str, Any] = {"max_iter": 1000, "learning_rate": 0.1, "early_stopping": True, "n_iter_no_change": 20}
MAX_CATEGORIES = 255  # HistGradientBoosting's largest categorical cardinality (its max_bins)

Comparison = dict[str, Any]  # {"val": {task: metric}, "test": {task: metric}, "seconds": s}


def categorical_mask(features: TableFeatures) -> list[bool]:
    """Which columns of ``x`` HGB takes as categorical: the categorical features of at most MAX_CATEGORIES categories."""
    return [False] * len(features.numeric) + [len(f.categories) <= MAX_CATEGORIES for f in features.categorical]


def gbdt_inputs(features: TableFeatures, x: torch.Tensor) -> np.ndarray:
    """``x`` as HGB reads it: numeric values as they are, category code ``i + 1`` as ``i`` and the unknown code 0 as NaN."""
    out = x.detach().cpu().numpy().astype(np.float64, copy=True)
    codes = out[:, len(features.numeric):]
    codes[codes == 0] = np.nan
    codes -= 1
    return out


def _rows(split: Split, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The labelled rows of ``task`` in ``split``: their indices, targets and weights (None: every row weighs 1)."""
    mask = split.labelled(task)
    index = np.arange(len(split)) if mask is None else np.flatnonzero(mask.cpu().numpy())
    weight = split.weights(task)
    return index, split.y[task].reshape(-1).cpu().numpy()[index], None if weight is None else weight.cpu().numpy()[index]


def prediction(model: Any, task: Task, x: np.ndarray) -> torch.Tensor:
    """What the task's metric takes: the value (regression), the logit (binary) or one logit per class (multiclass).

    Classes missing from the training rows get a logit of minus infinity (the model never predicts them).
    """
    if task.kind == "regression":
        return torch.from_numpy(model.predict(x).astype(np.float32))
    raw = model.decision_function(x)
    classes = model.classes_.astype(np.int64)
    logits = np.full((len(x), max(2, task.classes)), -np.inf)
    if raw.ndim == 1:  # one tree per iteration: the log-odds of classes[1] against classes[0]
        logits[:, classes[0]] = 0.0
        if len(classes) > 1:
            logits[:, classes[1]] = raw
    else:
        logits[:, classes] = raw
    if task.kind == "binary":
        return torch.from_numpy((logits[:, 1] - logits[:, 0]).astype(np.float32))
    return torch.from_numpy(logits.astype(np.float32))


def fit_task(dataset: Dataset, task: Task, seed: int) -> tuple[Any, dict[str, float]]:
    """Fit one task's HGB model on its labelled training rows; returns the model and its ``{"val": m, "test": m}``."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    features = dataset.problem.features
    mask = categorical_mask(features)
    model_type = HistGradientBoostingRegressor if task.kind == "regression" else HistGradientBoostingClassifier
    model = model_type(**GBDT_SETTINGS, categorical_features=mask if any(mask) else None, random_state=seed)
    data = {name: (gbdt_inputs(features, split.x), *_rows(split, task.name))
            for name, split in (("train", dataset.train), ("val", dataset.val), ("test", dataset.test))}
    x, index, y, weight = data["train"]
    x_val, index_val, y_val, weight_val = data["val"]
    if task.kind != "regression":
        y, y_val = y.astype(np.int64), y_val.astype(np.int64)
    model.fit(x[index], y, sample_weight=weight, X_val=x_val[index_val], y_val=y_val, sample_weight_val=weight_val)
    metrics = {}
    for name in ("val", "test"):
        x_split, index_split, y_split, weight_split = data[name]
        metrics[name] = task.evaluate(prediction(model, task, x_split[index_split]), torch.from_numpy(y_split),
                                      None if weight_split is None else torch.from_numpy(weight_split))
    return model, metrics


def train_gbdt(dataset: Dataset, seed: int = 0, threads: int = 1) -> Comparison:
    """Every task's HGB model, fitted one after another with at most ``threads`` OpenMP threads (see the module docstring)."""
    from threadpoolctl import threadpool_limits

    if dataset.problem.features is None:
        raise ValueError("the GBDT comparison needs a table (a Problem with features)")
    out: Comparison = {"val": {}, "test": {}}
    start = time.perf_counter()
    with threadpool_limits(limits=max(1, threads), user_api="openmp"):
        for task in dataset.problem.tasks:
            _, metrics = fit_task(dataset, task, seed)
            out["val"][task.name], out["test"][task.name] = float(metrics["val"]), float(metrics["test"])
    out["seconds"] = time.perf_counter() - start
    return out


def search_gbdt(plan: Plan, dataset: Dataset, tracker: Any, search_run_id: str, resume: bool,
                echo: Callable[[str], None] = print) -> Comparison | None:
    """The search's GBDT row: none unless ``baseline.gbdt``; on resume, the one the search run recorded; else fitted and recorded."""
    space = plan.space
    if not space.baseline.gbdt:
        return None
    if resume:
        found = tracker.load_gbdt(search_run_id)
        if found and set(found.get("val", {})) == set(plan.problem.task_names):
            return found
    comparison = train_gbdt(dataset, space.search.seed, int(space.ray.cpus_per_trial))
    metric = {t.name: t.metric for t in plan.problem.tasks}
    echo("GBDT comparison (HistGradientBoosting per task): " + "; ".join(
        f"{task} {metric[task]} val {comparison['val'][task]:.4g}, test {comparison['test'][task]:.4g}" for task in plan.problem.task_names)
        + f" ({comparison['seconds']:.1f}s)")
    tracker.log_gbdt(search_run_id, comparison)
    return comparison
