"""Mechanisms of cross-stitch, L2 soft sharing and MRN (docs/methods.md: "Cross-stitch networks", "L2 soft sharing", "MRN"), on every backbone kind."""
from __future__ import annotations

import pytest
import torch
from mtl_search_plugins.soft_sharing import (
    MRN,
    CrossStitch,
    L2Soft,
    TensorNormalPrior,
    chosen_blocks,
)
from torch import nn

from mtl_search import Problem, Task
from mtl_search.nn.backbones import (
    build_conv,
    build_mlp,
    build_residual_conv,
    build_residual_mlp,
)

FLAT = Problem((6,), (Task("a", "regression"), Task("b", "binary"), Task("c", "multiclass", "accuracy", 3)))
IMAGE = Problem((1, 6, 8), FLAT.tasks)
BACKBONES = {
    "mlp": (FLAT, lambda: build_mlp((6,), depth=3, width=5)),
    "residual_mlp": (FLAT, lambda: build_residual_mlp((6,), depth=2, width=5)),
    "conv": (IMAGE, lambda: build_conv((1, 6, 8), channels=[3, 4])),
    "residual_conv": (IMAGE, lambda: build_residual_conv((1, 6, 8), depth=2, channels=3)),
}
STITCH = {"stitch_blocks": "all", "alpha_lr_multiplier": 100.0, "tower_width": 4}


def _inputs(problem: Problem, n: int = 6) -> torch.Tensor:
    return torch.randn(n, *problem.input_shape)


@pytest.mark.parametrize("per_channel", [False, True])
def test_cross_stitch_alpha_starts_convex_with_diagonal_09(per_channel):
    problem, make = BACKBONES["conv"]
    model = CrossStitch().build(problem, make(), {**STITCH, "alpha_per_channel": per_channel})
    assert sorted(model.units) == ["0", "1"]
    for unit in model.units.values():
        alpha = unit.alpha if per_channel else unit.alpha.unsqueeze(0)
        assert alpha.shape[-2:] == (3, 3)
        assert torch.allclose(alpha.sum(-1), torch.ones(alpha.shape[:-1]))
        assert torch.allclose(torch.diagonal(alpha, dim1=-2, dim2=-1), torch.full(alpha.shape[:-1], 0.9))
        assert torch.allclose(alpha[:, 0, 1], torch.full((alpha.shape[0],), 0.05))  # 0.1 / (T - 1), T = 3


@pytest.mark.parametrize("kind", list(BACKBONES))
@pytest.mark.parametrize("per_channel", [False, True])
def test_cross_stitch_with_identity_alpha_is_independent_columns(kind, per_channel):
    torch.manual_seed(0)
    problem, make = BACKBONES[kind]
    model = CrossStitch().build(problem, make(), {**STITCH, "alpha_per_channel": per_channel}).eval()
    with torch.no_grad():
        for unit in model.units.values():
            unit.alpha.copy_(torch.eye(3).expand_as(unit.alpha))
    x = _inputs(problem)
    out = model(x)
    cols = model.columns
    for t, name in enumerate(problem.task_names):
        column = nn.Sequential(cols.stems[t], *cols.blocks[t], cols.features[t], cols.towers[t]).eval()
        assert torch.allclose(out[name], column(x), atol=1e-6)
    # and the default alpha does mix: outputs differ from the separate columns
    fresh = CrossStitch().build(problem, make(), {**STITCH, "alpha_per_channel": per_channel}).eval()
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if "alpha" not in k}, strict=False)
    assert not torch.allclose(fresh(x)["a"], out["a"], atol=1e-6)


