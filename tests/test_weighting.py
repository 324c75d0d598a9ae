"""Loss weighting and gradient aggregation: each method's mechanism, its pairing with strategies, its space knobs."""
from __future__ import annotations

import json
import math

import pytest
import torch
from mtl_search_plugins.adashare import AdaShare
from mtl_search_plugins.hard_sharing import HardSharing
from mtl_search_plugins.mixture_of_experts import MMoE
from mtl_search_plugins.weighting import (
    MGDA,
    DynamicWeightAverage,
    GradNorm,
    RandomLossWeighting,
    Uncertainty,
    UPGrad,
    available_aggregations,
)

from benchmarks.weighting_overhead import knob_midpoints
from mtl_search import (
    Fixed,
    Problem,
    SpaceError,
    Strategy,
    Task,
    TrainConfig,
    Trainer,
    make_dataset,
)
from mtl_search.nn.backbones import build_mlp, build_residual_mlp
from mtl_search.registry import load_registry
from mtl_search.search.space import parse_space, resolve

TASKS = ["a", "b"]
ALL_THREE = torch.arange(3)  # step_weights' index when all of three tasks train
REGRESSION = Problem((6,), (Task("a", "regression", "mse"), Task("b", "regression", "mse")))


def _noisy_data(noise: dict[str, float], samples: int = 600):
    """Two regression tasks on the same signal, each with its own label noise."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 6, generator=g)
    signal = torch.sin(x[:, 0]) + 0.5 * x[:, 1]
    y = {t: signal + sd * torch.randn(samples, generator=g) for t, sd in noise.items()}
    return make_dataset(REGRESSION, x, y, val=0.2, test=0.2, seed=0)


def _hard_sharing(problem=REGRESSION, shared_depth=2):
    torch.manual_seed(0)
    return HardSharing().build(problem, build_mlp((6,), depth=2, width=16), {"shared_depth": shared_depth, "tower_width": 8})


def _losses(model, batch):
    return model.task_losses(batch)


# ---------------------------------------------------------------- uncertainty


def test_uncertainty_learns_a_larger_variance_for_the_noisier_task():
    data = _noisy_data({"a": 0.1, "b": 1.0})
    weighting = Uncertainty(TASKS)
    trainer = Trainer(data, TrainConfig(epochs=8, batch_size=16, lr=0.03, patience=10), weighting)
    trainer.fit(_hard_sharing())
    variances = weighting.variances()
    assert variances["b"] > 5 * variances["a"]
    assert trainer.history[-1].weights["a"] > trainer.history[-1].weights["b"]  # the noisier task counts less


def test_uncertainty_optimum_follows_the_papers_form_per_task_kind():
    # eq. 7 of Kendall et al.: 1/(2 s2) L + log s for regression (optimum s2 = L), 1/s2 L + log s for classification (s2 = 2L)
    problem = Problem((6,), (Task("a", "regression", "mse"), Task("b", "binary", "logloss")))
    weighting = Uncertainty(TASKS)
    weighting.setup(problem)
    optimizer = torch.optim.Adam(weighting.parameters(), lr=0.05)
    fixed = {"a": torch.tensor(0.3), "b": torch.tensor(0.3)}
    for _ in range(800):
        optimizer.zero_grad()
        weighting.combine(fixed).backward()
        optimizer.step()
    assert weighting.variances()["a"] == pytest.approx(0.3, rel=0.02)
    assert weighting.variances()["b"] == pytest.approx(0.6, rel=0.02)


# ---------------------------------------------------------------- DWA


def test_dwa_follows_the_formula_on_a_scripted_loss_history():
    weighting = DynamicWeightAverage(["a", "b", "c"])
    history = [{"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 0.5, "b": 1.8, "c": 3.3}, {"a": 0.4, "b": 0.9, "c": 3.3}]
    applied = []
    for epoch, epoch_losses in enumerate(history, start=1):
        applied.append(weighting.step_weights(ALL_THREE).tolist())
        weighting.on_epoch_end(epoch, epoch_losses)
    assert applied[0] == [1.0, 1.0, 1.0] and applied[1] == [1.0, 1.0, 1.0]  # the first two epochs
    for k, (previous, before) in enumerate([(history[1], history[0]), (history[2], history[1])]):
        rates = {t: previous[t] / before[t] for t in "abc"}
        denominator = sum(math.exp(r / 2.0) for r in rates.values())
        expected = [3 * math.exp(rates[t] / 2.0) / denominator for t in "abc"]
        got = weighting.step_weights(ALL_THREE).tolist() if k == 1 else applied[2]
        assert got == pytest.approx(expected, rel=1e-6)
    # a task whose loss stopped falling gets the largest weight
    assert max(range(3), key=lambda i: applied[2][i]) == 2


def test_dwa_weights_logged_are_those_applied_during_the_epoch():
    weighting = DynamicWeightAverage(TASKS)
    losses = {"a": torch.tensor(1.0), "b": torch.tensor(1.0)}
    for epoch, epoch_losses in enumerate([{"a": 1.0, "b": 1.0}, {"a": 0.1, "b": 1.0}], start=1):
        weighting.combine(losses)
        weighting.on_epoch_end(epoch, epoch_losses)
    assert weighting.weights() == {"a": 1.0, "b": 1.0}  # epoch 2 still used lambda = 1
    weighting.combine(losses)
    weighting.on_epoch_end(3, {"a": 0.1, "b": 1.0})
    assert weighting.weights()["b"] > weighting.weights()["a"]


# ---------------------------------------------------------------- GradNorm


def _weighted_norm_spread(weighting: GradNorm, model, batch) -> float:
    norms = weighting.task_weights.detach() * weighting.gradient_norms(weighting.present(_losses(model, batch))[1], last_layer(model))
    return float(norms.max() / norms.min())


def last_layer(model):
    from mtl_search_plugins.weighting import last_shared_weights

    return last_shared_weights(model)


def test_gradnorm_pulls_gradient_norms_together_and_keeps_weights_summing_to_t():
    data = _noisy_data({"a": 0.1, "b": 0.1})
    data.train.y["b"] = 10.0 * data.train.y["b"]  # task b's loss (and gradient) is far larger
    model = _hard_sharing()
    weighting = GradNorm(TASKS, alpha=0.0)  # alpha 0: the target is equal weighted norms
    optimizer = torch.optim.Adam(weighting.parameters(), lr=0.03)  # the network stays put: only the weights move
    batch = data.train.subset(torch.arange(64))
    before = _weighted_norm_spread(weighting, model, batch)
    for _ in range(50):
        model.zero_grad()
        optimizer.zero_grad()
        weighting.backward(_losses(model, batch), model.regularization(), model)
        optimizer.step()
        weighting.after_step()
    after = _weighted_norm_spread(weighting, model, batch)
    assert before > 5 and after < 1.3
    assert weighting.task_weights.sum().item() == pytest.approx(2.0, rel=1e-5)
    assert weighting.task_weights[0] > weighting.task_weights[1]


class _SharedLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Parameter(torch.ones(2, 2))

    def shared_parameters(self):
        return [self.layer]


def test_gradnorm_alpha_favours_the_task_that_trains_slower():
    weighting = GradNorm(TASKS, alpha=1.0)
    model = _SharedLayer()
    weighting.initial_losses.copy_(torch.tensor([2.0, 4.0]))
    # equal gradient norms; a's loss is where it started, b's has halved: a's target norm is the larger
    losses = {"a": model.layer[0].sum(), "b": model.layer[1].sum()}
    weighting.backward(losses, torch.zeros(()), model)
    grad = weighting.task_weights.grad
    assert grad[0] < 0 < grad[1]  # gradient descent raises a's weight and lowers b's



def test_gradnorm_takes_a_tasks_initial_loss_from_its_first_labelled_batch():
    data = _noisy_data({"a": 0.1, "b": 0.1})
    model = _hard_sharing()
    weighting = GradNorm(TASKS, alpha=1.5)
    optimizer = torch.optim.Adam([*model.parameters(), *weighting.parameters()], lr=0.01)
    batches = [data.train.subset(torch.arange(i * 32, (i + 1) * 32)) for i in range(10)]
    batches[0].mask["b"] = torch.zeros(32, dtype=torch.bool)  # no label of b in the first batch
    batches[2].mask["b"] = torch.zeros(32, dtype=torch.bool)  # nor in the third
    seen = []
    for step in range(60):
        optimizer.zero_grad()
        losses = _losses(model, batches[step % 10])
        weighting.backward(losses, model.regularization(), model)
        optimizer.step()
        weighting.after_step()
        seen.append({t: float(v.detach()) for t, v in losses.items()})
        if step == 0:  # b has no L(0) yet and its weight is held at 1; a alone keeps the sum at T
            assert math.isnan(weighting.initial_losses[1]) and weighting.task_weights[1].item() == 1.0
            assert weighting.task_weights.sum().item() == pytest.approx(2.0)
        if step == 1:
            assert weighting.initial_losses.tolist() == pytest.approx([seen[0]["a"], seen[1]["b"]])
            held = weighting.task_weights[1].item()
        if step == 2:  # unlabelled again: b's weight stays where it was
            assert weighting.task_weights[1].item() == pytest.approx(held, rel=1e-6)
    ratios = torch.tensor([seen[-1][t] for t in TASKS]) / weighting.initial_losses
    assert torch.isfinite(ratios).all() and (ratios > 0).all()
    assert (weighting.task_weights > 0.2).all() and weighting.task_weights.sum().item() == pytest.approx(2.0, rel=1e-5)


# ---------------------------------------------------------------- aggregators


def test_the_installed_torchjd_offers_the_listed_aggregators():
    registry = load_registry()
    names = set(registry.weightings)
    assert {"equal", "uncertainty", "dwa", "gradnorm", "rlw"} <= names
    available = available_aggregations()
    assert {cls.name for cls in available} <= names
    # the project installs torchjd with its quadprog-projector and cagrad extras: all seven, each constructible
    assert {cls.name for cls in available} == {"upgrad", "mgda", "pcgrad", "cagrad", "imtl_g", "dualproj", "aligned_mtl"}
    for cls in available:
        assert cls(["a", "b"]).aggregator is not None


def _conflicting_losses(model) -> dict[str, torch.Tensor]:
    """Losses on the shared trunk's output: a pulls half of it up (and the other half a little), b pulls it down three times as hard."""
    features = model.shared(torch.randn(64, 6, generator=torch.Generator().manual_seed(1)))
    h, v = features[:, : features.shape[1] // 2].sum(1), features[:, features.shape[1] // 2:].sum(1)
    return {"a": ((h - h.detach() - 1) ** 2).mean() + 0.3 * ((v - v.detach() - 1) ** 2).mean(),
            "b": 3 * ((h - h.detach() + 1) ** 2).mean()}


def _task_gradients(model, losses) -> torch.Tensor:
    shared = model.shared_parameters()
    rows = [torch.cat([g.flatten() for g in torch.autograd.grad(loss, shared, retain_graph=True)]) for loss in losses.values()]
    return torch.stack(rows)


@pytest.mark.parametrize("cls", [UPGrad, MGDA])
def test_aggregated_update_does_not_conflict_with_any_task(cls):
    model = _hard_sharing()
    jacobian = _task_gradients(model, _conflicting_losses(model))
    assert (jacobian @ jacobian.sum(0)).min() < 0  # the plain sum would increase one task's loss
    cls(TASKS).backward(_conflicting_losses(model), model.regularization(), model)
    update = torch.cat([p.grad.flatten() for p in model.shared_parameters()])
    assert update.norm() > 0
    inner = jacobian @ update
    assert (inner >= -1e-6 * jacobian.norm(dim=1) * update.norm()).all()


def test_aggregator_leaves_private_gradients_as_the_plain_sum():
    data = _noisy_data({"a": 0.1, "b": 0.5})
    model = _hard_sharing()
    batch = data.train
    sum(_losses(model, batch).values()).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if name.startswith(("towers", "private"))}
    model.zero_grad()
    UPGrad(TASKS).backward(_losses(model, batch), model.regularization(), model)
    for name, grad in expected.items():
        assert torch.allclose(dict(model.named_parameters())[name].grad, grad, atol=1e-6)


