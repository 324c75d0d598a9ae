"""Mechanisms of the mixture-of-experts family: gates, routing, balancing losses, capacity, PLE's shared gate,
DSelect-k's selectors, batched experts against a loop over experts, and the family's search space."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from mtl_search_plugins.mixture_of_experts import (
    CGC,
    PLE,
    DSelectK,
    DSelectKGate,
    MMoE,
    NoisyTopKLayer,
    OMoE,
    Switch,
    SwitchLayer,
    TopKMoE,
    prob_in_top_k,
    smooth_step,
)

from benchmarks.moe_step import main as benchmark_main
from benchmarks.moe_step import with_loop_experts
from mtl_search import Problem, Task
from mtl_search.nn.backbones import build_mlp
from mtl_search.search.prepare import prepare
from mtl_search.search.sampling import TrialSpace
from mtl_search.search.space import parse_space
from mtl_search.search.trial import make_trial_plan, train_trial

ROOT = Path(__file__).resolve().parents[1]
PROBLEM = Problem((10,), (Task("a", "regression"), Task("b", "binary"), Task("c", "multiclass", "accuracy", 3)))
BACKBONE = build_mlp((10,), depth=2, width=12)
DENSE = {"expert_width": 6, "expert_depth": 2, "tower_width": 4}
TOPK = {"experts": 6, "k": 2, "noise": True, "importance_weight": 0.01, "load_weight": 0.01, "gates": "per_task", "layers": 2, **DENSE}
SWITCH = {"experts": 4, "capacity_factor": 1.0, "alpha": 0.01, "z_loss": 1e-3, "layers": 2, "expert_width": 6, "tower_width": 4}
STRATEGIES = {
    "mmoe": (MMoE(), {"experts": 5, **DENSE}),
    "omoe": (OMoE(), {"experts": 5, **DENSE}),
    "cgc": (CGC(), {"shared_experts": 2, "experts_per_task": 2, **DENSE}),
    "ple": (PLE(), {"levels": 3, "shared_experts": 2, "experts_per_task": 2, **DENSE}),
    "topk_moe": (TopKMoE(), TOPK),
    "switch": (Switch(), SWITCH),
    "dselect_k": (DSelectK(), {"experts": 5, "k": 2, "gate": "per_example", "entropy": 0.1, "gamma": 1.0, **DENSE}),
}


def build(name: str, **changes):
    strategy, params = STRATEGIES[name]
    return strategy.build(PROBLEM, BACKBONE, {**params, **changes})


# --- gates -----------------------------------------------------------------------------------

def test_cgc_and_ple_gates_are_softmax_over_their_experts():
    torch.manual_seed(0)
    model = build("ple", levels=2)
    _, _, gates = model.encode(torch.randn(16, 10))
    assert gates[0].task.shape == (3, 16, 2 + 2) and gates[0].shared.shape == (16, 3 * 2 + 2)
    for level in gates:
        assert torch.allclose(level.task.sum(-1), torch.ones(3, 16), atol=1e-6)
    assert torch.allclose(gates[0].shared.sum(-1), torch.ones(16), atol=1e-6)
    assert gates[1].shared is None  # no shared gate on the last level
    assert build("cgc").levels[0].shared_gate is None


@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_k_gates_have_exactly_k_non_zeros_per_row(k):
    torch.manual_seed(k)
    layer = NoisyTopKLayer(2, 10, 6, [5], "relu", k, True, 0.01, 0.01).train()
    torch.nn.init.normal_(layer.gate.weight)
    gates, chosen, _ = layer.gates(torch.randn(2, 40, 10))
    assert ((gates > 0).sum(-1) == k).all()
    assert torch.allclose(gates.sum(-1), torch.ones(2, 40), atol=1e-6)
    assert torch.equal(gates.gather(-1, chosen) > 0, torch.ones_like(chosen, dtype=torch.bool))


def test_top_k_choice_is_deterministic_without_noise_and_random_with_it():
    torch.manual_seed(0)
    h = torch.randn(1, 64, 10)
    choices = {}
    for noise in (False, True):
        layer = NoisyTopKLayer(1, 10, 8, [5], "relu", 2, noise, 0.01, 0.01).train()
        torch.nn.init.normal_(layer.gate.weight, std=0.3)
        choices[noise] = (layer.gates(h)[1], layer.gates(h)[1])
    assert torch.equal(*choices[False])
    assert not torch.equal(*choices[True])


def test_load_estimator_is_the_chance_of_staying_in_the_top_k_when_redrawing_own_noise():
    torch.manual_seed(0)
    k, n, draws = 2, 5, 20000
    clean, std = torch.randn(6, n), torch.rand(6, n) + 0.3
    noisy = clean + torch.randn(6, n) * std
    estimate = prob_in_top_k(clean, noisy, std, noisy.topk(k + 1, dim=-1).values, k)
    for row in range(6):
        for i in range(n):
            others = torch.cat([noisy[row, :i], noisy[row, i + 1 :]])
            kth_excluding = others.topk(k).values[-1]
            redrawn = clean[row, i] + torch.randn(draws) * std[row, i]
            assert abs(float((redrawn > kth_excluding).float().mean()) - float(estimate[row, i])) < 0.02


# --- balancing losses --------------------------------------------------------------------------

def test_a_router_forced_to_one_expert_costs_more_balancing_loss_than_a_uniform_one():
    torch.manual_seed(0)
    h = torch.rand(1, 128, 10) + 0.1  # positive rows, so a positive weight column wins everywhere
    auxiliary = {}
    for forced in (False, True):
        layer = NoisyTopKLayer(1, 10, 4, [5], "relu", 1, True, 0.1, 0.1).train()
        if forced:
            torch.nn.init.constant_(layer.gate.weight[0, :, 0], 5.0)
        auxiliary[forced] = float(layer.gates(h)[2].detach())
    assert auxiliary[True] > 10 * auxiliary[False]

    switch = SwitchLayer(10, 4, 6, "relu", 1.0, alpha=0.01, z_loss=0.0)
    uniform_probs, balanced = torch.full((128, 4), 0.25), torch.arange(128) % 4
    forced_probs = torch.tensor([[0.97, 0.01, 0.01, 0.01]]).expand(128, -1)
    assert switch.balancing_loss(forced_probs, torch.zeros(128, dtype=torch.long)) > 3 * switch.balancing_loss(uniform_probs, balanced)


def test_switch_balancing_loss_equals_alpha_at_uniform_routing():
    layer = SwitchLayer(10, 4, 6, "relu", 1.0, alpha=0.01, z_loss=0.0)
    assert float(layer.balancing_loss(torch.full((64, 4), 0.25), torch.arange(64) % 4)) == pytest.approx(0.01, abs=1e-9)
    torch.nn.init.zeros_(layer.router)  # equal logits: P uniform, so the loss is alpha whatever f is
    _, auxiliary, _ = layer(torch.randn(1, 64, 10))
    assert float(auxiliary.detach()) == pytest.approx(0.01, abs=1e-9)
    layer.z_loss = 1e-3  # z-loss of zero logits: (log 4)^2 per row
    assert float(layer(torch.randn(1, 64, 10))[1].detach()) == pytest.approx(0.01 + 1e-3 * math.log(4) ** 2, abs=1e-7)


# --- capacity --------------------------------------------------------------------------------

def test_rows_over_capacity_are_dropped_and_pass_through_unchanged():
    n, rows = 4, 32
    layer = SwitchLayer(6, n, 5, "relu", capacity_factor=1.0, alpha=0.01, z_loss=0.0)
    with torch.no_grad():
        layer.router.zero_()
        layer.router[:, 0] = 1.0  # positive rows: expert 0 for every row
    x = torch.rand(1, rows, 6) + 0.1
    out, _, routing = layer(x)
    dropped = ~routing.kept[0, :, 0]
    assert (routing.expert == 0).all()
    assert float(dropped.float().mean()) == (n - 1) / n
    assert torch.equal(out[0, dropped], x[0, dropped])
    assert not torch.isclose(out[0, ~dropped], x[0, ~dropped]).all(-1).any()  # the kept rows went through expert 0
    assert dropped[: rows // n].logical_not().all()  # first come, first served

    model = build("switch", layers=1).train()
    with torch.no_grad():
        model.layers[0].router.zero_()
        model.layers[0].router[:, 0] = 1.0
    model(torch.randn(rows, 10))
    metrics = model.trial_metrics()
    assert metrics["layer1/dropped_fraction"] == (n - 1) / n and metrics["layer1/load/expert0"] == 1 / n


def test_switch_router_runs_in_float32_under_autocast():
    layer = SwitchLayer(6, 4, 5, "relu", 1.0, 0.01, 1e-3)
    x = torch.randn(16, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (x @ layer.router).dtype == torch.bfloat16  # what autocast would do to a plain router
        assert layer.router_logits(x).dtype == torch.float32
        out, auxiliary, _ = layer(x.unsqueeze(0))
    assert auxiliary.dtype == torch.float32 and torch.isfinite(out).all()


# --- PLE ---------------------------------------------------------------------------------------

def test_ple_second_level_shared_experts_read_only_the_shared_gate_output():
    torch.manual_seed(0)
    model = build("ple", levels=2).eval()
    first, second = model.levels
    seen = {}
    second.shared.register_forward_pre_hook(lambda module, args: seen.__setitem__("shared", args[0].detach().clone()))
    second.register_forward_pre_hook(lambda module, args: seen.__setitem__("task", args[0].detach().clone()))
    x = torch.randn(20, 10)

    def run():
        model(x)
        return seen["shared"], seen["task"]

    shared_before, task_before = run()
    # the level-2 shared input is the shared gate's mixture of ALL level-1 experts
    with torch.no_grad():
        weights = torch.softmax(first.shared_gate(x), -1)
        experts = torch.cat([first.private(x), first.shared(x)])
    assert torch.allclose(shared_before, torch.einsum("be,ebw->bw", weights, experts), atol=1e-6)

    def perturb_task_a_private_experts():
        with torch.no_grad():
            first.private.layers[0].weight[: first.per_task] += 1.0
            first.private.layers[0].bias[: first.per_task] += 1.0

    perturb_task_a_private_experts()
    shared_after, task_after = run()
    assert not torch.allclose(shared_after, shared_before)  # reached level 2's shared experts ...
    assert not torch.allclose(task_after[0], task_before[0]) and torch.allclose(task_after[1:], task_before[1:])

    # ... and only through the shared gate: closed on task a's experts, the change no longer arrives
    def close_gate_on_task_a(module, args, logits):
        logits = logits.clone()
        logits[:, : first.per_task] = -torch.inf
        return logits

    first.shared_gate.register_forward_hook(close_gate_on_task_a)
    shared_closed, _ = run()
    perturb_task_a_private_experts()
    shared_closed_after, task_closed_after = run()
    assert torch.allclose(shared_closed_after, shared_closed)
    assert not torch.allclose(task_closed_after[0], task_after[0])


def test_ple_shared_parameters_are_exactly_those_several_tasks_train():
    torch.manual_seed(0)
    model = build("ple", levels=2)
    x = torch.randn(16, 10)
    grads = {}
    for task in PROBLEM.task_names:
        model.zero_grad(set_to_none=True)
        model(x)[task].sum().backward()
        grads[task] = {name: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for name, p in model.named_parameters()}
    shared = {id(p) for p in model.shared_parameters()}
    per_task = model.levels[0].per_task
    for name, p in model.named_parameters():
        reached = [task for task in PROBLEM.task_names if grads[task][name].abs().sum() > 0]
        if id(p) in shared:
            assert len(reached) == 3, name
        elif name.startswith("towers."):
            assert reached == [name.split(".")[1]], name
        else:  # stacked per-task tensors (task gates, last-level private experts): each task trains its own slice only
            size = 1 if ".task_gates." in name else per_task
            assert name.startswith(("levels.1.private.", "levels.0.task_gates.", "levels.1.task_gates.")), name
            for t, task in enumerate(PROBLEM.task_names):
                outside = torch.ones(p.shape[0], dtype=torch.bool)
                outside[t * size : (t + 1) * size] = False
                assert grads[task][name][outside].abs().sum() == 0 and grads[task][name][~outside].abs().sum() > 0, (name, task)


# --- DSelect-k ---------------------------------------------------------------------------------

def test_smooth_step_is_zero_one_and_cubic_between():
    t = torch.tensor([-1.0, -0.5, 0.0, 0.25, 0.5, 2.0])
    expected = torch.tensor([0.0, 0.0, 0.5, -2 * 0.25**3 + 3 * 0.25 / 2 + 0.5, 1.0, 1.0])
    assert torch.allclose(smooth_step(t, 1.0), expected)


@pytest.mark.parametrize("experts,target", [(8, 5), (5, 4)])
def test_dselect_k_selectors_converge_to_one_hot_on_the_trained_expert(experts, target):
    torch.manual_seed(0)
    gate = DSelectKGate(10, gates=1, experts=experts, selectors=2, per_example=False, gamma=1.0, entropy=0.05)
    q0 = gate(torch.randn(1, 10))[0][0, 0]
    if experts == 8:
        assert float(q0.sum().detach()) == pytest.approx(1.0, abs=1e-6)  # a power of two: the weights sum to one
    optimiser = torch.optim.Adam(gate.parameters(), lr=0.05)
    for _ in range(150):
        q, auxiliary = gate(torch.randn(4, 10))
        loss = -q[:, 0, target].mean() + auxiliary
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    r, _ = gate.selector_outputs(torch.randn(1, 10))
    assert torch.equal(r.max(-1).values, torch.ones(1, 1, 2)) and torch.equal(r.sum(-1), torch.ones(1, 1, 2))  # one-hot selectors
    q, _ = gate(torch.randn(1, 10))
    assert float(q[0, 0, target].detach()) > 0.99  # k bounds the non-zeros: a selector stuck elsewhere loses its weight w


def test_dselect_k_penalty_moves_selectors_off_unreachable_codes():
    gate = DSelectKGate(10, gates=1, experts=5, selectors=1, per_example=False, gamma=1.0, entropy=0.0)
    with torch.no_grad():
        gate.z.fill_(0.4)  # mostly code 7, which names no expert
    q, penalty = gate(torch.randn(1, 10))
    assert float(q.sum().detach()) < 0.2 and float(penalty.detach()) > 4
    optimiser = torch.optim.Adam(gate.parameters(), lr=0.05)
    for _ in range(200):
        optimiser.zero_grad()
        gate(torch.randn(1, 10))[1].backward()
        optimiser.step()
    q, penalty = gate(torch.randn(1, 10))
    assert float(q.sum().detach()) == pytest.approx(1.0, abs=1e-6) and float(penalty.detach()) == pytest.approx(0.0, abs=1e-6)


def test_dselect_k_per_example_gates_depend_on_the_row():
    torch.manual_seed(0)
    model = build("dselect_k")
    torch.nn.init.normal_(model.gate.z.weight)
    q = model.gate_weights(torch.randn(8, 10))
    assert q.shape == (8, 3, 5) and not torch.allclose(q[0], q[1])
    static = build("dselect_k", gate="static").gate_weights(torch.randn(8, 10))
    assert torch.allclose(static[0], static[7])


# --- batched experts, sharing maps, statistics -------------------------------------------------

@pytest.mark.parametrize("name", list(STRATEGIES))
def test_batched_experts_give_the_loop_over_experts_outputs(name):
    torch.manual_seed(0)
    model = build(name, noise=False) if name == "topk_moe" else build(name)
    looped = with_loop_experts(model)
    x = torch.randn(33, 10)
    for mode in (True, False):
        model.train(mode), looped.train(mode)
        out, reference = model(x), looped(x)
        for task in PROBLEM.task_names:
            assert torch.allclose(out[task], reference[task], atol=1e-5), (name, mode, task)
        assert torch.allclose(model.regularization(), looped.regularization(), atol=1e-6)


def test_sparse_routing_computes_only_routed_rows():
    torch.manual_seed(0)
    layer = NoisyTopKLayer(1, 10, 8, [5], "relu", 1, True, 0.01, 0.01).train()
    seen = []
    layer.experts.experts.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    layer(torch.randn(1, 256, 10))
    experts, slots, _ = seen[0]
    assert experts == 8 and slots < 256 // 2  # an (experts, slots) buffer, not every expert on every row


def test_sharing_maps_of_the_family():
    torch.manual_seed(0)
    x = torch.randn(64, 10)
    topk = build("topk_moe").eval()
    torch.nn.init.normal_(topk.layers[0].gate.weight)
    load = topk.sharing_map(x)["layer1_load"].values
    assert load.shape == (3, 6) and torch.allclose(load.sum(1), torch.ones(3)) and not torch.allclose(load[0], load[1])
    switch = build("switch").eval().sharing_map(x)["layer1_load"]
    assert switch.columns[-1] == "dropped" and torch.allclose(switch.values.sum(1), torch.ones(3))
    ple = build("ple", levels=2).eval().sharing_map(x)
    assert set(ple) == {"level1", "level2"} and ple["level1"].columns == ["own", "shared", "other via shared gate"]
    assert (ple["level1"].values[:, 2] == 0).all() and (ple["level2"].values[:, 2] > 0).all()
    assert torch.allclose(ple["level2"].values[:, :2].sum(1), torch.ones(3), atol=1e-5)
    assert build("dselect_k").sharing_map(x)["gate_weights"].values.shape == (3, 5)


def test_routing_statistics_cover_the_last_training_epoch():
    torch.manual_seed(0)
    model = build("topk_moe").train()
    model.on_epoch_start(1)
    model(torch.randn(50, 10))
    metrics = model.trial_metrics()
    for layer in (1, 2):
        assert sum(v for k, v in metrics.items() if k.startswith(f"layer{layer}/load/")) == pytest.approx(1.0)
    model.eval()(torch.randn(50, 10))  # evaluation passes are not counted
    assert model.trial_metrics() == metrics
    model.on_epoch_start(2)
    assert model.trial_metrics() == {}


def test_auxiliary_losses_reach_regularization_and_train_the_router():
    torch.manual_seed(0)
    model = build("topk_moe", importance_weight=1.0, load_weight=1.0).train()
    model(torch.randn(64, 10))
    model.regularization().backward()
    assert model.layers[0].gate.weight.grad.abs().sum() > 0 and model.layers[0].noise_gate.weight.grad.abs().sum() > 0
    assert float(build("mmoe").regularization()) == 0.0


def test_k_above_the_expert_count_is_refused():
    with pytest.raises(ValueError, match="k=7 must lie in"):
        build("topk_moe", k=7)


# --- the family's search space and benchmark -----------------------------------------------------

def test_moe_space_trains_each_of_the_seven_strategies_in_reduced_form(tmp_path):
    import optuna

    raw = yaml.safe_load((ROOT / "search_spaces" / "moe.yaml").read_text())
    assert set(raw["strategies"]) == {"omoe", "mmoe", "cgc", "ple", "topk_moe", "switch", "dselect_k"}
    raw["data"]["options"].update(samples=300, input_dim=12)
    raw["training"].update(epochs=1, batch_size=64)
    raw["backbone"]["width"] = 16
    plan, dataset, _ = prepare(parse_space(raw, tmp_path / "moe.yaml"))
    trial_plan, define = make_trial_plan(plan), TrialSpace(plan)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for name in raw["strategies"]:
        study.enqueue_trial({"strategy": name})
        config = define(study.ask())
        assert config["strategy"] == name
        reports = []
        result = train_trial(config, dataset, trial_plan, lambda metrics, checkpoint_dir=None: reports.append(metrics))
        assert len(reports) == 2 and all(math.isfinite(result[f"val/{t}"]) for t in ("y1", "y2")), name
        maps = json.loads(result["sharing_map_json"])
        assert maps and all(0 <= v <= 1 for m in maps.values() for row in m["values"] for v in row), name
        if name in ("topk_moe", "switch"):
            assert result["model/layer1/load/expert0"] >= 0
        if name == "switch":
            assert 0 <= result["model/layer1/dropped_fraction"] < 1


def test_benchmark_quick_mode_writes_its_table(tmp_path):
    assert benchmark_main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "moe_step.json").read_text())
    assert {r["strategy"] for r in data["rows"]} >= {"mmoe", "topk_moe k=1", "switch cf=1.0", "ple (2 levels)", "dselect_k k=2"}
    assert all(r["samples_per_s"] > 0 and r["vs_loop"] > 0 for r in data["rows"])
    assert (tmp_path / "moe_step.md").read_text().count("\n| ") == len(data["rows"]) + 2  # header, rule, one row each


def test_validate_refuses_k_above_the_expert_count(tmp_path, capsys):
    from mtl_search.cli import main

    path = tmp_path / "space.yaml"
    path.write_text("data: {dataset: synthetic_correlated}\nstrategies: {topk_moe: {experts: {int: [2, 8]}, k: 3}}\n")
    assert main(["validate", str(path)]) == 2
    assert "strategies.topk_moe.k: k may be 3 but experts may be as few as 2" in capsys.readouterr().err
    path.write_text("data: {dataset: synthetic_correlated}\nstrategies: {topk_moe: {experts: {int: [3, 8]}, k: 3}}\n")
    assert main(["validate", str(path)]) == 0
