"""Mixture-of-experts sharing: MMoE and OMoE (Ma et al., KDD 2018; METHODS.md section 7).

n experts shared by all tasks; MMoE has one softmax gate per task, OMoE one gate shared by
all; a tower per task. Experts run as one batched contraction over stacked weights.
The experts read the (flattened) input directly and replace the backbone's blocks; their
activation follows the backbone's.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mtl_search import Backbone, Int, MultiTaskModel, Problem, SharingMap, StackedMLP, Strategy, hookimpl, make_tower


class MixtureOfExpertsModel(MultiTaskModel):
    """f^t(x) = sum_i g^t(x)_i f_i(x), g^t(x) = softmax(W_t x); y_t = h_t(f^t(x))."""

    def __init__(self, problem: Problem, backbone: Backbone, experts: int, expert_width: int, expert_depth: int,
                 tower_width: int, gate_per_task: bool):
        super().__init__(problem)
        in_features = math.prod(backbone.input_shape)
        self.n_experts = experts
        self.tasks = problem.task_names
        self.n_gates = len(self.tasks) if gate_per_task else 1
        self.experts = StackedMLP(experts, in_features, [expert_width] * expert_depth, backbone.params.get("activation", "relu"))
        self.gates = nn.Linear(in_features, self.n_gates * experts, bias=False)  # W_t x, as in the paper
        self.towers = nn.ModuleDict({t.name: make_tower(expert_width, t.output_dim, [tower_width]) for t in problem.tasks})

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Gate probabilities, shape (batch, gates, experts); each row sums to one."""
        x = x.flatten(1)
        return torch.softmax(self.gates(x).view(x.shape[0], self.n_gates, self.n_experts), dim=-1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x.flatten(1)
        expert_out = self.experts(x)  # (experts, batch, width)
        mixed = torch.einsum("bge,ebw->gbw", self.gate_weights(x), expert_out)
        return {t: self.towers[t](mixed[i if self.n_gates > 1 else 0]) for i, t in enumerate(self.tasks)}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.experts.parameters())

    def sharing_map(self, x: torch.Tensor) -> dict[str, SharingMap]:
        mean = self.gate_weights(x).mean(dim=0)  # (gates, experts)
        values = mean if self.n_gates > 1 else mean.expand(len(self.tasks), -1)
        return {"gate_weights": SharingMap(values, self.tasks, [f"expert{i}" for i in range(self.n_experts)])}


_KNOBS = {
    "experts": Int(2, 16, minimum=1),
    "expert_width": Int(8, 256, log=True, minimum=1),
    "expert_depth": Int(1, 2, minimum=1),
    "tower_width": Int(4, 64, log=True, minimum=1),
}


class _MixtureOfExperts(Strategy):
    family = "mixture_of_experts"
    knobs = _KNOBS
    backbones = ("mlp", "residual_mlp")
    declares_shared_parameters = True
    gate_per_task = True

    def build(self, problem: Problem, backbone: Backbone, params: dict[str, Any]) -> MultiTaskModel:
        return MixtureOfExpertsModel(problem, backbone, params["experts"], params["expert_width"], params["expert_depth"],
                                     params["tower_width"], self.gate_per_task)


class MMoE(_MixtureOfExperts):
    name = "mmoe"
    description = "multi-gate mixture of experts: one softmax gate per task over shared experts"


class OMoE(_MixtureOfExperts):
    name = "omoe"
    description = "one-gate mixture of experts: a single softmax gate shared by all tasks"
    gate_per_task = False


@hookimpl
def register_strategies(register):
    register(MMoE())
    register(OMoE())
