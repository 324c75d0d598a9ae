"""Everything a search checks before Ray starts: plugins, the data set, the space against both, and preflight checks.

``prepare`` is what ``mtl-search validate`` runs and what a search runs first, so whatever it
refuses never reaches a trial. Besides the space's names and ranges (``space.resolve``) it
checks what only the data and the plugins' code can tell:

- every binary task whose metric is AUC has both classes labelled in its validation and
  test splits (else its AUC is undefined, no trial reaches the front and the search ends
  with an empty front); a class with fewer than ``FEW_ROWS`` labelled rows in a split is
  printed as a warning (its metric there rests on a handful of rows);
- every strategy builds, at the smallest configuration its ranges allow, on the space's
  backbone and data, and one forward pass on a few rows gives a prediction per task
  (a broken plugin, or a combination of ranges no trial could build, is named here rather
  than failing every trial).

It also standardises every regression target with its training split's statistics
(unless the space says ``tasks.<name>.scale: false``), so every trial, reference and
strategy trains on the same scale (:func:`~mtl_search.data.dataset.standardize_targets`).

Independent errors are reported together (:class:`~mtl_search.errors.SpaceErrors`).
This module imports neither Ray nor MLflow.
"""
from __future__ import annotations

import traceback

from ..config import TrialConfig
from ..console import warn
from ..data.dataset import Dataset, apply_funnel_masks, standardize_targets
from ..data.tables import load_table
from ..errors import ErrorCollector, SpaceError, did_you_mean
from ..registry import Registry, load_registry
from .space import Plan, Space, resolve, unscaled_tasks

PREFLIGHT_ROWS = 4  # rows of the training split the build check runs its forward pass on
NEEDS_BOTH_CLASSES = ("auc",)  # binary metrics undefined on a split holding one class
FEW_ROWS = 5  # a class with fewer labelled rows than this in a split is warned about


def build_dataset(space: Space, registry: Registry) -> Dataset:
    """Build the space's data set (a registered one with its options, or the user's table); bad input is a SpaceError."""
    if space.table is not None:
        return load_table(space.table, space.tasks)
    entry = registry.lookup("datasets", space.dataset, "data.dataset")
    errors = ErrorCollector()
    for key in space.dataset_options:
        if key not in entry.options:
            errors.add(SpaceError(f"data.options.{key}", f"unknown option of data set {space.dataset!r}; {did_you_mean(key, entry.options)}"))
    errors.raise_if_any()
    try:
        return entry.factory(**{**entry.options, **space.dataset_options})
    except (ValueError, TypeError) as exc:
        raise SpaceError("data.options", f"data set {space.dataset!r} rejected its options: {exc}") from None


def prepare(space: Space, registry: Registry | None = None) -> tuple[Plan, Dataset, Registry]:
    """Load plugins, build the data set, check the whole space against both, then run the preflight checks."""
    registry = registry or load_registry(space.plugins, space.base_dir)
    errors = ErrorCollector()
    for info in registry.plugins:
        if info.error and info.source == "space":
            errors.add(SpaceError("plugins", f"plugin {info.name!r} could not be loaded: {info.error}"))
    errors.raise_if_any()
    dataset = build_dataset(space, registry)
    plan = resolve(space, registry, dataset.problem)
    dataset.problem = plan.problem
    apply_funnel_masks(dataset)  # a funnel task's label is masked where its parent is negative, for every strategy
    standardize_targets(dataset, unscaled_tasks(space))  # after the funnel masks: statistics of the labelled rows only
    plan.problem = dataset.problem
    warn_few_rows(plan, dataset)
    with errors.section():
        check_class_counts(plan, dataset)
    with errors.section():
        check_builds(plan, dataset)
    if space.search.sampler == "grid":
        from .sampling import grid_space  # imports Optuna: only for the grid sampler

        with errors.section():
            grid_space(plan)  # a continuous knob is a SpaceError before anything runs
    errors.raise_if_any()
    return plan, dataset, registry


def class_counts(dataset: Dataset, task: str) -> dict[str, dict[int, int]]:
    """``{split: {class: labelled rows}}`` of a binary or multiclass task."""
    import torch

    counts = {}
    for name, split in (("train", dataset.train), ("val", dataset.val), ("test", dataset.test)):
        y = split.y[task].view(-1)
        mask = split.labelled(task)
        if mask is not None:
            y = y[mask.view(-1).bool()]
        values, n = torch.unique(y.long(), return_counts=True)
        counts[name] = {int(v): int(c) for v, c in zip(values, n)}
    return counts