# ---------------------------------------------------------------- every method x strategy


def _adashare_short_schedule() -> dict:
    knobs = {name: knob.value for name, knob in AdaShare.knobs.items() if isinstance(knob, Fixed)}
    return {**knobs, "tower_width": 4, "warmup_epochs": 1, "search_epochs": 1, "samples": 1}


@pytest.mark.parametrize("name", sorted(load_registry().weightings))
@pytest.mark.parametrize("strategy, params, build", [
    (HardSharing(), {"shared_depth": 1, "tower_width": 4}, build_mlp),
    (HardSharing(), {"shared_depth": 0, "tower_width": 4}, build_mlp),
    (MMoE(), {"experts": 2, "expert_width": 8, "expert_depth": 1, "tower_width": 4}, build_mlp),
    (AdaShare(), _adashare_short_schedule(), build_residual_mlp),  # its own schedule: warm-up, weight/policy phases, retraining
], ids=["hard_sharing", "hard_sharing_depth0", "mmoe", "adashare"])
def test_every_weighting_trains_every_declaring_strategy(name, strategy, params, build):
    data = _noisy_data({"a": 0.1, "b": 0.5}, samples=200)
    cls = load_registry().weightings[name]
    torch.manual_seed(0)
    model = strategy.build(REGRESSION, build((6,), depth=2, width=8), params)
    reports = []
    trainer = Trainer(data, TrainConfig(epochs=2, batch_size=64, lr=0.01), cls(TASKS, **knob_midpoints(cls)), report=reports.append)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    strategy.fit(model, trainer)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert reports and all(math.isfinite(r[f"weight/{t}"]) for r in reports for t in TASKS)


