"""Methods as their papers (or official code) define them: GradNorm's layer, AdaShare's official losses, Switch's
router, cross-stitch's alpha update, DSelect-k's unreachable codes, early stopping's patience, image experts."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from mtl_search_plugins.adashare import OFFICIAL_POLICY_WEIGHT_DECAY, AdaShare
from mtl_search_plugins.datasets import synthetic_correlated
from mtl_search_plugins.mixture_of_experts import (
    DSelectKGate,
    SwitchLayer,
)
from mtl_search_plugins.soft_sharing import CrossStitch
from mtl_search_plugins.weighting import (
    DynamicWeightAverage,
    GradNorm,
    last_shared_weights,
)

from mtl_search import (
    BackboneExperts,
    MultiTaskModel,
    Problem,
    StackedLinear,
    Task,
    TrainConfig,
    Trainer,
)
from mtl_search.knobs import smallest_values
from mtl_search.nn.backbones import build_conv, build_mlp, build_residual_mlp
from mtl_search.registry import load_registry
from mtl_search.training.weighting import Equal

REGISTRY = load_registry()
PROBLEM = Problem((8,), (Task("a", "regression"), Task("b", "regression")))


# ---------------------------------------------------------------- GradNorm's W

# strategy -> (knob overrides, the names of the parameters GradNorm must measure)
GRADNORM_LAYERS = {
    "mmoe": ({"expert_depth": 2}, ["experts.layers.1.weight"]),
    "omoe": ({"expert_depth": 2}, ["experts.layers.1.weight"]),
    "dselect_k": ({"expert_depth": 2}, ["experts.layers.1.weight"]),
    "cgc": ({"expert_depth": 2}, ["levels.0.shared.layers.1.weight"]),
    "ple": ({"expert_depth": 2, "levels": 2}, ["levels.1.shared.layers.1.weight"]),
    "topk_moe": ({"expert_depth": 2, "layers": 2}, ["layers.1.experts.experts.layers.1.weight"]),
    "switch": ({"layers": 2}, ["layers.1.experts.experts.layers.1.weight"]),  # the FFN's output matrix, not the router
    # the last stitch point's block of every column (alpha mixes them; it is not a layer's weights)
    "cross_stitch": ({"stitch_blocks": "first_half"}, ["columns.blocks.0.1.0.weight", "columns.blocks.1.1.0.weight"]),
    "hard_sharing": ({"shared_depth": 2}, ["shared.2.0.weight"]),  # the default rule: the last shared Linear's weight
}


def _build(name: str, overrides: dict, backbone=None):
    strategy = REGISTRY.strategies[name]
    backbone = backbone or build_mlp((8,), depth=3, width=16)
    params = smallest_values(strategy.knobs, {"depth": backbone.depth}) | overrides
    torch.manual_seed(0)
    return strategy.build(PROBLEM, backbone, params)


@pytest.mark.parametrize("name", list(GRADNORM_LAYERS))
def test_gradnorm_measures_the_weight_matrix_of_the_last_shared_layer(name, monkeypatch):
    overrides, expected = GRADNORM_LAYERS[name]
    model = _build(name, overrides)
    names = {id(p): n for n, p in model.named_parameters()}
    assert [names[id(p)] for p in last_shared_weights(model)] == expected
    # and GradNorm's update reads exactly those tensors
    seen = []
    original = GradNorm.gradient_norms
    monkeypatch.setattr(GradNorm, "gradient_norms", lambda self, losses, layer: seen.append(layer) or original(self, losses, layer))
    weighting = GradNorm(PROBLEM.task_names)
    x, y = torch.randn(16, 8), torch.randn(16)
    out = model(x)
    weighting.backward({t: F.mse_loss(out[t].squeeze(-1), y) for t in PROBLEM.task_names}, model.regularization(), model)
    assert [names[id(p)] for p in seen[0]] == expected
    assert weighting.task_weights.grad is not None and torch.isfinite(weighting.task_weights.grad).all()


class _StackedShared(MultiTaskModel):
    """Shared stacked layer whose 3-D bias comes after its weight: the default rule must skip the bias."""

    def __init__(self):
        super().__init__(PROBLEM)
        self.shared = StackedLinear(2, 8, 4)
        self.norm_scale = torch.nn.Parameter(torch.ones(4))

    def shared_parameters(self):
        return [self.shared.weight, self.shared.bias, self.norm_scale]


def test_the_default_last_shared_weights_skip_biases_of_any_rank():
    model = _StackedShared()
    assert [p is model.shared.weight for p in model.last_shared_weights()] == [True]


def test_gradnorm_norm_over_several_tensors_is_the_norm_of_their_joint_gradient():
    a, b = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(3, 1))
    loss = (a * 3).sum() + (b * 4).sum()
    norms = GradNorm(["t"]).gradient_norms(loss.unsqueeze(0), [a, b])
    assert norms.item() == pytest.approx(math.sqrt(4 * 9 + 3 * 16))


# ---------------------------------------------------------------- AdaShare, loss_form: official

def _official_sparsity(task_logits: list[torch.Tensor], num_train_layers: int) -> torch.Tensor:
    """envs/blockdrop_env.py get_sparsity_loss2, task-specific policies, is_sharing on (the official configs):
    per task, cross-entropy of the last min(k, L) blocks' logits toward class 1 (skip), mean over those blocks."""
    total = torch.zeros(())
    for logits in task_logits:
        blocks = min(num_train_layers, logits.shape[0])
        total = total + F.cross_entropy(logits[-blocks:], torch.ones(blocks, dtype=torch.long))
    return total


