"""Mechanisms of the built-in strategies: gates, parameter sharing by identity, batched experts."""
from __future__ import annotations

import pytest
import torch
from mtl_search_plugins.hard_sharing import HardSharing
from mtl_search_plugins.mixture_of_experts import MMoE, OMoE

from mtl_search import Problem, StackedMLP, Task
from mtl_search.nn.backbones import build_mlp, build_residual_mlp

PROBLEM = Problem((10,), (Task("a", "regression"), Task("b", "binary"), Task("c", "multiclass", "accuracy", 3)))


def params_reached_by(model, task, x):
    """Ids of the parameters that receive a gradient from one task's output."""
    model.zero_grad(set_to_none=True)
    model(x)[task].sum().backward()
    return {id(p) for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0}


@pytest.mark.parametrize("build", [build_mlp, build_residual_mlp])
def test_shared_depth_zero_gives_disjoint_task_parameters(build):
    torch.manual_seed(0)
    backbone = build((10,), depth=3, width=8)
    model = HardSharing().build(PROBLEM, backbone, {"shared_depth": 0, "tower_width": 4})
    x = torch.randn(16, 10)
    reached = {t: params_reached_by(model, t, x) for t in PROBLEM.task_names}
    for s, t in [("a", "b"), ("a", "c"), ("b", "c")]:
        assert reached[s] and not (reached[s] & reached[t])
    assert model.shared_parameters() == []


@pytest.mark.parametrize("build", [build_mlp, build_residual_mlp])
def test_full_shared_depth_shares_the_whole_trunk(build):
    torch.manual_seed(0)
    backbone = build((10,), depth=3, width=8)
    model = HardSharing().build(PROBLEM, backbone, {"shared_depth": 3, "tower_width": 4})
    x = torch.randn(16, 10)
    reached = {t: params_reached_by(model, t, x) for t in PROBLEM.task_names}
    common = reached["a"] & reached["b"] & reached["c"]
    trunk = {id(p) for p in model.shared_parameters()}
    assert trunk and common == trunk  # exactly the trunk is common; towers stay private
    tower_ids = {id(p) for p in model.towers["a"].parameters()}
    assert tower_ids <= reached["a"] and not tower_ids & reached["b"]


def test_partial_sharing_map_marks_shared_blocks():
    model = HardSharing().build(PROBLEM, build_mlp((10,), depth=3, width=8), {"shared_depth": 2, "tower_width": 4})
    smap = model.sharing_map(torch.randn(4, 10))["shared_blocks"]
    assert smap.values.tolist() == [[1.0, 1.0, 0.0]] * 3
    assert smap.rows == ["a", "b", "c"]


def test_shared_depth_beyond_the_backbone_is_refused():
    with pytest.raises(ValueError, match="shared_depth 4 must lie in"):
        HardSharing().build(PROBLEM, build_mlp((10,), depth=3, width=8), {"shared_depth": 4, "tower_width": 4})


MOE_PARAMS = {"experts": 5, "expert_width": 6, "expert_depth": 2, "tower_width": 4}


def test_mmoe_gates_sum_to_one_and_differ_per_task():
    torch.manual_seed(0)
    model = MMoE().build(PROBLEM, build_mlp((10,), depth=1, width=8), MOE_PARAMS)
    gates = model.gate_weights(torch.randn(32, 10))
    assert gates.shape == (32, 3, 5)
    assert torch.allclose(gates.sum(-1), torch.ones(32, 3), atol=1e-6)
    assert (gates > 0).all()
    assert not torch.allclose(gates[:, 0], gates[:, 1])  # one gate per task
    smap = model.sharing_map(torch.randn(64, 10))["gate_weights"]
    assert smap.values.shape == (3, 5) and torch.allclose(smap.values.sum(1), torch.ones(3), atol=1e-5)


def test_omoe_has_one_gate_for_all_tasks():
    model = OMoE().build(PROBLEM, build_mlp((10,), depth=1, width=8), MOE_PARAMS)
    assert model.gate_weights(torch.randn(4, 10)).shape == (4, 1, 5)
    smap = model.sharing_map(torch.randn(16, 10))["gate_weights"].values
    assert torch.allclose(smap[0], smap[1]) and torch.allclose(smap[0], smap[2])


def test_mmoe_output_is_the_gated_sum_of_expert_outputs():
    torch.manual_seed(1)
    model = MMoE().build(PROBLEM, build_mlp((10,), depth=1, width=8), MOE_PARAMS).eval()
    x = torch.randn(7, 10)
    experts = model.experts(x)  # (experts, batch, width)
    gates = model.gate_weights(x)
    for i, task in enumerate(PROBLEM.task_names):
        mixed = sum(gates[:, i, e : e + 1] * experts[e] for e in range(5))
        assert torch.allclose(model(x)[task], model.towers[task](mixed), atol=1e-6)


def test_batched_experts_match_a_loop_over_experts():
    torch.manual_seed(2)
    stacked = StackedMLP(4, 10, [7, 5])
    x = torch.randn(9, 10)
    out = stacked(x)
    for e in range(4):
        h = x
        for layer in stacked.layers:
            h = torch.relu(h @ layer.weight[e] + layer.bias[e])
        assert torch.allclose(out[e], h, atol=1e-5)


def test_model_output_shapes_follow_task_kinds():
    model = MMoE().build(PROBLEM, build_mlp((10,), depth=1, width=8), MOE_PARAMS)
    out = model(torch.randn(3, 10))
    assert out["a"].shape == (3, 1) and out["b"].shape == (3, 1) and out["c"].shape == (3, 3)