@pytest.mark.parametrize("name", sorted(load_registry().weightings))
def test_a_step_training_only_some_tasks_weights_only_those(name):
    # a schedule that trains one task at a time (LASEM's sequential mode) passes only its losses
    cls = load_registry().weightings[name]
    weighting = cls(TASKS, **knob_midpoints(cls))
    weighting.setup(REGRESSION)
    model = _hard_sharing()
    losses = model.task_losses(_noisy_data({"a": 0.1, "b": 0.5}, samples=100).train)
    weighting.backward({"a": losses["a"]}, model.regularization(), model)
    tower_b = [p.grad for p in model.towers["b"].parameters()]
    assert all(g is None or not g.any() for g in tower_b)  # b's loss took no part
    assert any(p.grad is not None and p.grad.any() for p in model.towers["a"].parameters())
    weighting.on_epoch_end(1, {"a": float(losses["a"].detach()), "b": 0.0})
    assert weighting.weights()["b"] == 1.0 and math.isfinite(weighting.weights()["a"])


class _NoSharedDeclaration(Strategy):
    name = "columns"
    family = "test"


def test_validate_rejects_a_gradient_method_with_a_strategy_declaring_no_shared_parameters():
    registry = load_registry()
    registry.strategies["columns"] = _NoSharedDeclaration()
    space = parse_space({"data": {"dataset": "synthetic_correlated"}, "strategies": {"columns": {}, "hard_sharing": {}},
                         "training": {"weighting": {"choice": ["equal", "upgrad"]}}})
    with pytest.raises(SpaceError, match="training.weighting: weighting 'upgrad' cannot train strategy 'columns'.*declares none"):
        resolve(space, registry, REGRESSION)
    fine = parse_space({"data": {"dataset": "synthetic_correlated"}, "strategies": {"columns": {}},
                        "training": {"weighting": {"choice": ["equal", "dwa", "uncertainty", "rlw"]}}})
    assert set(resolve(fine, registry, REGRESSION).weightings) == {"equal", "dwa", "uncertainty", "rlw"}


