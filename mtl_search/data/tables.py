"""The user's own table (CSV or Parquet) as a Dataset: column projection, feature types, labels, masks, splits.

Read with pyarrow, projected onto the columns in use. Features become one float tensor per
split, laid out as :class:`TableFeatures` describes: numeric columns first (raw values, NaN
where missing), then categorical columns as integer codes (0 = missing or unseen). The
statistics used for standardisation, imputation and category vocabularies are computed on
the training split only and travel with the Problem into the model's input layer
(:mod:`mtl_search.nn.inputs`), so they are saved with the model and applied at prediction.

Every problem with the data is a ``SpaceError`` naming the key of the space that points
at it, raised before any trial starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import ErrorCollector, MtlSearchError, SpaceError
from .dataset import Dataset, Split, apply_funnel_masks
from .features import (
    CategoricalFeature,
    NumericFeature,
    TableFeatures,
    as_float,
    as_text,
    category_codes,
)
from .problem import Problem, Task

SPLIT_NAMES = ("train", "val", "test")
TABLE_FORMATS = ("csv", "parquet")


@dataclass
class SplitSpec:
    """Random (optionally stratified on one classification task) fractions, or a column naming each row's split."""

    val: float = 0.15
    test: float = 0.15
    seed: int = 0
    stratify: str | None = None


@dataclass
class TableSpec:
    """The ``data:`` section of a space that names a table. ``path`` is already resolved against the space file."""

    format: str
    path: Path
    features: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    numeric: list[str] = field(default_factory=list)
    max_integer_levels: int = 10
    split: SplitSpec = field(default_factory=SplitSpec)
    split_column: str | None = None
    group_column: str | None = None


def load_table(spec: TableSpec, tasks: dict[str, dict[str, Any]]) -> Dataset:
    """Read the table, check it, and build the Dataset (labels, masks, splits, feature layout)."""
    key = f"data.{spec.format}"
    columns = _column_names(spec, key)
    _check_columns(spec, tasks, columns)
    weight_columns = {name: t["weight_column"] for name, t in tasks.items() if t.get("weight_column")}
    feature_names = spec.features if spec.features is not None else [
        c for c in columns if c not in tasks and c not in spec.exclude and c not in (spec.split_column, spec.group_column)
        and c not in weight_columns.values()
    ]
    if not feature_names:
        raise SpaceError("data.features", "no feature columns left after removing the targets and excluded columns")
    extra = [c for c in (spec.split_column, spec.group_column, *weight_columns.values()) if c]
    table = _read(spec, list(dict.fromkeys([*feature_names, *tasks, *extra])), key)
    if table.num_rows < 3:
        raise SpaceError(key, f"{spec.path} has {table.num_rows} rows; at least 3 are needed for train/val/test")

    _check_features(table, feature_names, key)
    labels = {name: _labels(name, t, table.column(name)) for name, t in tasks.items()}
    rows = _split_rows(spec, table, labels)
    for name, (_, mask, _) in labels.items():
        for split, index in zip(SPLIT_NAMES, rows):
            if not bool(mask[index].any()):
                raise SpaceError(f"tasks.{name}", f"no labelled rows in the {split} split "
                                 f"({int(mask.sum())} labelled rows in the whole table); label more rows or change data.split")

    train = rows[0]
    numeric, categorical = _feature_types(spec, table, feature_names)
    features = TableFeatures(
        tuple(_numeric_feature(name, as_float(table.column(name))[train]) for name in numeric),
        tuple(CategoricalFeature(name, _vocabulary(table.column(name).take(train))) for name in categorical),
    )
    x = features.encode(table)
    problem = Problem((features.width,), tuple(task for _, _, task in labels.values()), features=features)
    y = {name: target for name, (target, _, _) in labels.items()}
    masks = {name: torch.from_numpy(mask) for name, (_, mask, _) in labels.items() if not bool(mask.all())}
    weights = {name: sample_weights(column, table.column(column), f"tasks.{name}.weight_column") for name, column in weight_columns.items()}
    full = Split(x, y, masks, weights)
    return apply_funnel_masks(Dataset(problem, *(full.subset(torch.from_numpy(index)) for index in rows)))


