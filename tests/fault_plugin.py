"""A test plugin that injects faults: strategy ``faulty`` whose ``fault`` knob picks what goes wrong.

none: trains normally; raise: ``build`` raises; nan: the weights are NaN, so the loss is
non-finite; slow: sleeps before training (past a small ``training.max_trial_seconds``);
stall: trains with learning rate 0, so its score never improves (early stopping bait).
"""
from __future__ import annotations

import time
from typing import Any

import torch
from mtl_search_plugins.hard_sharing import HardSharing

from mtl_search import Backbone, Choice, MultiTaskModel, Problem, Strategy, hookimpl

SLOW_SECONDS = 13.0  # past the test's max_trial_seconds (12), which a normal tiny trial stays far below


class Faulty(Strategy):
    name = "faulty"
    family = "fault_injection"
    description = "hard sharing with an injected fault (tests only)"
    knobs = {"fault": Choice("none", "raise", "nan", "slow", "stall")}

    def build(self, problem: Problem, backbone: Backbone, params: dict[str, Any]) -> MultiTaskModel:
        if params["fault"] == "raise":
            raise RuntimeError("injected fault: build failed")
        model = HardSharing().build(problem, backbone, {"shared_depth": 1, "tower_width": 8})
        model.fault = params["fault"]
        return model

    def fit(self, model: MultiTaskModel, trainer: Any) -> MultiTaskModel:
        if model.fault == "nan":
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.fill_(float("nan"))
        elif model.fault == "slow":
            time.sleep(SLOW_SECONDS)
        elif model.fault == "stall":
            trainer.config.lr = 0.0
        return super().fit(model, trainer)


@hookimpl
def register_strategies(register):
    register(Faulty())
