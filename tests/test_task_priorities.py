"""Task priorities: the fixed weighting (a weight per task, a knob like any) and floors on the learned weightings."""
from __future__ import annotations

import pytest
import torch
from mtl_search_plugins.weighting import (
    DynamicWeightAverage,
    FixedWeights,
    GradNorm,
    RandomLossWeighting,
    Uncertainty,
)

from mtl_search import Problem, SpaceError, Task
from mtl_search.config import TrialConfig
from mtl_search.registry import load_registry
from mtl_search.search.prepare import prepare
from mtl_search.search.sampling import TrialSpace
from mtl_search.search.space import parse_space

PROBLEM = Problem((1,), (Task("a", "regression"), Task("b", "binary")))
SPACE = {"data": {"dataset": "synthetic_correlated", "options": {"samples": 100}}, "strategies": {"hard_sharing": {}}}


def test_fixed_weighting_is_the_weighted_sum_of_the_losses():
    weighting = FixedWeights(["a", "b"], **{"weight.a": 3.0, "weight.b": 0.5})
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(4.0)}
    assert float(weighting.combine(losses)) == pytest.approx(3.0 * 2.0 + 0.5 * 4.0)
    assert weighting.weights() == {"a": 3.0, "b": 0.5}
    assert float(FixedWeights(["a", "b"]).combine(losses)) == pytest.approx(6.0)  # default weight 1
    with pytest.raises(ValueError, match="unknown tasks: weight.c"):
        FixedWeights(["a", "b"], **{"weight.c": 1.0})


def test_fixed_weights_are_knobs_a_space_sets_or_searches():
    space = {**SPACE, "training": {"weighting": "fixed", "weighting_options": {"fixed": {"weight.y1": {"float": [1.0, 4.0]}, "weight.y2": 0.25}}}}
    plan, _, _ = prepare(parse_space(space), load_registry())
    _, knobs = plan.weightings["fixed"]
    assert set(knobs) == {"weight.y1", "weight.y2"}

    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    config = TrialSpace(plan)(trial)
    parts = TrialConfig.from_flat(config)
    assert parts.weighting == "fixed" and parts.weighting_params["weight.y2"] == 0.25
    assert 1.0 <= parts.weighting_params["weight.y1"] <= 4.0
    weighting = plan.weightings["fixed"][0](plan.problem.task_names, **parts.weighting_params)
    assert weighting.weights()["y1"] == pytest.approx(parts.weighting_params["weight.y1"])
    bad = {**SPACE, "training": {"weighting": "fixed", "weighting_options": {"fixed": {"weight.y3": 1.0}}}}
    with pytest.raises(SpaceError) as err:
        prepare(parse_space(bad), load_registry())
    assert err.value.path == "training.weighting_options.fixed.weight.y3"


@pytest.mark.parametrize("cls", [Uncertainty, DynamicWeightAverage, RandomLossWeighting])
def test_a_floor_keeps_a_task_from_being_weighted_away(cls):
    torch.manual_seed(0)
    weighting = cls(["a", "b"], **{"min_weight.b": 0.8})
    weighting.setup(PROBLEM)
    if isinstance(weighting, Uncertainty):
        with torch.no_grad():
            weighting.log_variance.copy_(torch.tensor([0.0, 5.0]))  # b's learned weight: exp(-5) ~ 0.007
    if isinstance(weighting, DynamicWeightAverage):
        weighting.lambdas.copy_(torch.tensor([1.9, 0.1]))
    losses = {"a": torch.tensor(1.0), "b": torch.tensor(2.0)}
    for _ in range(20):
        weighting.combine(losses)
    weighting.on_epoch_end(1, {"a": 1.0, "b": 2.0})
    assert weighting.weights()["b"] >= 0.8 - 1e-6
    unfloored = cls(["a", "b"])
    unfloored.setup(PROBLEM)
    if isinstance(unfloored, Uncertainty):
        with torch.no_grad():
            unfloored.log_variance.copy_(torch.tensor([0.0, 5.0]))
        assert float(unfloored.combine(losses).detach()) < float(weighting.combine(losses).detach())


def test_gradnorm_applies_its_floor_to_the_loss_weight():
    from mtl_search import MultiTaskModel

    class Shared(MultiTaskModel):
        def __init__(self):
            super().__init__(PROBLEM)
            self.layer = torch.nn.Linear(2, 2)

        def shared_parameters(self):
            return list(self.layer.parameters())

    model = Shared()
    weighting = GradNorm(["a", "b"], alpha=1.5, **{"min_weight.a": 1.5})
    with torch.no_grad():
        weighting.task_weights.copy_(torch.tensor([0.1, 1.9]))
    out = model.layer(torch.ones(1, 2)).sum(0)
    weighting.backward({"a": out[0] ** 2, "b": out[1] ** 2}, torch.zeros(()), model)
    weighting.on_epoch_end(1, {})
    assert weighting.weights()["a"] == pytest.approx(1.5)


def test_floors_are_knobs_of_the_learned_weightings_only():
    knobs = Uncertainty.knobs_for(PROBLEM)
    assert {"min_weight.a", "min_weight.b"} <= set(knobs) and knobs["min_weight.a"].value == 0.0
    assert not any(k.startswith("min_weight") for k in FixedWeights.knobs_for(PROBLEM))
    space = {**SPACE, "training": {"weighting": "uncertainty", "weighting_options": {"uncertainty": {"min_weight.y2": 0.5}}}}
    plan, _, _ = prepare(parse_space(space), load_registry())
    assert plan.weightings["uncertainty"][1]["min_weight.y2"].value == 0.5