def test_cross_stitch_alpha_learns_with_its_own_learning_rate():
    problem, make = BACKBONES["mlp"]
    model = CrossStitch().build(problem, make(), {**STITCH, "alpha_per_channel": False, "alpha_lr_multiplier": 250.0})
    network, alphas = model.param_groups(0.002)
    assert network["lr"] == 0.002 and alphas["lr"] == pytest.approx(0.5) and alphas["weight_decay"] == 0.0
    assert {id(p) for p in alphas["params"]} == {id(u.alpha) for u in model.units.values()}
    assert not {id(p) for p in alphas["params"]} & {id(p) for p in network["params"]}
    smap = model.sharing_map(_inputs(problem))
    assert set(smap) == {"alpha_block0", "alpha_block1", "alpha_block2"}
    assert torch.allclose(smap["alpha_block0"].values, model.units["0"].alpha.detach())


def test_which_blocks_choices():
    assert chosen_blocks("all", 3) == [0, 1, 2]
    assert chosen_blocks("first_half", 3) == [0, 1] and chosen_blocks("second_half", 3) == [1, 2]
    assert chosen_blocks("last", 4) == [3]
    with pytest.raises(ValueError, match="blocks must be one of"):
        chosen_blocks("middle", 3)


L2 = {"penalty": 0.5, "tied_blocks": "all", "tower_width": 4}


@pytest.mark.parametrize("kind", list(BACKBONES))
def test_l2_penalty_is_zero_for_identical_copies_and_a_step_pulls_copies_together(kind):
    torch.manual_seed(0)
    problem, make = BACKBONES[kind]
    model = L2Soft().build(problem, make(), L2)
    tasks = len(problem.tasks)
    assert model.regularization() > 0  # independently initialised copies differ
    distance_before = sum(float(model.pairwise_distance(j).detach()) for j in model.tied)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.regularization().backward()  # the penalty alone
    optimizer.step()
    distance_after = sum(float(model.pairwise_distance(j).detach()) for j in model.tied)
    assert distance_after < distance_before

    identical = L2Soft().build(problem, make(), L2)
    cols = identical.columns
    for t in range(1, tasks):
        cols.stems[t].load_state_dict(cols.stems[0].state_dict())
        cols.blocks[t].load_state_dict(cols.blocks[0].state_dict())
    assert float(identical.regularization().detach()) == 0.0
    smap = identical.sharing_map(_inputs(problem))["copy_similarity"].values
    assert torch.allclose(smap, torch.ones_like(smap))


def test_l2_penalty_is_lambda_times_the_sum_over_task_pairs():
    torch.manual_seed(1)
    problem, make = BACKBONES["mlp"]
    model = L2Soft().build(problem, make(), {**L2, "tied_blocks": "last"})
    assert model.tied == [2]
    flat = [torch.cat([p.reshape(-1) for p in model.columns.block_parameters(t, 2)]) for t in range(3)]
    expected = sum((flat[t] - flat[s]).pow(2).sum() for t in range(3) for s in range(t + 1, 3))
    assert torch.allclose(model.regularization(), 0.5 * expected)
    # untied blocks carry no gradient from the penalty
    model.regularization().backward()
    assert all(p.grad is None for p in model.columns.blocks[0][0].parameters())


def _dense_penalty(weight: torch.Tensor, precisions: list[torch.Tensor]) -> torch.Tensor:
    vec = weight.reshape(-1)
    return vec @ torch.kron(precisions[0], torch.kron(precisions[1], precisions[2])) @ vec


def _prior_with_random_precisions(seed: int) -> tuple[TensorNormalPrior, list[torch.Tensor], torch.Tensor]:
    """A (3, 4, 2) prior holding random SPD precisions, those precisions, and a random weight."""
    g = torch.Generator().manual_seed(seed)
    prior = TensorNormalPrior((3, 4, 2)).double()
    precisions = []
    for mode, n in enumerate((3, 4, 2)):
        a = torch.randn(n, n, generator=g, dtype=torch.float64)
        precisions.append(a @ a.T + n * torch.eye(n, dtype=torch.float64))
        getattr(prior, f"precision{mode}").copy_(precisions[-1])
    return prior, precisions, torch.randn(3, 4, 2, generator=g, dtype=torch.float64)