def _official_hamming(task_logits: list[torch.Tensor]) -> torch.Tensor:
    """get_hamming_loss with diff_sparsity_weights on (the official configs): for t_i <= t_j,
    sum over all L blocks of (l+1)/L |logits_i[l, 0] - logits_j[l, 0]|."""
    layers = task_logits[0].shape[0]
    weights = (torch.arange(layers) + 1).float() / layers
    total = torch.zeros(())
    for i in range(len(task_logits)):
        for j in range(i, len(task_logits)):
            total = total + torch.sum(weights * torch.abs(task_logits[i][:, 0] - task_logits[j][:, 0]))
    return total


def _adashare(tasks: int, depth: int, loss_form: str = "official"):
    problem = Problem((6,), tuple(Task(f"t{i}", "regression") for i in range(tasks)))
    return AdaShare().build(problem, build_residual_mlp((6,), depth=depth, width=8), {"tower_width": 4, "loss_form": loss_form})


@pytest.mark.parametrize("tasks,depth,unlocked", [(2, 4, 1), (3, 4, 3), (3, 5, 5)])
def test_adashare_official_losses_equal_a_port_of_the_official_code(tasks, depth, unlocked):
    model = _adashare(tasks, depth)
    with torch.no_grad():
        model.policy_logits.copy_(torch.randn(tasks, depth, 2, generator=torch.Generator().manual_seed(tasks + depth)) * 2)
    model.unlocked = unlocked
    logits = list(model.policy_logits.detach())
    assert model.sparsity_loss().item() == pytest.approx(_official_sparsity(logits, unlocked).item(), rel=1e-5)
    assert model.sharing_loss().item() == pytest.approx(_official_hamming(logits).item(), rel=1e-5)


def test_adashare_official_policy_optimiser_is_adam_with_l2_weight_decay():
    model = _adashare(2, 3)
    trainer = Trainer(synthetic_correlated(correlation=0.5, tasks=2, samples=60, input_dim=6, sin_terms=1, scale=1.0, noise=0.1,
                                           seed=0, val=0.2, test=0.2), TrainConfig(), Equal(["t0", "t1"]))
    (group,) = model.policy_param_groups()
    assert group["weight_decay"] == OFFICIAL_POLICY_WEIGHT_DECAY == 5e-4
    optimizer = trainer.make_optimizer(model, model.policy_param_groups())
    with torch.no_grad():
        model.policy_logits.fill_(1.0)
    optimizer.zero_grad()
    (model.policy_logits * 0).sum().backward()  # no loss gradient: only the decay acts
    optimizer.step()
    # Adam's coupled L2: the gradient is 5e-4 * p, and Adam's first step moves by lr whatever its size
    # (AdamW's decoupled decay would move p by lr * 5e-4 * p, 2000 times less)
    assert torch.allclose(model.policy_logits.detach(), torch.full_like(model.policy_logits, 1.0 - model.schedule.policy_lr), atol=1e-6)
    assert _adashare(2, 3, "paper").policy_param_groups()[0]["weight_decay"] == 0.0