# ---------------------------------------------------------------- space knobs


def _resolve_training(training: dict):
    space = parse_space({"data": {"dataset": "synthetic_correlated"}, "strategies": {"hard_sharing": {}}, "training": training})
    return resolve(space, load_registry(), REGRESSION)


def test_a_space_narrows_a_weighting_knob():
    plan = _resolve_training({"weighting": {"choice": ["gradnorm", "dwa"]},
                              "weighting_options": {"gradnorm": {"alpha": {"float": [0.5, 1.0]}}, "dwa": {"temperature": {"float": [1.0, 4.0]}}}})
    alpha = plan.weightings["gradnorm"][1]["alpha"]
    assert (alpha.low, alpha.high) == (0.5, 1.0)
    temperature = plan.weightings["dwa"][1]["temperature"]
    assert (temperature.low, temperature.high) == (1.0, 4.0)


@pytest.mark.parametrize("training, message", [
    ({"weighting": "gradnorm", "weighting_options": {"gradnorm": {"alhpa": 1.0}}}, "training.weighting_options.gradnorm.alhpa: unknown knob 'alhpa'"),
    ({"weighting": "gradnorm", "weighting_options": {"gradnorm": {"alpha": -1.0}}}, "training.weighting_options.gradnorm.alpha"),
    ({"weighting": "equal", "weighting_options": {"gradnorm": {"alpha": 1.0}}}, "training.weighting_options.gradnorm: 'gradnorm' is not a weighting of this space"),
    ({"weighting": "gradnorm", "weighting_options": {"gradnorm": [1]}}, "training.weighting_options.gradnorm: expected a mapping"),
])
def test_bad_weighting_options_name_their_key_path(training, message):
    with pytest.raises(SpaceError) as info:
        _resolve_training(training)
    assert str(info.value).startswith(message)