def test_mrn_penalty_matches_the_dense_kronecker_form():
    prior, precisions, weight = _prior_with_random_precisions(0)
    assert torch.allclose(prior.penalty(weight), _dense_penalty(weight, precisions))


def test_mrn_update_is_the_flip_flop_estimate():
    prior, old, weight = _prior_with_random_precisions(1)
    prior.update(weight)
    # dense check of the task mode: W_(T) (O_in kron O_out) W_(T)^T with trace scaled to 3, + eps I, from the old precisions
    unfolded = weight.reshape(3, -1)
    expected = unfolded @ torch.kron(old[1], old[2]) @ unfolded.T
    assert torch.allclose(prior.covariance0, expected * 3 / torch.trace(expected) + 1e-5 * torch.eye(3, dtype=torch.float64))
    assert torch.allclose(prior.precision0 @ prior.covariance0, torch.eye(3, dtype=torch.float64), atol=1e-8)
    # the input mode used the OLD task precision, not the one just computed
    unfolded_in = weight.permute(1, 0, 2).reshape(4, -1)
    expected_in = unfolded_in @ torch.kron(old[0], old[2]) @ unfolded_in.T
    assert torch.allclose(prior.covariance1, expected_in * 4 / torch.trace(expected_in) + 1e-5 * torch.eye(4, dtype=torch.float64))


def test_mrn_precisions_stay_bounded_when_a_mode_is_rank_deficient():
    """D_in = 40 > T * D_out = 6: the input covariance estimate has rank 6; the ridge keeps every precision <= 1/eps."""
    g = torch.Generator().manual_seed(2)
    prior = TensorNormalPrior((2, 40, 3))
    weight = 100.0 * torch.randn(2, 40, 3, generator=g)
    for _ in range(20):
        prior.update(weight)
    for precision in prior.precisions():
        assert torch.isfinite(precision).all() and torch.linalg.eigvalsh(precision.double()).max() <= 1.0001e5


@pytest.mark.parametrize("kind", list(BACKBONES))
def test_mrn_recovers_the_sign_pattern_of_a_known_task_covariance(kind):
    problem, make = BACKBONES[kind]
    problem = Problem(problem.input_shape, (Task("a", "regression"), Task("b", "regression"), Task("c", "regression")))
    model = MRN().build(problem, make(), {"task_width": 6, "penalty_weight": 1e-3})
    task_cov = torch.tensor([[1.0, 0.8, -0.6], [0.8, 1.0, -0.5], [-0.6, -0.5, 1.0]])
    g = torch.Generator().manual_seed(0)
    for layer in (model.hidden, model.output):
        shape = layer.weight.shape
        draws = torch.linalg.cholesky(task_cov) @ torch.randn(3, shape[1] * shape[2], generator=g)
        with torch.no_grad():
            layer.weight.copy_(draws.reshape(shape))
    for _ in range(3):
        model.after_step()
    for prior in model.priors:
        corr = prior.task_correlation()
        assert torch.equal(torch.sign(corr), torch.sign(task_cov))
    smap = model.sharing_map(_inputs(problem))["task_correlation_hidden"].values
    assert smap[0, 1] > 0.5 and smap[0, 2] > 0.3 and torch.allclose(smap.diagonal(), torch.ones(3))


def test_mrn_training_step_calls_the_update_and_the_penalty_reaches_the_task_layers():
    torch.manual_seed(0)
    problem, make = BACKBONES["mlp"]
    model = MRN().build(problem, make(), {"task_width": 4, "penalty_weight": 1.0})
    assert model.prior_layers == ["hidden"]  # output widths differ (1, 1, 3): only the hidden layer is stacked
    model.regularization().backward()
    assert model.hidden.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.trunk.parameters())
    before = model.priors[0].covariance0.clone()
    model.after_step()
    assert not torch.allclose(model.priors[0].covariance0, before)