def _column_names(spec: TableSpec, key: str) -> list[str]:
    if not spec.path.is_file():
        raise SpaceError(key, f"no such file: {spec.path}")
    try:
        if spec.format == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(spec.path).names)
        import csv

        with open(spec.path, newline="", encoding="utf-8-sig") as fh:  # a byte-order mark is not part of the first name
            header = next(csv.reader(fh), None)
    except Exception as exc:  # a corrupt file: say which and why
        raise SpaceError(key, f"cannot read {spec.path} as {spec.format}: {exc}") from None
    if not header:
        raise SpaceError(key, f"{spec.path} is empty (no header row)")
    return header


def _check_columns(spec: TableSpec, tasks: dict[str, dict[str, Any]], columns: list[str]) -> None:
    known = set(columns)

    def check(names: list[str], path: str) -> None:
        for name in names:
            if name not in known:
                raise SpaceError(path, f"unknown column {name!r}; columns of {spec.path.name}: {', '.join(columns)}")

    if not tasks:
        raise SpaceError("tasks", "a table needs tasks: {column: {kind: regression|binary|multiclass, metric: ...}}")
    for name, task in tasks.items():
        check([name], f"tasks.{name}")
        if "kind" not in task:
            raise SpaceError(f"tasks.{name}.kind", "missing; a task of a table needs a kind (regression, binary or multiclass)")
        if task.get("weight_column"):
            check([task["weight_column"]], f"tasks.{name}.weight_column")
            if task["weight_column"] in tasks or task["weight_column"] in (spec.features or []):
                raise SpaceError(f"tasks.{name}.weight_column", f"column {task['weight_column']!r} is a target or a feature; "
                                 "a weight column holds only the rows' weights")
    check(spec.features or [], "data.features")
    check(spec.exclude, "data.exclude")
    check(spec.categorical, "data.categorical")
    check(spec.numeric, "data.numeric")
    for path, column in (("data.split_column", spec.split_column), ("data.group_column", spec.group_column)):
        if column:
            check([column], path)
    for name in spec.features or []:
        if name in tasks:
            raise SpaceError("data.features", f"{name!r} is a task's target and cannot also be a feature")
    if spec.split.stratify is not None:
        if spec.split.stratify not in tasks:
            raise SpaceError("data.split.stratify", f"unknown task {spec.split.stratify!r}; tasks: {', '.join(tasks)}")
        if tasks[spec.split.stratify].get("kind") == "regression":
            raise SpaceError("data.split.stratify", "stratify on a binary or multiclass task, not a regression one")


def _read(spec: TableSpec, columns: list[str], key: str) -> Any:
    try:
        if spec.format == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(spec.path, columns=columns)
        import pyarrow.csv as pcsv

        return pcsv.read_csv(spec.path, convert_options=pcsv.ConvertOptions(include_columns=columns, strings_can_be_null=True))
    except Exception as exc:
        raise SpaceError(key, f"cannot read {spec.path}: {exc}") from None


def _is_numeric(arrow_type: Any) -> bool:
    import pyarrow.types as pt

    return pt.is_integer(arrow_type) or pt.is_floating(arrow_type) or pt.is_boolean(arrow_type) or pt.is_decimal(arrow_type)




def _present(column: Any) -> np.ndarray:
    """True where a value is present (not null, not NaN)."""
    present = column.is_valid().to_numpy()
    if _is_numeric(column.type):
        present &= ~np.isnan(as_float(column))
    return present


def _infinite(name: str, column: Any) -> str | None:
    """What is wrong with a numeric column holding inf or -inf (a count of rows and the first one), or None."""
    if not _is_numeric(column.type):
        return None
    bad = np.flatnonzero(np.isinf(as_float(column)))
    if not bad.size:
        return None
    return (f"column {name!r} holds {bad.size} non-finite value{'s' if bad.size > 1 else ''} (inf or -inf; first in data row "
            f"{int(bad[0]) + 1}); replace them with numbers, or leave the cells blank to mark them missing")


