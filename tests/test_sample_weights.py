"""Per-task sample weights: the weighted loss and metrics equal a hand computation; weight-0 rows count for nothing; table columns."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
import torch
import torch.nn.functional as F

from mtl_search import (
    Dataset,
    Problem,
    SpaceError,
    Split,
    Task,
    TrainConfig,
    Trainer,
    task_losses,
)
from mtl_search.data.problem import binary_auc
from mtl_search.data.tables import load_table
from mtl_search.search.space import parse_space
from mtl_search.training.weighting import Equal

PROBLEM = Problem((1,), (Task("y", "regression", "mse"), Task("b", "binary", "logloss")))


def _split() -> Split:
    x = torch.arange(5.0).unsqueeze(1)
    return Split(x, {"y": torch.tensor([1.0, 2.0, 0.0, -1.0, 3.0]), "b": torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])},
                 weight={"y": torch.tensor([2.0, 1.0, 0.0, 0.5, 1.0]), "b": torch.tensor([1.0, 3.0, 0.0, 1.0, 2.0])})


def test_weighted_losses_equal_a_hand_computation_and_weight_zero_rows_count_for_nothing():
    split = _split()
    pred = {"y": torch.tensor([[0.0], [2.5], [9.0], [0.0], [1.0]]), "b": torch.tensor([[2.0], [-1.0], [5.0], [0.5], [0.0]])}
    losses = task_losses(PROBLEM, pred, split)
    squared = [1.0, 0.25, 81.0, 1.0, 4.0]
    w = [2.0, 1.0, 0.0, 0.5, 1.0]
    assert float(losses["y"]) == pytest.approx(sum(a * b for a, b in zip(w, squared)) / sum(w))
    bce = F.binary_cross_entropy_with_logits(pred["b"].view(-1), split.y["b"], reduction="none")
    wb = split.weight["b"]
    assert float(losses["b"]) == pytest.approx(float((wb * bce).sum() / wb.sum()))
    # row 2 weighs 0 for both tasks: changing its prediction and labels changes nothing
    pred2 = {k: v.clone() for k, v in pred.items()}
    pred2["y"][2], pred2["b"][2] = -50.0, -50.0
    split.y["y"][2], split.y["b"][2] = 100.0, 1.0
    again = task_losses(PROBLEM, pred2, split)
    assert float(again["y"]) == pytest.approx(float(losses["y"])) and float(again["b"]) == pytest.approx(float(losses["b"]))
    # a mask still applies on top of the weights
    split.mask["y"] = torch.tensor([True, False, True, True, True])
    masked = task_losses(PROBLEM, pred, split)
    assert float(masked["y"]) == pytest.approx((2 * 1.0 + 0.5 * 1.0 + 1 * 4.0) / 3.5)


def test_weighted_metrics_equal_a_hand_computation():
    score = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4, 0.9])
    y = torch.tensor([0, 0, 1, 1, 1, 0])
    w = torch.tensor([1.0, 2.0, 1.0, 3.0, 0.5, 0.0])
    # weighted AUC = AUC of the data set with row i repeated w_i times (integer weights: the rank statistic itself)
    doubled = torch.tensor([2.0, 4.0, 2.0, 6.0, 1.0, 0.0])
    repeats = doubled.long()
    assert binary_auc(score, y, w) == pytest.approx(binary_auc(score.repeat_interleave(repeats), y.repeat_interleave(repeats)))
    # by hand: positives (0.35, w1), (0.8, w3), (0.4, w.5); negatives (0.1, w1), (0.4, w2); (0.9, w0) ignored
    pairs = 1 * (1 * 1 + 2 * 0) + 3 * (1 * 1 + 2 * 1) + 0.5 * (1 * 1 + 2 * 0.5)
    assert binary_auc(score, y, w) == pytest.approx(pairs / (4.5 * 3.0))
    assert binary_auc(score, y, torch.ones(6)) == pytest.approx(binary_auc(score, y))
    task = Task("t", "binary", "accuracy")
    logit = torch.tensor([1.0, -1.0, 1.0, 1.0])
    target = torch.tensor([1, 1, 0, 1])
    assert task.evaluate(logit, target, torch.tensor([1.0, 2.0, 4.0, 1.0])) == pytest.approx(2 / 8)
    reg = Task("r", "regression", "mae")
    assert reg.evaluate(torch.tensor([0.0, 1.0, 5.0]), torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 0.0])) == pytest.approx(0.5)


def test_trainer_evaluation_is_weighted():
    split = _split()
    data = Dataset(PROBLEM, split, split, split)

    class Constant(torch.nn.Module):
        def forward(self, x):
            return {"y": torch.zeros(len(x), 1), "b": torch.zeros(len(x), 1)}

    evaluation = Trainer(data, TrainConfig(), Equal(PROBLEM.task_names)).evaluate(Constant(), split)
    w = split.weight["y"]
    assert evaluation.metrics["y"] == pytest.approx(float((w * split.y["y"] ** 2).sum() / w.sum()))
    assert evaluation.losses["b"] == pytest.approx(float(torch.log(torch.tensor(2.0))))  # every row's loss is log 2


def _table_space(tmp_path: Path, weights: list, tasks: dict | None = None) -> dict:
    rows = len(weights)
    rng = np.random.default_rng(0)
    pcsv.write_csv(pa.table({"a": rng.normal(size=rows), "clicked": [i % 2 for i in range(rows)], "w": weights}), tmp_path / "t.csv")
    return {"data": {"csv": str(tmp_path / "t.csv")}, "strategies": {"hard_sharing": {}},
            "tasks": tasks or {"clicked": {"kind": "binary", "weight_column": "w"}}}


def _load(space: dict):
    parsed = parse_space(space)
    return load_table(parsed.table, parsed.tasks)


def test_a_weight_column_is_read_missing_weights_are_one_and_it_is_no_feature(tmp_path):
    weights = [2.0, None, 0.0, 1.5] * 5
    data = _load(_table_space(tmp_path, weights))
    assert data.problem.features.names == ["a"]  # the weight column is not a feature
    got = torch.cat([data.train.weights("clicked"), data.val.weights("clicked"), data.test.weights("clicked")])
    assert sorted(got.tolist()) == sorted([1.0 if w is None else w for w in weights])


@pytest.mark.parametrize("weights,fragment", [
    ([1.0, -0.5, 1.0, 2.0] * 5, "-0.5"),
    (["1", "heavy", "2", "1"] * 5, "'heavy'"),
])
def test_a_negative_or_non_numeric_weight_is_an_error_naming_the_column(tmp_path, weights, fragment):
    with pytest.raises(SpaceError) as err:
        _load(_table_space(tmp_path, weights))
    assert err.value.path == "tasks.clicked.weight_column" and "'w'" in str(err.value) and fragment in str(err.value)


def test_weight_column_errors_name_the_key(tmp_path):
    space = _table_space(tmp_path, [1.0] * 8, {"clicked": {"kind": "binary", "weight_column": "nope"}})
    with pytest.raises(SpaceError) as err:
        _load(space)
    assert err.value.path == "tasks.clicked.weight_column" and "unknown column 'nope'" in str(err.value)
    with pytest.raises(SpaceError) as err:  # a registered data set has no columns to read weights from
        parse_space({"data": {"dataset": "synthetic_correlated"}, "strategies": {"hard_sharing": {}},
                     "tasks": {"y1": {"weight_column": "w"}}})
    assert err.value.path == "tasks.y1.weight_column"
