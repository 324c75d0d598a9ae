"""The GBDT comparison row (``baseline: {gbdt: true}``): HGB per task on the user's table, beside the front."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import tiny_space
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import accuracy_score, mean_squared_error, roc_auc_score

from mtl_search.cli import main
from mtl_search.search import gbdt as gbdt_module
from mtl_search.search.gbdt import GBDT_SETTINGS, train_gbdt
from mtl_search.search.prepare import prepare
from mtl_search.search.space import load_space

ROWS = 300
SPACE = """
experiment: gbdt_table
data:
  csv: t.csv
  split_column: part
tasks:
  r: {kind: regression, metric: mse}
  b: {kind: binary, metric: auc, weight_column: w}
  c: {kind: binary, metric: auc, after: b}
  m: {kind: multiclass, metric: accuracy}
backbone: {kind: mlp, depth: 1, width: 8}
strategies:
  hard_sharing: {}
training: {epochs: 1, batch_size: 64, lr: 0.01}
search: {trials: 1, concurrency: 1, seed: 3}
baseline: {gbdt: true}
"""


def _columns() -> dict[str, list]:
    """Numeric x1, x2 on a 1/8 grid (exact in float32; x1 partly missing), categorical cat (text, partly missing),
    a split column, four targets with missing labels (c only meaningful where b is 1) and b's weights."""
    rng = np.random.default_rng(0)
    x1 = rng.integers(-16, 17, ROWS) / 8
    x2 = rng.integers(-16, 17, ROWS) / 8
    cat = rng.choice(["north", "east", "south", "west"], ROWS)
    noise = rng.normal(size=(4, ROWS))
    r = np.round((x1 + 2 * (cat == "north") + noise[0]) * 8) / 8
    b = (x2 + (cat == "east") + noise[1] > 0.3).astype(int)
    c = np.where(b == 1, (x1 + noise[2] > 0).astype(int), 0)
    m = np.select([x1 + noise[3] < -0.5, x1 + noise[3] < 0.5], ["lo", "mid"], "hi")
    return {
        "x1": [None if i % 9 == 4 else float(v) for i, v in enumerate(x1)],
        "x2": [float(v) for v in x2],
        "cat": [None if i % 11 == 5 else str(v) for i, v in enumerate(cat)],
        "part": [("train", "train", "train", "val", "test")[i % 5] for i in range(ROWS)],
        "w": [(0.5, 1.0, 2.0)[i % 3] for i in range(ROWS)],
        "r": [None if i % 6 == 1 else float(v) for i, v in enumerate(r)],
        "b": [None if i % 10 == 7 else int(v) for i, v in enumerate(b)],
        "c": [int(v) for v in c],
        "m": [str(v) for v in m],
    }