def _check_features(table: Any, names: list[str], key: str) -> None:
    """Refuse feature columns with no value at all, or numbers that are not finite; every bad column is named."""
    errors = ErrorCollector()
    for name in names:
        column = table.column(name)
        if not _present(column).any():
            errors.add(SpaceError(key, f"feature column {name!r} has no values (all {table.num_rows} rows are empty); "
                                       f"leave it out with data.exclude: [{name}]"))
        elif (problem := _infinite(name, column)) is not None:
            errors.add(SpaceError(key, f"feature {problem}"))
    errors.raise_if_any()


def _labels(name: str, task: dict[str, Any], column: Any) -> tuple[torch.Tensor, np.ndarray, Task]:
    """The target tensor, the mask of labelled rows and the Task (classes inferred) of one target column."""
    kind = task["kind"]
    if (problem := _infinite(name, column)) is not None:
        raise SpaceError(f"tasks.{name}", f"target {problem}")
    present = _present(column)
    if not present.any():
        raise SpaceError(f"tasks.{name}", f"column {name!r} has no labels (every value is empty)")
    if kind == "regression":
        if not _is_numeric(column.type):
            example = next((repr(v) for v in column.drop_null().to_pylist() if not _parses_as_number(v)), f"{column.type} values")
            raise SpaceError(f"tasks.{name}", f"a regression target needs numbers; column {name!r} holds {example}")
        values = np.nan_to_num(as_float(column), nan=0.0)
        return torch.from_numpy(values.astype(np.float32)), present, Task(name, kind, task.get("metric", ""), after=task.get("after"))
    classes = _vocabulary(column)
    if len(classes) < 2:
        raise SpaceError(f"tasks.{name}", f"target {name!r} has one class ({classes[0]!r}); a {kind} task needs at least two")
    if kind == "binary" and len(classes) > 2:
        raise SpaceError(f"tasks.{name}", f"a binary target has two classes; {name!r} has {len(classes)} "
                         f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}); use kind: multiclass")
    if "classes" in task and int(task["classes"]) != len(classes):
        raise SpaceError(f"tasks.{name}.classes", f"the data has {len(classes)} classes ({', '.join(classes)}), not {task['classes']}")
    if kind == "binary":  # class 1, whose probability the model gives: tasks.<name>.positive, else the last in sorted order
        positive = str(task.get("positive", classes[-1]))
        if positive not in classes:
            raise SpaceError(f"tasks.{name}.positive", f"{positive!r} is not a value of column {name!r}; its values: {', '.join(classes)}")
        classes = (*(c for c in classes if c != positive), positive)
    codes = category_codes(column, classes) - 1  # -1 where missing
    target = torch.from_numpy(np.where(present, codes, 0).astype(np.int64))
    return target, present, Task(name, kind, task.get("metric", ""), len(classes) if kind == "multiclass" else 0, task.get("after"), labels=classes)


def sample_weights(name: str, column: Any, path: str) -> torch.Tensor:
    """The per-row weights in ``column``: non-negative numbers, a missing value weighs 1.

    A non-numeric or negative (or infinite) value is a ``SpaceError`` at ``path`` naming the column.
    """
    if not _is_numeric(column.type):
        example = next((repr(v) for v in column.drop_null().to_pylist() if not _parses_as_number(v)), f"{column.type} values")
        raise SpaceError(path, f"a weight column needs numbers; column {name!r} holds {example}")
    values = as_float(column)
    values = np.where(np.isnan(values), 1.0, values)  # a missing weight is 1
    bad = np.flatnonzero((values < 0) | ~np.isfinite(values))
    if bad.size:
        raise SpaceError(path, f"weights must be finite and >= 0; column {name!r} holds {values[bad[0]]!r} "
                         f"(row {int(bad[0]) + 1}, {bad.size} such rows)")
    return torch.from_numpy(values.astype(np.float32))


def _parses_as_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True




def _vocabulary(column: Any) -> tuple[str, ...]:
    """The distinct present values as text, sorted (numbers numerically)."""
    import pyarrow.compute as pc

    values = pc.unique(column.drop_null()).to_pylist()
    values = [v for v in values if not (isinstance(v, float) and np.isnan(v))]
    return tuple(str(v) for v in sorted(values))




