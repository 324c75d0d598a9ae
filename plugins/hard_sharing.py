"""Hard parameter sharing (shared bottom): the first ``shared_depth`` blocks are shared, the rest are per task.

``shared_depth = 0`` is independent single-task networks; ``shared_depth = L`` is a fully
shared trunk with only the towers private (docs/methods.md, "Hard parameter sharing").
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtl_search import (
    Backbone,
    Int,
    Knob,
    MultiTaskModel,
    Problem,
    SharingMap,
    Strategy,
    hookimpl,
    make_tower,
)


class HardSharingModel(MultiTaskModel):
    def __init__(self, problem: Problem, backbone: Backbone, shared_depth: int, tower_width: int):
        super().__init__(problem)
        if not 0 <= shared_depth <= backbone.depth:
            raise ValueError(f"shared_depth {shared_depth} must lie in [0, {backbone.depth}] (the backbone's depth)")
        self.depth, self.shared_depth = backbone.depth, shared_depth
        # the stem travels with block 0: shared when any block is
        self.shared = nn.Sequential(backbone.new_stem(), *backbone.new_blocks(0, shared_depth)) if shared_depth else nn.Identity()
        self.private = nn.ModuleDict({
            t.name: nn.Sequential(*([] if shared_depth else [backbone.new_stem()]), *backbone.new_blocks(shared_depth), backbone.new_features())
            for t in problem.tasks
        })
        self.towers = nn.ModuleDict({t.name: make_tower(backbone.out_features, t.output_dim, [tower_width]) for t in problem.tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.shared(x)
        return {name: self.towers[name](self.private[name](h)) for name in self.towers}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.shared.parameters())

    def sharing_map(self, x: torch.Tensor) -> dict[str, SharingMap]:
        values = torch.tensor([[1.0 if block < self.shared_depth else 0.0 for block in range(self.depth)]] * len(self.towers))
        return {"shared_blocks": SharingMap(values, list(self.towers), [f"block{i}" for i in range(self.depth)])}


class HardSharing(Strategy):
    name = "hard_sharing"
    family = "hard_sharing"
    declares_shared_parameters = True
    description = "shared bottom: the first shared_depth blocks shared by all tasks, the rest per task, per-task towers"
    knobs = {
        "shared_depth": Int(0, "depth", minimum=0),
        "tower_width": Int(4, 64, log=True, minimum=1),
    }

    def build(self, problem: Problem, backbone: Backbone, params: dict[str, Any]) -> MultiTaskModel:
        return HardSharingModel(problem, backbone, params["shared_depth"], params["tower_width"])

    def fully_shared(self, knobs: dict[str, Knob], depth: int) -> dict[str, Any]:
        """Every block shared: ``shared_depth = depth`` (the shared-bottom model of Caruana 1997)."""
        return {"shared_depth": depth}


@hookimpl
def register_strategies(register):
    register(HardSharing())
