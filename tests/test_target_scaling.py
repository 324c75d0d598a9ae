"""Regression targets standardised with the training split's statistics: loss on that scale, metrics and predictions in units."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
import torch

from mtl_search.cli import main
from mtl_search.data.problem import Problem, Task
from mtl_search.errors import SpaceError
from mtl_search.nn.create import create_model
from mtl_search.results.saved_models import load_model_dir, predict, problem_from_json, problem_to_json, read_inputs, save_model
from mtl_search.search.prepare import prepare
from mtl_search.search.space import load_space
from mtl_search.training.trainer import TrainConfig, Trainer


def _linear_table(tmp_path: Path, rows: int = 400, missing_every: int = 0) -> Path:
    """x = row number / rows in [0, 1); y = 1000 + 300 x (blank every ``missing_every``-th row); pos = x > 0.5."""
    x = np.arange(rows) / rows
    y = [None if missing_every and i % missing_every == 0 else float(1000 + 300 * v) for i, v in enumerate(x)]
    path = tmp_path / "linear.csv"
    pcsv.write_csv(pa.table({"x": x, "y": y, "pos": (x > 0.5).astype(int)}), path)
    return path


def _space(tmp_path: Path, y: str = "{kind: regression, metric: mae}", extra: str = "") -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(f"data: {{csv: linear.csv}}\ntasks: {{y: {y}, pos: {{kind: binary}}}}\n"
                    "backbone: {kind: mlp, depth: 2, width: 32, dropout: 0.0}\n"
                    f"strategies: {{hard_sharing: {{shared_depth: 1, tower_width: 16}}}}\n{extra}")
    return path


def test_metrics_are_in_units_and_the_loss_on_the_standardised_scale():
    task = Task("y", "regression", "mse", target_mean=10.0, target_std=2.0)
    z, target = torch.tensor([1.0, -1.0]), torch.tensor([0.0, 0.0])  # predictions 12 and 8 for a target of 10
    assert task.evaluate(z, target) == pytest.approx(4.0)  # MSE in units: 2^2
    assert Task("y", "regression", "mae", target_mean=10.0, target_std=2.0).evaluate(z, target) == pytest.approx(2.0)
    assert float(task.loss(z, target)) == pytest.approx(1.0)  # the training loss: MSE of the standardised values
    assert torch.equal(task.to_units(task.standardise(torch.tensor([3.0, 1000.0]))), torch.tensor([3.0, 1000.0]))
    with pytest.raises(ValueError, match="only a regression target"):
        Task("b", "binary", target_mean=1.0)
    problem = Problem((3,), (task, Task("b", "binary")))
    assert problem_from_json(problem_to_json(problem)) == problem  # the statistics are saved with the model


def test_statistics_come_from_the_labelled_training_rows_only(tmp_path):
    _linear_table(tmp_path, rows=200, missing_every=3)
    plan, dataset, _ = prepare(load_space(_space(tmp_path)))
    task = plan.problem.task("y")
    train = dataset.train
    labelled = train.mask["y"]
    row = train.x[:, plan.problem.features.names.index("x")].double()  # the raw x of each training row
    expected = (1000 + 300 * row[labelled]).numpy()
    assert 0 < labelled.sum() < len(train)  # some training rows are unlabelled, and left out of the statistics
    assert task.target_mean == pytest.approx(float(expected.mean()), rel=1e-9)
    assert task.target_std == pytest.approx(float(expected.std()), rel=1e-6)
    standardised = train.y["y"][labelled].double()
    assert float(standardised.mean()) == pytest.approx(0.0, abs=1e-5) and float(standardised.std(correction=0)) == pytest.approx(1.0, abs=1e-5)
    for split in (dataset.val, dataset.test):  # the other splits use the training statistics, and come back in units
        rows = split.x[:, 0].double()[split.mask["y"]]
        assert torch.allclose(task.to_units(split.y["y"][split.mask["y"]]).double(), 1000 + 300 * rows, atol=1e-2)
    assert dataset.problem is plan.problem


def test_scale_false_keeps_the_target_in_its_units(tmp_path, capsys):
    _linear_table(tmp_path, rows=100)
    plan, dataset, _ = prepare(load_space(_space(tmp_path, "{kind: regression, scale: false}")))
    assert not plan.problem.task("y").standardised
    assert torch.allclose(dataset.train.y["y"].double(), 1000 + 300 * dataset.train.x[:, 0].double(), atol=1e-2)
    for y, fragment in (("{kind: regression, scale: 1}", "tasks.y.scale: expected true or false, got 1"),
                        ("{kind: binary, scale: false}", "tasks.y.scale: only a regression target is standardised")):
        assert main(["validate", str(_space(tmp_path, y))]) == 2
        assert fragment in capsys.readouterr().err
    funnel = tmp_path / "funnel.yaml"  # a kind the data set gives is checked once it is known
    funnel.write_text("data: {dataset: synthetic_funnel, options: {samples: 300}}\ntasks: {clicked: {scale: false}}\n"
                      "strategies: {hard_sharing: {}}\n")
    with pytest.raises(SpaceError, match="only a regression target is standardised; 'clicked' is binary"):
        prepare(load_space(funnel))


def test_a_large_scale_target_is_learnt_and_predicted_in_its_units_after_reload(tmp_path):
    """y = 1000 + 300 x: the model trains on the standardised target and predicts, reloaded, close to the closed form."""
    _linear_table(tmp_path)
    plan, dataset, _ = prepare(load_space(_space(tmp_path)))
    strategy = plan.strategies["hard_sharing"][0]
    knobs, backbone, inputs = plan.smallest_configuration("hard_sharing")
    torch.manual_seed(0)
    model = create_model(plan.problem, strategy, plan.backbone_kind, knobs, backbone, inputs)
    weighting = plan.weightings["equal"][0](plan.problem.task_names)
    trainer = Trainer(dataset, TrainConfig(epochs=40, batch_size=32, lr=1e-2, patience=40), weighting)
    trainer.fit(model)
    test = trainer.evaluate(model, dataset.test)
    # MAE in units (the target's std is about 87): about 0.3 here; the same training on the raw target reaches about 19
    assert test.metrics["y"] < 3.0
    config = {"strategy": "hard_sharing", **{f"hard_sharing.{k}": v for k, v in knobs.items()},
              **{f"backbone.{k}": v for k, v in backbone.items()}}
    save_model(tmp_path, model, config, plan.problem, plan.backbone_kind.name)
    reloaded = load_model_dir(tmp_path)
    new = tmp_path / "new.csv"
    new.write_text("x\n0.05\n0.5\n0.9\n")
    predicted = predict(reloaded, read_inputs(new, reloaded.problem))["y"]
    assert torch.allclose(predicted, torch.tensor([1015.0, 1150.0, 1270.0]), atol=3.0), predicted
    assert torch.allclose(predicted, predict(model, read_inputs(new, model.problem))["y"])  # reload equals before-save
