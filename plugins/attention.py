"""MTAN: task-specific attention over a shared network (Liu, Johns, Davison, CVPR 2019; docs/methods.md, "MTAN").

A shared backbone runs once. For each task t and block j an attention module
g_{t,j} (conv1x1 -> BN -> ReLU -> conv1x1 -> BN -> sigmoid; Linear layers on MLP blocks)
computes a soft mask from the block's intermediate feature u_j and the task's previous
attended feature: mask = g_{t,j}([u_j ; a_{t,j-1}]) (block 0 reads u_0 only). The task's
attended feature is a_{t,j} = f_j(mask * p_j), p_j the block output and f_j a shared layer
(conv3x3 -> BN -> ReLU, or Linear -> BN -> ReLU) that brings it to the next block's
channels and resolution. The task heads read a_{t,L}.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtl_search import (
    Backbone,
    Int,
    MultiTaskModel,
    Problem,
    SharingMap,
    Strategy,
    forward_with_intermediate,
    hookimpl,
    make_tower,
)


def attention_module(in_channels: int, out_channels: int, rank: int) -> nn.Sequential:
    """g: 1x1 conv -> BN -> ReLU -> 1x1 conv -> BN -> sigmoid (Linear/BatchNorm1d for flat features)."""
    if rank == 3:
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 1), nn.BatchNorm2d(out_channels), nn.Sigmoid(),
        )
    return nn.Sequential(
        nn.Linear(in_channels, out_channels), nn.BatchNorm1d(out_channels), nn.ReLU(),
        nn.Linear(out_channels, out_channels), nn.BatchNorm1d(out_channels), nn.Sigmoid(),
    )


def shared_attention_layer(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> nn.Sequential:
    """f: conv3x3 -> BN -> ReLU from ``in_shape`` to ``out_shape``'s channels, max-pooled to its resolution (Linear for flat features)."""
    if len(in_shape) == 3:
        layers = [nn.Conv2d(in_shape[0], out_shape[0], 3, padding=1), nn.BatchNorm2d(out_shape[0]), nn.ReLU()]
        if tuple(in_shape[1:]) != tuple(out_shape[1:]):
            layers.append(nn.AdaptiveMaxPool2d(tuple(out_shape[1:])))
        return nn.Sequential(*layers)
    return nn.Sequential(nn.Linear(in_shape[0], out_shape[0]), nn.BatchNorm1d(out_shape[0]), nn.ReLU())


class MTANModel(MultiTaskModel):
    def __init__(self, problem: Problem, backbone: Backbone, tower_width: int):
        super().__init__(problem)
        shapes = [tuple(s) for s in backbone.block_shapes]
        if any(len(s) not in (1, 3) for s in shapes):
            raise ValueError(f"MTAN needs flat (width,) or image (C, H, W) block outputs, got {shapes}")
        self.tasks = problem.task_names
        self.stem = backbone.new_stem()
        self.blocks = backbone.new_blocks()
        self.features = backbone.new_features()
        # a_{t,j} takes block j+1's shape (its input to g_{t,j+1}); the last keeps block L's shape
        attended = shapes[1:] + shapes[-1:]
        self.shared_layers = nn.ModuleList(shared_attention_layer(shapes[j], attended[j]) for j in range(len(shapes)))
        self.attention = nn.ModuleDict({
            task: nn.ModuleList(
                attention_module(shapes[j][0] + (attended[j - 1][0] if j else 0), shapes[j][0], len(shapes[j]))
                for j in range(len(shapes))
            )
            for task in self.tasks
        })
        self.towers = nn.ModuleDict({t.name: make_tower(backbone.feature_width(attended[-1]), t.output_dim, [tower_width])
                                     for t in problem.tasks})

    def attend(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, list[torch.Tensor]]]:
        """The attended features a_{t,L} per task and every mask per task per block."""
        h = self.stem(x)
        attended: dict[str, torch.Tensor | None] = {t: None for t in self.tasks}
        masks: dict[str, list[torch.Tensor]] = {t: [] for t in self.tasks}
        for j, block in enumerate(self.blocks):
            u, h = forward_with_intermediate(block, h)  # the shared network never reads the attention
            for task in self.tasks:
                previous = attended[task]
                mask = self.attention[task][j](u if previous is None else torch.cat([u, previous], dim=1))
                masks[task].append(mask)
                attended[task] = self.shared_layers[j](mask * h)
        return attended, masks

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        attended, _ = self.attend(x)
        return {task: self.towers[task](self.features(a)) for task, a in attended.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        return [*self.stem.parameters(), *self.blocks.parameters(), *self.shared_layers.parameters()]

    def sharing_map(self, x: torch.Tensor) -> dict[str, SharingMap]:
        """Mean attention mask per task per block: how much of the shared feature each task keeps."""
        _, masks = self.attend(x)
        values = torch.stack([torch.stack([m.mean() for m in masks[t]]) for t in self.tasks]).detach()
        return {"attention_mask_mean": SharingMap(values, self.tasks, [f"block{j}" for j in range(len(self.blocks))])}


class MTAN(Strategy):
    name = "mtan"
    family = "attention"
    description = "shared network plus a soft attention mask per task per block (MTAN)"
    knobs = {"tower_width": Int(4, 64, log=True, minimum=1)}
    # the attention modules are built for flat or image features; these kinds give one or the other
    backbones = ("mlp", "residual_mlp", "conv", "residual_conv")

    def build(self, problem: Problem, backbone: Backbone, params: dict[str, Any]) -> MultiTaskModel:
        return MTANModel(problem, backbone, params["tower_width"])


@hookimpl
def register_strategies(register):
    register(MTAN())
