"""MTAN's mechanism (docs/methods.md, "MTAN") on every backbone kind: soft masks in (0, 1), attention over a shared network."""
from __future__ import annotations

import pytest
import torch
from mtl_search_plugins.attention import MTAN
from torch import nn

from mtl_search import Problem, Task, forward_with_intermediate
from mtl_search.nn.backbones import (
    build_conv,
    build_mlp,
    build_residual_conv,
    build_residual_mlp,
)

FLAT = Problem((6,), (Task("a", "regression"), Task("b", "multiclass", "accuracy", 4)))
IMAGE = Problem((1, 6, 8), FLAT.tasks)
BACKBONES = {
    "mlp": (FLAT, lambda: build_mlp((6,), depth=3, width=5)),
    "residual_mlp": (FLAT, lambda: build_residual_mlp((6,), depth=2, width=5)),
    "conv": (IMAGE, lambda: build_conv((1, 6, 8), channels=[3, 4, 5])),
    "residual_conv": (IMAGE, lambda: build_residual_conv((1, 6, 8), depth=2, channels=3)),
}


class AllOnes(nn.Module):
    """Stands in for an attention module: a mask of ones with ``channels`` channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.ones(features.shape[0], self.channels, *features.shape[2:])


@pytest.mark.parametrize("kind", list(BACKBONES))
def test_masks_lie_strictly_between_zero_and_one_and_have_the_block_shape(kind):
    torch.manual_seed(0)
    problem, make = BACKBONES[kind]
    backbone = make()
    model = MTAN().build(problem, backbone, {"tower_width": 4})
    model.train()
    _, masks = model.attend(torch.randn(8, *problem.input_shape))
    for task in problem.task_names:
        assert [tuple(m.shape[1:]) for m in masks[task]] == [tuple(s) for s in backbone.block_shapes]
        for mask in masks[task]:
            assert (mask > 0).all() and (mask < 1).all()
    smap = model.eval().sharing_map(torch.randn(8, *problem.input_shape))["attention_mask_mean"]
    assert smap.values.shape == (2, backbone.depth) and ((smap.values > 0) & (smap.values < 1)).all()


@pytest.mark.parametrize("kind", list(BACKBONES))
def test_with_all_masks_one_the_task_features_are_the_shared_features_through_f(kind):
    torch.manual_seed(0)
    problem, make = BACKBONES[kind]
    backbone = make()
    model = MTAN().build(problem, backbone, {"tower_width": 4}).eval()
    for task in problem.task_names:
        for j, shape in enumerate(backbone.block_shapes):
            model.attention[task][j] = AllOnes(shape[0])
    x = torch.randn(5, *problem.input_shape)
    attended, _ = model.attend(x)
    with torch.no_grad():
        shared = model.stem(x)
        for block in model.blocks:
            shared = block(shared)
        expected = model.shared_layers[-1](shared)
    for task in problem.task_names:
        assert torch.allclose(attended[task], expected, atol=1e-6)
    out = model(x)
    for task in problem.task_names:
        assert torch.allclose(out[task], model.towers[task](model.features(expected)), atol=1e-6)


def test_each_task_has_its_own_attention_and_the_masks_select_what_reaches_it():
    torch.manual_seed(0)
    problem, make = BACKBONES["conv"]
    model = MTAN().build(problem, make(), {"tower_width": 4}).eval()
    assert model.attention["a"][0] is not model.attention["b"][0]
    x = torch.randn(5, *problem.input_shape)
    model.zero_grad(set_to_none=True)
    model(x)["a"].sum().backward()
    assert all(p.grad is None for p in model.attention["b"].parameters())  # task b's attention never reaches task a
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.attention["a"].parameters())
    assert all(p.grad is not None for p in model.blocks.parameters())  # the shared network does


def test_residual_blocks_expose_their_intermediate_feature():
    torch.manual_seed(0)
    backbone = build_residual_conv((1, 6, 8), depth=1, channels=3)
    block = backbone.new_block(0).eval()
    x = torch.randn(2, 3, 6, 8)
    u, p = forward_with_intermediate(block, x)
    assert torch.allclose(u, block.branch[0](x)) and torch.allclose(p, block(x))
    plain = build_mlp((6,), depth=1, width=4).new_block(0).eval()
    u, p = forward_with_intermediate(plain, torch.randn(2, 6))
    assert u is p  # a single-layer block's intermediate feature is its output