def warn_few_rows(plan: Plan, dataset: Dataset) -> None:
    """Print a warning for each class of a binary or multiclass task with fewer than ``FEW_ROWS`` labelled rows in some split."""
    for task in plan.problem.tasks:
        if task.kind == "regression":
            continue
        counts = class_counts(dataset, task.name)
        classes = range(task.classes if task.kind == "multiclass" else 2)
        few = [c for c in classes if any(counts[s].get(c, 0) < FEW_ROWS for s in counts)]
        if few:
            shown = "; ".join(f"class {c}: " + ", ".join(f"{counts[s].get(c, 0)} in {s}" for s in counts) for c in few)
            warn(f"tasks.{task.name}: fewer than {FEW_ROWS} labelled rows of a class in a split ({shown}); "
                 "its metric on that split rests on a handful of rows")


def check_class_counts(plan: Plan, dataset: Dataset) -> None:
    """Refuse a binary task whose validation or test split holds fewer than two classes when its metric needs both."""
    errors = ErrorCollector()
    for task in plan.problem.tasks:
        if task.kind != "binary" or task.metric not in NEEDS_BOTH_CLASSES:
            continue
        counts = class_counts(dataset, task.name)
        for split in ("val", "test"):
            present = counts[split]
            if len(present) >= 2:
                continue
            held = ", ".join(f"class {c}: {n}" for c, n in sorted(present.items())) or "no labelled rows"
            shown = "; ".join(f"{s} " + (", ".join(f"{c}: {n}" for c, n in sorted(v.items())) or "none") for s, v in counts.items())
            errors.add(SpaceError(
                f"tasks.{task.name}",
                f"binary task {task.name!r}: its {split} split holds one class ({held}; labelled rows per class: {shown}), "
                f"so its {task.metric.upper()} is undefined and no trial could reach the front. Use a stratified split "
                f"(data: {{split: {{stratify: {task.name}}}}} for a table), more rows, or another metric "
                f"(tasks: {{{task.name}: {{metric: logloss}}}} or accuracy)",
            ))
    errors.raise_if_any()


def check_builds(plan: Plan, dataset: Dataset) -> None:
    """Build each strategy once at its smallest configuration and run one forward pass on a few training rows.

    A build or forward pass that raises, or a forward pass that does not return one
    prediction per task, is a SpaceError at ``strategies.<name>`` naming the values tried.
    """
    import torch

    from .setup import build_model

    errors = ErrorCollector()
    x = dataset.train.x[:PREFLIGHT_ROWS]
    for name, (strategy, _) in plan.strategies.items():
        where = f"strategies.{name}"
        try:
            knobs, backbone, inputs = plan.smallest_configuration(name)
        except Exception as exc:  # a backbone kind that cannot build its own smallest values
            errors.add(SpaceError("backbone", f"backbone kind {plan.backbone_kind.name!r} failed to build at its smallest values: {_last_line(exc)}"))
            break
        tried = ", ".join(f"{k}={v!r}" for k, v in {**{f"backbone.{k}": v for k, v in backbone.items()}, **knobs}.items())
        try:
            with torch.no_grad():
                model = build_model(plan.problem, strategy, plan.backbone_kind,
                                    TrialConfig(name, knobs=dict(knobs), backbone=backbone, inputs=inputs))
                model.eval()
                out = model(x)
        except Exception as exc:
            errors.add(SpaceError(where, f"strategy {name!r} failed to build and run at the smallest configuration of its ranges "
                                         f"({tried}): {_last_line(exc)} (raised in {_origin(exc)})"))
            continue
        if not isinstance(out, dict) or sorted(out) != sorted(plan.problem.task_names):
            got = sorted(out) if isinstance(out, dict) else type(out).__name__
            errors.add(SpaceError(where, f"strategy {name!r}: forward must return one prediction per task "
                                         f"{plan.problem.task_names}, got {got} ({tried})"))
    errors.raise_if_any()


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1]}" if text else type(exc).__name__


def _origin(exc: BaseException) -> str:
    """``file:line`` of the innermost frame that raised ``exc``."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
