"""The trainer: it lowers the loss, restores the best epoch, masks missing labels; metrics are right."""
from __future__ import annotations

import pytest
import torch
from mtl_search_plugins.datasets import synthetic_correlated, task_weights
from mtl_search_plugins.hard_sharing import HardSharing

from mtl_search import (
    Dataset,
    MultiTaskModel,
    Problem,
    SharingMap,
    Split,
    Task,
    TrainConfig,
    Trainer,
)
from mtl_search.data.problem import binary_auc
from mtl_search.nn.backbones import build_mlp
from mtl_search.training.weighting import Equal


def _data():
    return synthetic_correlated(correlation=0.5, tasks=2, samples=1200, input_dim=10, sin_terms=3, scale=1.0, noise=0.1, seed=0, val=0.2, test=0.2)


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    data = _data()
    model = HardSharing().build(data.problem, build_mlp((10,), depth=2, width=32), {"shared_depth": 1, "tower_width": 8})
    trainer = Trainer(data, TrainConfig(epochs=8, batch_size=64, lr=5e-3, patience=10), Equal(data.problem.task_names))
    before = trainer.evaluate(model, data.val).losses
    trainer.fit(model)
    after = trainer.evaluate(model, data.val).losses
    for task in data.problem.task_names:
        assert after[task] < 0.7 * before[task]


def test_early_stopping_restores_the_best_epoch():
    torch.manual_seed(0)
    data = _data()
    model = HardSharing().build(data.problem, build_mlp((10,), depth=2, width=32), {"shared_depth": 1, "tower_width": 8})
    # a learning rate this high makes later epochs worse than the best one
    trainer = Trainer(data, TrainConfig(epochs=6, batch_size=64, lr=0.3, patience=1), Equal(data.problem.task_names))
    trainer.fit(model)
    best = min(r.score for r in trainer.history)
    final = trainer.score(trainer.evaluate(model, data.val).losses)
    assert final == pytest.approx(best, rel=1e-5)


def test_reports_one_result_per_epoch():
    data = _data()
    model = HardSharing().build(data.problem, build_mlp((10,), depth=1, width=8), {"shared_depth": 1, "tower_width": 4})
    reports = []
    Trainer(data, TrainConfig(epochs=3, batch_size=128, patience=5), Equal(data.problem.task_names), report=reports.append).fit(model)
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    assert {"val/y1", "val/y2", "train_loss/y1", "score"} <= set(reports[0])


class _Linear(MultiTaskModel):
    def __init__(self, problem):
        super().__init__(problem)
        self.layer = torch.nn.Linear(3, 1)

    def forward(self, x):
        return {"t": self.layer(x)}

    def sharing_map(self, x):
        return {"none": SharingMap(torch.ones(1, 1), ["t"], ["all"])}


def test_a_missing_label_contributes_no_gradient():
    problem = Problem((3,), (Task("t", "regression"),))
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8)
    mask = torch.tensor([True, False] * 4)
    model = _Linear(problem)
    y_corrupt = y.clone()
    y_corrupt[~mask] = 1e6  # unlabelled rows carry garbage
    model.task_losses(Split(x, {"t": y_corrupt}, {"t": mask}))["t"].backward()
    masked_grad = model.layer.weight.grad.clone()
    model.zero_grad()
    model.task_losses(Split(x[mask], {"t": y[mask]}))["t"].backward()
    assert torch.allclose(masked_grad, model.layer.weight.grad)


def test_auc_by_ranks():
    y = torch.tensor([0, 0, 1, 1])
    assert binary_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), y) == pytest.approx(0.75)
    assert binary_auc(torch.tensor([0.5, 0.5, 0.5, 0.5]), y) == pytest.approx(0.5)  # ties count half


def test_synthetic_task_correlation_is_the_cosine_of_the_weights():
    g = torch.Generator().manual_seed(0)
    for tasks, p in [(2, 0.5), (2, -0.3), (3, 0.8)]:
        w = task_weights(p, tasks, 20, 1.0, g)
        for s in range(tasks):
            for t in range(s + 1, tasks):
                assert torch.nn.functional.cosine_similarity(w[s], w[t], dim=0).item() == pytest.approx(p, abs=1e-9)
        assert torch.allclose(w.norm(dim=1), torch.ones(tasks, dtype=w.dtype))


def test_synthetic_labels_follow_the_generator():
    data = synthetic_correlated(correlation=1.0, tasks=2, samples=200, input_dim=8, sin_terms=2, scale=1.0, noise=0.0, seed=3, val=0.1, test=0.1)
    # with p = 1 and no noise both tasks have the same weight vector, so the labels coincide
    assert torch.allclose(data.train.y["y1"], data.train.y["y2"], atol=1e-5)
    assert isinstance(data, Dataset) and len(data.train) + len(data.val) + len(data.test) == 200