def _write_space(directory, space: str = SPACE):
    columns = _columns()
    with open(directory / "t.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(list(columns))
        writer.writerows(["" if v is None else v for v in row] for row in zip(*columns.values()))
    path = directory / "space.yaml"
    path.write_text(space)
    return path


def _direct_fit(columns: dict[str, list], seed: int) -> dict[str, dict[str, float]]:
    """HGB fitted here on the raw columns, on the rows each task should use, and scored with scikit-learn's metrics."""
    part = np.array(columns["part"])
    vocabulary = sorted({v for v, p in zip(columns["cat"], part) if v is not None and p == "train"})
    cat = np.array([vocabulary.index(v) if v in vocabulary else np.nan for v in columns["cat"]])
    x = np.column_stack([np.array([np.nan if v is None else v for v in columns["x1"]]), np.array(columns["x2"]), cat])
    b = np.array([-1 if v is None else v for v in columns["b"]])
    labels = {
        "r": (np.array([np.nan if v is None else v for v in columns["r"]]), np.array([v is not None for v in columns["r"]])),
        "b": (b, b >= 0),
        "c": (np.array(columns["c"]), b == 1),  # a funnel task: only where its parent is positive
        "m": (np.array([["hi", "lo", "mid"].index(v) for v in columns["m"]]), np.ones(ROWS, bool)),
    }
    weights = np.array(columns["w"])
    out: dict[str, dict[str, float]] = {"val": {}, "test": {}}
    for task, (y, labelled) in labels.items():
        rows = {split: (part == split) & labelled for split in ("train", "val", "test")}
        w = (lambda s: weights[rows[s]]) if task == "b" else (lambda s: None)
        model_type = HistGradientBoostingRegressor if task == "r" else HistGradientBoostingClassifier
        model = model_type(**GBDT_SETTINGS, categorical_features=[False, False, True], random_state=seed)
        model.fit(x[rows["train"]], y[rows["train"]], sample_weight=w("train"),
                  X_val=x[rows["val"]], y_val=y[rows["val"]], sample_weight_val=w("val"))
        for split in ("val", "test"):
            xs, ys = x[rows[split]], y[rows[split]]
            if task == "r":
                value = mean_squared_error(ys, model.predict(xs))
            elif task == "m":
                value = accuracy_score(ys, model.predict(xs))
            else:
                value = roc_auc_score(ys, model.decision_function(xs), sample_weight=w(split))
            out[split][task] = float(value)
    return out


def test_gbdt_row_is_hgb_per_task_on_the_labelled_rows_with_native_categories(tmp_path):
    plan, dataset, _ = prepare(load_space(_write_space(tmp_path)))
    assert dataset.problem.features.names == ["x1", "x2", "cat"] and len(dataset.val.mask["c"]) == len(dataset.val)
    row = train_gbdt(dataset, seed=3)
    expected = _direct_fit(_columns(), seed=3)
    for split in ("val", "test"):
        assert set(row[split]) == {"r", "b", "c", "m"}
        for task, value in expected[split].items():
            assert row[split][task] == pytest.approx(value, rel=1e-6, abs=1e-9), (split, task)
    assert row["seconds"] > 0


def test_gbdt_on_a_data_set_that_is_not_a_table_is_refused(tmp_path, capsys):
    path = tiny_space(tmp_path, extra="baseline: {gbdt: true}")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "baseline.gbdt" in err and "not one" in err and "Traceback" not in err


def test_each_trial_gains_over_the_gbdt_row_in_json_tables_and_summary():
    from mtl_search.record import Objective, TrialRecord
    from mtl_search.results.records import SearchRecord, final_summary, format_table, gbdt_row, trial_table

    trial = TrialRecord(0, "run0", "mmoe", {}, "finished", val={"r": 0.5, "b": 0.9}, test={"r": 0.8, "b": 0.6}, pareto=True)
    failed = TrialRecord(1, "run1", "mmoe", {}, "failed")
    row = {"val": {"r": 0.4, "b": 0.75}, "test": {"r": 1.0, "b": 0.8}, "seconds": 0.1}
    record = SearchRecord("e", "s", [Objective("r", "val/r", "min"), Objective("b", "val/b", "max")], [trial, failed],
                          task_metrics={"r": "mse", "b": "auc"}, gbdt=row)
    data = record.to_json()
    assert data["gbdt"] == row and "gbdt_gains" not in data["trials"][1]
    assert data["trials"][0]["gbdt_gains"] == pytest.approx({"r": -25.0, "b": 20.0})  # mse 0.5 vs 0.4: 25 % worse
    assert data["trials"][0]["gbdt_test_gains"] == pytest.approx({"r": 20.0, "b": -25.0})
    assert trial_table(record)[0]["gbdt_gain/b"] == pytest.approx(20.0)
    table = format_table(trial_table(record) + gbdt_row(record), task_metrics=record.task_metrics)
    assert "b vs gbdt %" in table and "hist_gradient_boosting" in table
    summary = final_summary(record)
    assert "hist_gradient_boosting" in summary and "r vs gbdt %" in summary and "-25.00" in summary


def test_on_resume_the_recorded_row_is_read_back_not_fitted_again(tmp_path, monkeypatch):
    plan, dataset, _ = prepare(load_space(_write_space(tmp_path)))
    recorded = {"val": {t: 0.5 for t in plan.problem.task_names}, "test": {t: 0.25 for t in plan.problem.task_names}, "seconds": 1.0}

    class Tracker:
        logged: list = []

        def load_gbdt(self, run_id):
            return recorded if run_id == "search" else None

        def log_gbdt(self, run_id, row):
            self.logged.append(row)

    def refit(*args, **kwargs):
        raise AssertionError("fitted again")

    monkeypatch.setattr(gbdt_module, "train_gbdt", refit)
    assert gbdt_module.search_gbdt(plan, dataset, Tracker(), "search", True, lambda line: None) is recorded
    assert Tracker.logged == []
    with pytest.raises(AssertionError, match="fitted again"):  # a search run without the row: fitted (and recorded)
        gbdt_module.search_gbdt(plan, dataset, Tracker(), "other", True, lambda line: None)