# ---------------------------------------------------------------- Switch's router

def test_switch_router_is_truncated_at_two_standard_deviations_with_the_target_std():
    torch.manual_seed(0)
    width = 256
    layer = SwitchLayer(width, experts=64, expert_width=8, activation="relu", capacity_factor=1.0, alpha=0.01, z_loss=0.0)
    target = math.sqrt(0.1 / width)  # variance_scaling(0.1, fan_in): the std of the truncated draws
    before = target / 0.87962566103423978  # the std before truncation (0.8796: a standard normal truncated at +-2)
    router = layer.router.detach()
    assert router.abs().max() <= 2 * before
    assert router.abs().max() > 1.9 * before  # truncated there, not narrower
    assert router.std().item() == pytest.approx(target, rel=0.02)


# ---------------------------------------------------------------- cross-stitch alpha

def test_cross_stitch_alpha_steps_by_sgd_and_stays_near_convex_at_the_largest_multiplier():
    largest = CrossStitch.knobs["alpha_lr_multiplier"].high
    data = synthetic_correlated(correlation=0.5, tasks=2, samples=1200, input_dim=10, sin_terms=3, scale=1.0, noise=0.1, seed=0,
                                val=0.2, test=0.2)
    torch.manual_seed(0)
    model = CrossStitch().build(data.problem, build_mlp((10,), depth=2, width=32),
                                {"stitch_blocks": "all", "alpha_per_channel": False, "alpha_lr_multiplier": largest, "tower_width": 8})
    trainer = Trainer(data, TrainConfig(lr=1e-3, batch_size=32), Equal(data.problem.task_names))
    optimizer = trainer.make_optimizer(model)
    batches = list(data.train.batches(32, shuffle=True, generator=torch.Generator().manual_seed(0)))[:25]
    for step, batch in enumerate(batches):
        optimizer.zero_grad()
        trainer.weighting.backward(model.task_losses(batch), model.regularization(), model)
        if step == 0:  # an SGD step: alpha moves by lr * multiplier * its gradient
            before = {j: (u.alpha.detach().clone(), u.alpha.grad.clone()) for j, u in model.units.items()}
        optimizer.step()
        if step == 0:
            for j, (alpha, grad) in before.items():
                assert torch.allclose(model.units[j].alpha.detach(), alpha - 1e-3 * largest * grad, atol=1e-6)
    # sensible: every row still sums to about one and no entry left [-0.25, 1.25] (under AdamW rows reach 2-5)
    for unit in model.units.values():
        alpha = unit.alpha.detach()
        assert torch.all((alpha.sum(-1) - 1).abs() < 0.25), alpha
        assert alpha.min() > -0.25 and alpha.max() < 1.25, alpha


# ---------------------------------------------------------------- DSelect-k