def _feature_types(spec: TableSpec, table: Any, names: list[str]) -> tuple[list[str], list[str]]:
    """Numeric and categorical feature names: strings/booleans and integers with few levels are categorical."""
    import pyarrow.compute as pc
    import pyarrow.types as pt

    numeric, categorical = [], []
    for name in names:
        column = table.column(name)
        if name in spec.numeric:
            if not _is_numeric(column.type):
                raise SpaceError("data.numeric", f"column {name!r} is listed as numeric but holds {column.type} values")
            numeric.append(name)
        elif name in spec.categorical or not _is_numeric(column.type) or pt.is_boolean(column.type) or (
            pt.is_integer(column.type) and pc.count_distinct(column).as_py() <= spec.max_integer_levels
        ):
            categorical.append(name)
        else:
            numeric.append(name)
    return numeric, categorical


def _numeric_feature(name: str, train_values: np.ndarray) -> NumericFeature:
    present = train_values[~np.isnan(train_values)]
    mean = float(present.mean()) if present.size else 0.0
    std = float(present.std()) if present.size else 1.0
    return NumericFeature(name, mean, std if std > 1e-12 else 1.0, bool(present.size < train_values.size))


def _split_rows(spec: TableSpec, table: Any, labels: dict[str, tuple[torch.Tensor, np.ndarray, Task]]) -> tuple[np.ndarray, ...]:
    """Row indices of train, val and test."""
    if spec.split_column:
        return _rows_from_column(spec.split_column, table.column(spec.split_column))
    split = spec.split
    rng = np.random.default_rng(split.seed)
    if spec.group_column:
        return _group_split(table.column(spec.group_column), split, rng)
    if split.stratify:
        target, present, _ = labels[split.stratify]
        strata = np.where(present, target.numpy(), -1)  # unlabelled rows form their own stratum
    else:
        strata = np.zeros(table.num_rows, dtype=np.int64)
    parts: list[list[np.ndarray]] = [[], [], []]
    for stratum in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == stratum))
        n_val, n_test = round(len(members) * split.val), round(len(members) * split.test)
        parts[1].append(members[:n_val])
        parts[2].append(members[n_val : n_val + n_test])
        parts[0].append(members[n_val + n_test :])
    rows = tuple(np.sort(np.concatenate(p)) for p in parts)
    _check_nonempty(rows, "data.split")
    return rows