def test_random_loss_weighting_draws_fresh_softmax_weights():
    weighting = RandomLossWeighting(["a", "b", "c"])
    draws = torch.stack([weighting.step_weights(ALL_THREE) for _ in range(200)])
    assert torch.allclose(draws.sum(1), torch.ones(200))
    assert (draws > 0).all() and draws.std(0).min() > 0.05
    assert torch.allclose(draws.mean(0), torch.full((3,), 1 / 3), atol=0.03)


# ---------------------------------------------------------------- through the search's sampling and the trial


def test_a_sampled_trial_uses_the_spaces_knob_range_and_logs_weights_per_epoch():
    import optuna

    from mtl_search.search.prepare import prepare
    from mtl_search.search.sampling import TrialSpace
    from mtl_search.search.trial import TrialPlan, train_trial

    space = parse_space({
        "data": {"dataset": "synthetic_correlated", "options": {"samples": 300, "input_dim": 6, "seed": 0}},
        "backbone": {"kind": "mlp", "depth": 2, "width": 8},
        "strategies": {"hard_sharing": {"shared_depth": 2}},
        "training": {"epochs": 2, "batch_size": 64, "weighting": "gradnorm", "weighting_options": {"gradnorm": {"alpha": {"float": [0.5, 0.6]}}}},
    })
    plan, dataset, _ = prepare(space)
    config = TrialSpace(plan)(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask())
    assert config["training.weighting"] == "gradnorm" and 0.5 <= config["weighting.gradnorm.alpha"] <= 0.6
    trial_plan = TrialPlan(plan.problem, {n: s for n, (s, _) in plan.strategies.items()}, plan.backbone_kind,
                           {n: cls for n, (cls, _) in plan.weightings.items()}, epochs=2, patience=5, seed=0,
                           cpus_per_trial=1, gpus_per_trial=0)
    reports = []
    train_trial(config, dataset, trial_plan, lambda metrics, checkpoint_dir=None: reports.append(metrics))
    epochs = [r for r in reports if "epoch" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for r in epochs:  # GradNorm's weights are renormalised to sum to T = 2 after every step
        assert r["weight/y1"] + r["weight/y2"] == pytest.approx(2.0, rel=1e-5)
    assert epochs[-1]["weight/y1"] != pytest.approx(1.0)


def test_overhead_benchmark_quick_run_writes_its_table(tmp_path):
    from benchmarks.weighting_overhead import main as benchmark

    assert benchmark(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "weighting_overhead_quick.json").read_text())
    assert set(result["ratio_to_equal"]) == set(load_registry().weightings)
    assert result["ratio_to_equal"]["equal"] == 1.0
    table = (tmp_path / "weighting_overhead_quick.md").read_text()
    assert "| upgrad |" in table