@pytest.mark.parametrize("per_example", [False, True])
def test_dselect_k_stays_finite_with_selectors_saturated_on_codes_that_name_no_expert(per_example):
    torch.manual_seed(0)
    gate = DSelectKGate(4, gates=2, experts=3, selectors=2, per_example=per_example, gamma=1.0, entropy=0.1)
    with torch.no_grad():  # every bit saturated at 1: code 3 (binary 11), and 3 experts are codes 0..2
        if per_example:
            gate.z.weight.zero_()
            gate.z.bias.fill_(5.0)
        else:
            gate.z.fill_(5.0)
    q, auxiliary = gate(torch.randn(6, 4))
    assert torch.isfinite(auxiliary) and torch.isfinite(q).all()
    assert torch.all(q == 0)  # the saturated selectors reach no expert
    auxiliary.backward()  # and the gradient through the guard is finite
    grads = [p.grad for p in gate.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------- early stopping

def _trainer_with_scores(scores: list[float], patience: int, weighting=None):
    data = synthetic_correlated(correlation=0.5, tasks=2, samples=200, input_dim=6, sin_terms=1, scale=1.0, noise=0.1, seed=0,
                                val=0.2, test=0.2)
    trainer = Trainer(data, TrainConfig(epochs=len(scores), batch_size=64, patience=patience), weighting or Equal(data.problem.task_names))
    sequence = iter(scores)
    trainer.score = lambda losses: next(sequence)  # scores chosen by the test
    model = REGISTRY.strategies["hard_sharing"].build(data.problem, build_mlp((6,), depth=1, width=8), {"shared_depth": 1, "tower_width": 4})
    return trainer, model


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_early_stopping_stops_after_patience_epochs_without_improvement(patience):
    trainer, model = _trainer_with_scores([1.0] + [2.0] * 10, patience)
    records = trainer.fit(model)
    assert len(records) == 1 + patience


def test_early_stopping_restores_the_weightings_state_of_the_best_epoch():
    weighting = DynamicWeightAverage(["y1", "y2"])
    trainer, model = _trainer_with_scores([3.0, 2.0, 1.0, 5.0, 5.0, 5.0], 2, weighting)
    trainer.fit(model)
    assert len(trainer.history) == 5  # best at epoch 3, then 2 epochs without improvement
    assert len(weighting.history) == 3  # the loss history up to the best epoch, as its weights
    expected = 2 * torch.softmax(weighting.history[-1] / weighting.history[-2] / 2.0, dim=0)
    assert torch.allclose(weighting.lambdas, expected.float())


def test_early_stopping_restores_gradnorms_weights_and_initial_losses():
    weighting = GradNorm(["y1", "y2"])
    trainer, model = _trainer_with_scores([1.0, 5.0, 5.0], 2, weighting)
    states = []
    original = trainer.end_epoch

    def end_epoch(*args, **kwargs):
        states.append({k: v.clone() for k, v in weighting.state_dict().items()})
        return original(*args, **kwargs)

    trainer.end_epoch = end_epoch
    trainer.fit(model)
    assert len(states) == 3 and not torch.equal(states[0]["task_weights"], states[-1]["task_weights"])
    for key, value in states[0].items():
        assert torch.equal(weighting.state_dict()[key], value), key


# ---------------------------------------------------------------- mixtures of experts on images

def test_backbone_experts_equal_a_loop_over_separately_run_experts():
    torch.manual_seed(0)
    backbone = build_conv((1, 8, 8), [4, 8], 3, "max", "flatten")
    experts = BackboneExperts(3, backbone).train()
    loop = [experts.expert(i) for i in range(3)]
    x = torch.randn(10, 64)
    out = experts(x)
    reference = torch.stack([m(x.view(10, 1, 8, 8)) for m in loop])
    assert out.shape == (3, 10, backbone.out_features)
    assert torch.allclose(out, reference, atol=1e-5)
    out.square().sum().backward()
    reference.square().sum().backward()
    first_conv = experts.last_weight()  # the stacked conv of the last block
    assert torch.allclose(first_conv.grad[1], loop[1][2][0].weight.grad, atol=1e-4)
    # BatchNorm running statistics were updated per expert, as the loop's were
    stacked_mean = experts.stacked.get_buffer("1_1_running_mean")
    assert torch.allclose(stacked_mean, torch.stack([m[1][1].running_mean for m in loop]), atol=1e-6)
    experts.eval()
    assert torch.allclose(experts(x), torch.stack([m.eval()(x.view(10, 1, 8, 8)) for m in loop]), atol=1e-5)


def test_backbone_experts_start_as_separately_built_backbones():
    backbone = build_conv((1, 8, 8), [4], 3, "max", "flatten")
    torch.manual_seed(0)
    experts = BackboneExperts(2, backbone)
    torch.manual_seed(0)
    separate = [torch.nn.Sequential(backbone.new_stem(), *backbone.new_blocks(), backbone.new_features()) for _ in range(2)]
    assert torch.equal(experts.stacked.get_parameter("1_0_weight")[1], separate[1][1][0].weight)


def test_mmoe_with_backbone_experts_trains_a_digits_trial(request, tmp_path):
    import optuna
    import yaml

    from mtl_search.search.prepare import prepare
    from mtl_search.search.sampling import TrialSpace
    from mtl_search.search.space import load_space
    from mtl_search.search.trial import TrialPlan, train_trial

    space = yaml.safe_load((request.config.rootpath / "search_spaces" / "digits.yaml").read_text())
    space["data"]["options"].update(samples=200)
    space["backbone"]["channels"] = [4, 8]
    space["strategies"] = {"mmoe": {"experts": 2, "experts_on": "backbone"}}
    space["training"].update(epochs=1, batch_size=64)
    path = tmp_path / "digits_backbone_experts.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    plan, dataset, _ = prepare(load_space(path))
    trial_plan = TrialPlan(plan.problem, {n: s for n, (s, _) in plan.strategies.items()}, plan.backbone_kind,
                           {n: cls for n, (cls, _) in plan.weightings.items()}, epochs=1, patience=1, seed=0, cpus_per_trial=1, gpus_per_trial=0)
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    config = TrialSpace(plan)(study.ask())
    assert config["mmoe.experts_on"] == "backbone"
    reports = []
    result = train_trial(config, dataset, trial_plan, lambda metrics, checkpoint_dir=None: reports.append(metrics))
    assert len(reports) == 2 and 0.0 <= result["val/left"] <= 1.0
    assert json.loads(result["sharing_map_json"])["gate_weights"]["columns"] == ["expert0", "expert1"]


@pytest.mark.parametrize("name,params", [("mmoe", {}), ("cgc", {}), ("ple", {"levels": 2}), ("dselect_k", {})])
def test_backbone_experts_meet_the_strategy_contract_on_every_backbone_kind(name, params):
    from mtl_search.testing import check_strategy

    check_strategy(REGISTRY.strategies[name], params={"experts_on": "backbone", **params}, epochs=4)


# ---------------------------------------------------------------- per-group optimisers

def test_grouped_optimizer_steps_each_group_with_its_own_algorithm():
    from mtl_search.training.optim import GroupedOptimizer, make_optimizer

    torch.manual_seed(0)
    a, b, c = (torch.nn.Parameter(torch.randn(3)) for _ in range(3))
    reference = [torch.nn.Parameter(p.detach().clone()) for p in (a, b, c)]
    grouped = make_optimizer([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.5, "optimizer": "sgd"},
                              {"params": [c], "lr": 0.1, "optimizer": "adam", "weight_decay": 0.01}], lr=0.1, weight_decay=0.02)
    assert isinstance(grouped, GroupedOptimizer) and len(grouped.param_groups) == 3
    plain = [torch.optim.AdamW([reference[0]], lr=0.1, weight_decay=0.02), torch.optim.SGD([reference[1]], lr=0.5, weight_decay=0.02),
             torch.optim.Adam([reference[2]], lr=0.1, weight_decay=0.01)]
    for _ in range(3):
        grouped.zero_grad()
        for optimizer in plain:
            optimizer.zero_grad()
        (sum((p ** 2).sum() for p in (a, b, c)) + sum((p ** 2).sum() for p in reference)).backward()
        grouped.step()
        for optimizer in plain:
            optimizer.step()
    for mine, theirs in zip((a, b, c), reference):
        assert torch.allclose(mine, theirs)
    state = grouped.state_dict()
    fresh = make_optimizer([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.5, "optimizer": "sgd"},
                            {"params": [c], "lr": 0.1, "optimizer": "adam"}], lr=0.1, weight_decay=0.02)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.state[a]["exp_avg"], grouped.state[a]["exp_avg"])
    assert isinstance(make_optimizer([{"params": [a]}], lr=0.1, weight_decay=0.0), torch.optim.AdamW)
    with pytest.raises(ValueError, match="parameter group optimizer rmsprop is not one of adamw, adam, sgd"):
        make_optimizer([{"params": [a], "optimizer": "rmsprop"}], lr=0.1, weight_decay=0.0)
