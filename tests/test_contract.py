"""Every built-in strategy meets the plugin contract; the contract check catches broken strategies."""
from __future__ import annotations

import pytest
import torch

from mtl_search import Int, MultiTaskModel, SharingMap, Strategy, make_tower
from mtl_search.registry import load_registry
from mtl_search.testing import check_strategy

REGISTRY = load_registry()


# Strategies with their own multi-phase schedule run a shortened one here (the contract, not the method, is under test).
SHORT_SCHEDULES = {"adashare": {"warmup_epochs": 1, "search_epochs": 2, "samples": 2}, "learning_to_branch": {"search_epochs": 2}}


@pytest.mark.parametrize("name", sorted(REGISTRY.strategies))
def test_builtin_strategy_meets_the_contract(name):
    check_strategy(REGISTRY.strategies[name], REGISTRY.backbones, params=SHORT_SCHEDULES.get(name))


class _Towers(MultiTaskModel):
    def __init__(self, problem, backbone, broken):
        super().__init__(problem)
        self.broken = broken
        self.towers = torch.nn.ModuleDict({t.name: torch.nn.Sequential(backbone.new_stem(), backbone.new_features(), make_tower(_flat(backbone), t.output_dim)) for t in problem.tasks})

    def forward(self, x):
        out = {n: tower(x) for n, tower in self.towers.items()}
        if self.broken == "shape":
            out["reg"] = out["reg"][:, :0]
        return out

    def sharing_map(self, x):
        value = 2.0 if self.broken == "map" else 0.0
        return {"m": SharingMap(torch.full((len(self.towers), 1), value), list(self.towers), ["all"])}

    def regularization(self):
        return torch.tensor(float("nan")) if self.broken == "regularization" else super().regularization()


def _flat(backbone):
    return backbone.features_of(backbone.stem_shape)


class _Broken(Strategy):
    name, family = "broken", "test"
    knobs = {"unused": Int(1, 2)}

    def __init__(self, broken):
        self.broken = broken

    def build(self, problem, backbone, params):
        return _Towers(problem, backbone, self.broken)


@pytest.mark.parametrize("broken,message", [
    ("shape", "prediction of reg has shape"),
    ("map", "values outside [0, 1]"),
    ("regularization", "regularization() must be a finite scalar"),
])
def test_the_contract_check_catches_a_broken_strategy(broken, message):
    with pytest.raises(AssertionError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        check_strategy(_Broken(broken), REGISTRY.backbones)


def test_a_sound_strategy_passes():
    check_strategy(_Broken("nothing"), REGISTRY.backbones)