def _group_split(groups: Any, split: SplitSpec, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Whole groups go to one split each, in a shuffled order, until each split holds its fraction of the rows."""
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(as_text(groups.combine_chunks())).indices
    group_of_row = pc.fill_null(encoded, -1).to_numpy().astype(np.int64)
    if (group_of_row < 0).any():
        raise SpaceError("data.group_column", f"{int((group_of_row < 0).sum())} rows have no group value")
    sizes = np.bincount(group_of_row)
    order = rng.permutation(len(sizes))
    ends = np.cumsum(sizes[order]) / len(group_of_row)  # fraction of rows up to and including each group
    position = np.empty(len(sizes), dtype=np.int64)
    position[order] = np.arange(len(sizes))
    split_of_group = np.where(ends[position] <= split.val + 1e-12, 1, np.where(ends[position] <= split.val + split.test + 1e-12, 2, 0))
    split_of_row = split_of_group[group_of_row]
    rows = tuple(np.flatnonzero(split_of_row == s) for s in range(3))
    _check_nonempty(rows, "data.group_column", f" ({len(sizes)} groups; a split needs at least one whole group)")
    return rows


def _rows_from_column(name: str, column: Any) -> tuple[np.ndarray, ...]:
    values = np.array(as_text(column).to_pylist(), dtype=object)
    unknown = sorted({str(v) for v in values if v not in SPLIT_NAMES})
    if unknown:
        raise SpaceError("data.split_column", f"column {name!r} must hold train, val or test; it holds {', '.join(unknown[:5])}")
    rows = tuple(np.flatnonzero(values == s) for s in SPLIT_NAMES)
    _check_nonempty(rows, "data.split_column")
    return rows


def _check_nonempty(rows: tuple[np.ndarray, ...], path: str, hint: str = "") -> None:
    for split, index in zip(SPLIT_NAMES, rows):
        if len(index) == 0:
            raise SpaceError(path, f"the {split} split is empty{hint}")


def describe_columns(problem: Problem, train_x: torch.Tensor | None = None) -> list[str]:
    """One line per column in use: its role (feature or target) and the type inferred or set (what ``validate`` prints).

    With the training split's ``x``, a feature holding one value there (blanks aside) is flagged constant.
    """
    lines = []
    if problem.features is not None:
        features = problem.features
        described = [f"{f.name}: feature, numeric" for f in features.numeric]
        for f in features.categorical:
            numbers = all(_parses_as_number(c) for c in f.categories)  # an integer column with few levels
            described.append(f"{f.name}: feature, categorical ({len(f.categories)} values: {_listed(f.categories)})"
                             + (f"; data.numeric: [{f.name}] reads it as a number" if numbers else ""))
        for j, (name, line) in enumerate(zip(features.names, described)):
            values = train_x[:, j][~torch.isnan(train_x[:, j])] if train_x is not None else None
            constant = values is not None and len(torch.unique(values)) <= 1
            lines.append(line + (f"; warning: constant in the training rows, it carries no information "
                                 f"(data.exclude: [{name}] leaves it out)" if constant else ""))
    for task in problem.tasks:
        line = f"{task.name}: target, {task.kind} ({task.metric})"
        if task.kind == "binary" and task.labels:
            line += f"; positive class (1): {task.labels[1]!r}, negative (0): {task.labels[0]!r} (tasks.{task.name}.positive sets it)"
        elif task.labels:
            line += f"; classes: {_listed(task.labels)}"
        lines.append(line)
    return lines


def _listed(values: tuple[str, ...], most: int = 5) -> str:
    return ", ".join(repr(v) for v in values[:most]) + (", ..." if len(values) > most else "")


def read_feature_columns(path: Path, features: TableFeatures, warn: Callable[[str], None] = lambda line: None) -> torch.Tensor:
    """The raw ``x`` of the rows of a CSV or Parquet file, laid out as ``features`` says (for prediction).

    Columns are found by name (others are ignored); blanks are missing values; a blank or a
    category not seen in training gets the unknown code (0), counted per column in one
    ``warn`` line. A missing column or a text value in a numeric column is an error naming the column.
    """
    import pyarrow as pa

    path = Path(path)
    parquet = path.suffix.lower() in (".parquet", ".pq")
    try:
        if parquet:
            import pyarrow.parquet as pq

            columns = list(pq.read_schema(path).names)
        else:
            import csv

            with open(path, newline="", encoding="utf-8-sig") as fh:  # pyarrow skips a byte-order mark too
                columns = next(csv.reader(fh), [])
        missing = [n for n in features.names if n not in columns]
        if missing:
            raise MtlSearchError(f"{path}: the model reads columns {', '.join(missing)}, which the file lacks "
                                 f"(the model's features: {', '.join(features.names)})")
        if parquet:
            table = pq.read_table(path, columns=features.names)
        else:
            import pyarrow.csv as pcsv

            # categorical columns are read as text, so codes match the training vocabulary whatever pyarrow would infer
            table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
                include_columns=features.names, column_types={f.name: pa.string() for f in features.categorical},
                strings_can_be_null=True))
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise MtlSearchError(f"{path}: cannot read the feature columns: {exc}") from None
    for feature in features.numeric:
        try:
            as_float(table.column(feature.name))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise MtlSearchError(f"{path}: column {feature.name!r} is numeric in the model; it holds text") from None
    x = features.encode(table)
    for j, feature in enumerate(features.categorical):
        unknown = x[:, len(features.numeric) + j] == 0
        if bool(unknown.any()):
            column = table.column(feature.name)
            blank = int(column.null_count)
            unseen = sorted({str(v) for v, u in zip(column.to_pylist(), unknown.tolist()) if u and v is not None})
            counts = ([f"{blank} blank"] if blank else []) + \
                ([f"{int(unknown.sum()) - blank} unseen ({_listed(tuple(unseen))})"] if unseen else [])
            warn(f"warning: column {feature.name!r}: {' and '.join(counts)} of {len(x)} rows get the unknown category, "
                 f"as blanks did in training; the categories the model knows: {_listed(feature.categories)}")
    return x
