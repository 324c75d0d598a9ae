"""Core pieces that strategies with their own schedule compose: Split.partition, Trainer.end_epoch, Default knobs."""
from __future__ import annotations

import pytest
import torch
from mtl_search_plugins.datasets import synthetic_correlated
from mtl_search_plugins.hard_sharing import HardSharing

from mtl_search import (
    Default,
    Fixed,
    Float,
    Int,
    SpaceError,
    Split,
    TrainConfig,
    Trainer,
)
from mtl_search.nn.backbones import build_mlp
from mtl_search.training.weighting import Equal


def test_partition_gives_two_disjoint_parts_covering_the_split():
    split = Split(torch.arange(10.0).unsqueeze(1), {"t": torch.arange(10.0)}, {"t": torch.arange(10) % 2 == 0})
    first, second = split.partition(0.3, torch.Generator().manual_seed(0))
    assert (len(first), len(second)) == (3, 7)
    rows = sorted(first.x.squeeze(1).tolist() + second.x.squeeze(1).tolist())
    assert rows == list(range(10))
    for part in (first, second):  # targets and masks travel with their rows
        assert torch.equal(part.y["t"], part.x.squeeze(1)) and torch.equal(part.mask["t"], part.x.squeeze(1) % 2 == 0)
    with pytest.raises(ValueError, match="fraction"):
        split.partition(1.0)


def test_end_epoch_records_and_reports_like_fit():
    torch.manual_seed(0)
    data = synthetic_correlated(correlation=0.5, tasks=2, samples=300, input_dim=8, sin_terms=2, scale=1.0, noise=0.1, seed=0, val=0.2, test=0.2)
    model = HardSharing().build(data.problem, build_mlp((8,), depth=1, width=8), {"shared_depth": 1, "tower_width": 4})
    reports = []
    trainer = Trainer(data, TrainConfig(epochs=1, batch_size=64), Equal(data.problem.task_names), report=reports.append)
    trainer.fit(model)
    epoch = trainer.next_epoch
    losses = trainer.train_epoch(model, trainer.make_optimizer(model), epoch)
    record = trainer.end_epoch(model, epoch, losses)
    assert [r["epoch"] for r in reports] == [1, 2] and trainer.history[-1] is record
    assert record.val.losses == trainer.evaluate(model, data.val).losses
    assert reports[-1]["train_loss/y1"] == losses["y1"]


def test_on_step_sees_every_optimiser_step_and_its_losses_average_to_the_epochs():
    torch.manual_seed(0)
    data = synthetic_correlated(correlation=0.5, tasks=2, samples=300, input_dim=8, sin_terms=2, scale=1.0, noise=0.1, seed=0, val=0.2, test=0.2)
    model = HardSharing().build(data.problem, build_mlp((8,), depth=1, width=8), {"shared_depth": 1, "tower_width": 4})
    steps = []
    trainer = Trainer(data, TrainConfig(epochs=2, patience=2, batch_size=64), Equal(data.problem.task_names),
                      on_step=lambda step, losses: steps.append((step, losses)))
    trainer.fit(model)
    per_epoch = -(-len(data.train) // 64)  # the last batch is partial
    assert [step for step, _ in steps] == list(range(1, 2 * per_epoch + 1)) and trainer.steps == 2 * per_epoch
    for epoch, record in enumerate(trainer.history):
        window = [losses for _, losses in steps[epoch * per_epoch:(epoch + 1) * per_epoch]]
        for task in data.problem.task_names:
            assert sum(w[task] for w in window) / per_epoch == pytest.approx(record.train_loss[task])


def test_default_knob_is_not_searched_but_a_space_may_change_it():
    knob = Default(0.05, Float(0.0, 0.5, minimum=0.0))

    class NoTrial:
        def __getattr__(self, name):
            raise AssertionError("a Default must not ask the sampler")

    assert knob.suggest(NoTrial(), "x") == 0.05 and knob.is_fixed
    assert knob.narrow(Fixed(0.2), "strategies.s.x") == Fixed(0.2)
    assert knob.narrow(Int(0, 1), "strategies.s.x") == Float(0.0, 1.0)
    with pytest.raises(SpaceError, match="strategies.s.x: -1 is below"):
        knob.narrow(Fixed(-1), "strategies.s.x")
