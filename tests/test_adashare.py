"""AdaShare's mechanisms: skipping, the curriculum, the regularisers, sampled policies, a learned difference, a search."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import one_reference_trial, tiny_space
from mtl_search_plugins.adashare import AdaShare

from mtl_search import (
    Problem,
    Task,
    TrainConfig,
    Trainer,
    count_parameters,
    make_dataset,
)
from mtl_search.cli import main
from mtl_search.nn.backbones import build_residual_mlp
from mtl_search.training.trainer import seed_everything
from mtl_search.training.weighting import Equal

PROBLEM = Problem((6,), (Task("a", "regression"), Task("b", "regression"), Task("c", "binary")))


def _model(depth: int = 3, problem: Problem = PROBLEM, **params):
    torch.manual_seed(0)
    return AdaShare().build(problem, build_residual_mlp(problem.input_shape, depth=depth, width=8), {"tower_width": 4, **params})


def _count_calls(module: torch.nn.Module, counter: list[int]) -> None:
    module.register_forward_hook(lambda *_: counter.append(1))


def test_a_skipped_block_passes_its_input_through_and_is_not_computed():
    model = _model().eval()
    x = torch.randn(5, 6)
    with torch.no_grad():
        expected = model.blocks[2](model.blocks[0](model.stem(x)))  # block 1 skipped: block 2 reads block 0's output
    calls = {i: [] for i in range(3)}
    for i, block in enumerate(model.blocks):
        _count_calls(block, calls[i])
    model.set_policy(torch.tensor([[True, False, True], [True, False, True], [True, True, True]]))
    out = model.task_activations(x)
    assert torch.allclose(out["a"], expected) and torch.allclose(out["b"], expected)
    # block 0 runs once for all; block 1 only for c; block 2 once for a and b together, once for c
    assert [len(calls[i]) for i in range(3)] == [1, 1, 2]


def test_with_every_block_skipped_the_features_are_the_stem_output():
    model = _model().eval()
    x = torch.randn(5, 6)
    calls: list[int] = []
    for block in model.blocks:
        _count_calls(block, calls)
    model.set_policy(torch.zeros(3, 3, dtype=torch.bool))
    out = model.task_activations(x)
    for task in PROBLEM.task_names:
        assert torch.equal(out[task], model.stem(x))
    assert calls == []
    blocks_params = count_parameters(model.blocks.parameters())
    assert model.inference_parameters() == count_parameters(model.parameters()) - blocks_params - model.policy_logits.numel()


def test_relaxed_forward_mixes_block_and_input_by_the_gumbel_weights():
    model = _model(depth=1)
    model.searching, model.temperature = True, 1.0
    x = torch.randn(4, 6)
    torch.manual_seed(1)
    out = model.task_activations(x)
    torch.manual_seed(1)
    pi = torch.nn.functional.gumbel_softmax(model.policy_logits, tau=1.0, dim=-1)
    h = model.stem(x)
    for t, task in enumerate(PROBLEM.task_names):
        assert torch.allclose(out[task], pi[t, 0, 0] * model.blocks[0](h) + pi[t, 0, 1] * h, atol=1e-6)


class _SpyTrainer(Trainer):
    """Records, after each policy-phase epoch, how many blocks were unlocked and the logits' last gradient."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.policy_phases: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def train_epoch(self, model, optimizer, epoch, split=None):
        losses = super().train_epoch(model, optimizer, epoch, split)
        trains_policy = any(p is model.policy_logits for group in optimizer.param_groups for p in group["params"])
        if trains_policy:
            self.policy_phases.append((model.unlocked, model.policy_logits.grad.clone(), model.policy_logits.detach().clone()))
        return losses


def _regression_data(samples: int = 600):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 6, generator=g)
    problem = Problem((6,), (Task("a", "regression"), Task("b", "regression")))
    return make_dataset(problem, x, {"a": x[:, 0], "b": 2 * x[:, 1] * x[:, 2]}, 0.2, 0.2, 0)


def test_curriculum_unlocks_the_last_blocks_one_by_one():
    data = _regression_data()
    model = _model(depth=3, problem=data.problem, warmup_epochs=1, search_epochs=4, curriculum_speed=1, samples=1)
    trainer = _SpyTrainer(data, TrainConfig(epochs=1, batch_size=64), Equal(data.problem.task_names))
    AdaShare().fit(model, trainer)
    assert [k for k, _, _ in trainer.policy_phases] == [1, 2, 3, 3]
    for k, grad, logits in trainer.policy_phases:
        locked = 3 - k
        assert torch.count_nonzero(grad[:, :locked]) == 0  # forced to execute: not learnable
        assert torch.count_nonzero(logits[:, :locked]) == 0  # still at their (equal) initial value
        assert torch.all(grad[:, locked:].abs().sum(-1) > 0)


def test_curriculum_speed_holds_k_for_speed_epochs():
    schedule = _model(curriculum_speed=2).schedule
    assert [schedule.unlocked_blocks(e, 3) for e in range(7)] == [1, 1, 2, 2, 3, 3, 3]


def _optimise_regularisation(model, steps: int = 50):
    model.searching = True
    optimizer = torch.optim.Adam([model.policy_logits], lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        model.regularization().backward()
        optimizer.step()


@pytest.mark.parametrize("loss_form", ["paper", "official"])
def test_sparsity_alone_lowers_the_probability_of_executing(loss_form):
    model = _model(sparsity=1.0, sharing=0.0, loss_form=loss_form)
    before = model.execute_probability().detach().clone()
    _optimise_regularisation(model)
    assert torch.all(model.execute_probability() < before - 0.1)


@pytest.mark.parametrize("loss_form", ["paper", "official"])
def test_sharing_alone_pulls_two_tasks_policies_together(loss_form):
    model = _model(problem=Problem((6,), (Task("a", "regression"), Task("b", "regression"))), sparsity=0.0, sharing=1.0, loss_form=loss_form)
    with torch.no_grad():
        model.policy_logits[0, :, 0] = 2.0   # task a: execute
        model.policy_logits[1, :, 0] = -2.0  # task b: skip
    gap = lambda: (model.execute_probability()[0] - model.execute_probability()[1]).abs().detach()  # noqa: E731
    before = gap()
    _optimise_regularisation(model)
    # the paper weighs block l (1-based) by (L - l)/L: the top block is not pulled
    pulled = slice(0, 2) if loss_form == "paper" else slice(0, 3)
    assert torch.all(gap()[pulled] < before[pulled] - 0.3)


def test_curriculum_keeps_locked_blocks_out_of_the_regularisers():
    model = _model(sparsity=1.0, sharing=1.0)
    model.searching, model.unlocked = True, 1
    with torch.no_grad():
        model.policy_logits[0, :, 0] = 1.0
    model.regularization().backward()
    assert torch.count_nonzero(model.policy_logits.grad[:, :2]) == 0
    assert torch.count_nonzero(model.policy_logits.grad[:, 2]) > 0


def test_final_policies_are_sampled_from_the_softmax_not_the_argmax():
    model = _model(depth=2)
    with torch.no_grad():
        model.policy_logits[:, 0] = torch.tensor([0.0, 0.0])            # P(execute) = 0.5
        model.policy_logits[:, 1] = torch.tensor([5.0, -5.0])           # almost surely execute
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([model.sample_policies(1, g)[0] for _ in range(400)]).float()
    assert 0.4 < draws[:, :, 0].mean() < 0.6  # argmax would give one value every time
    assert draws[:, :, 1].mean() > 0.98
    assert len(model.sample_policies(50, g)) > 1
    model.unlocked = 1  # block 0 locked by the curriculum: it executes in every sample
    assert all(bool(p[:, 0].all()) for p in model.sample_policies(20, g))


def test_fit_keeps_the_sampled_policy_with_the_best_validation_score():
    data = _regression_data()
    model = _model(depth=2, problem=data.problem, warmup_epochs=1, search_epochs=1, samples=4)
    scores = []

    class Recording(Trainer):
        def fit(self, model, optimizer=None, epochs=None, split=None):
            records = super().fit(model, optimizer, epochs, split)
            if bool(model.decided):
                scores.append((min(r.score for r in records), model.decisions.clone()))
            return records

    trainer = Recording(data, TrainConfig(epochs=2, batch_size=64), Equal(data.problem.task_names))
    model = AdaShare().fit(model, trainer)
    assert len(scores) >= 2  # several distinct samples retrained (logits near 0.5 after one short search epoch)
    best_score, best_policy = min(scores, key=lambda s: s[0])
    assert torch.equal(model.decisions, best_policy)
    assert trainer.score(trainer.evaluate(model, data.val).losses) == pytest.approx(best_score, rel=1e-5)


def test_learned_policies_differ_where_one_task_needs_a_block_the_other_is_hurt_by():
    # a = x0 is read off the stem; b = 2 x1 x2 needs the block's extra nonlinearity (the
    # towers are narrow), and the block fitted for b distorts a's features.
    seed_everything(0)
    data = _regression_data(1200)
    model = AdaShare().build(data.problem, build_residual_mlp((6,), depth=1, width=16),
                             {"tower_width": 4, "warmup_epochs": 3, "search_epochs": 10, "samples": 1,
                              "policy_lr": 0.05, "sparsity": 0.0, "sharing": 0.0})
    trainer = Trainer(data, TrainConfig(epochs=1, batch_size=64, lr=1e-2), Equal(data.problem.task_names))
    AdaShare().fit(model, trainer)
    p_a, p_b = model.execute_probability()[:, 0].tolist()
    assert p_a < 0.35 and p_b > 0.65


def test_metrics_and_sharing_map_report_the_policy():
    model = _model()
    model.set_policy(torch.tensor([[True, True, False], [True, False, False], [False, False, False]]))
    metrics = model.trial_metrics()
    assert [metrics[f"executed_blocks/{t}"] for t in "abc"] == [2.0, 1.0, 0.0] and metrics["blocks_used"] == 2.0
    unused = count_parameters(model.blocks[2].parameters()) + model.policy_logits.numel()
    assert model.inference_parameters() == count_parameters(model.parameters()) - unused
    maps = model.sharing_map(torch.randn(2, 6))
    assert maps["policy"].values.tolist() == [[1, 1, 0], [1, 0, 0], [0, 0, 0]]
    assert torch.allclose(maps["execute_probability"].values, torch.full((3, 3), 0.5))
    assert maps["shared_blocks"].values[0, 1] == pytest.approx(1 / 3) and maps["shared_blocks"].values[0, 0] == pytest.approx(2 / 3)


def test_non_shape_preserving_backbones_are_refused():
    from mtl_search.nn.backbones import build_mlp

    with pytest.raises(ValueError, match="shape-preserving"):
        AdaShare().build(PROBLEM, build_mlp((6,), depth=2, width=8), {"tower_width": 4})


def test_paper_defaults_and_space_overrides(tmp_path, capsys):
    model = _model()
    assert (model.temperature, model.sparsity_weight, model.sharing_weight, model.loss_form) == (5.0, 0.05, 0.05, "paper")
    space = tiny_space(tmp_path, strategies="  adashare: {loss_form: official, tau0: {float: [1.0, 5.0]}}").read_text()
    (tmp_path / "ok.yaml").write_text(space.replace("kind: mlp", "kind: residual_mlp"))
    assert main(["validate", str(tmp_path / "ok.yaml")]) == 0
    (tmp_path / "bad.yaml").write_text(space.replace("kind: mlp", "kind: residual_mlp").replace("official", "tf"))
    assert main(["validate", str(tmp_path / "bad.yaml")]) == 2
    assert "strategies.adashare.loss_form: 'tf' is not allowed" in capsys.readouterr().err
    (tmp_path / "mlp.yaml").write_text(space)
    assert main(["validate", str(tmp_path / "mlp.yaml")]) == 2
    assert "does not support backbone kind 'mlp'" in capsys.readouterr().err


def test_adashare_space_runs_against_hard_sharing(ray_session, workdir, capsys):
    from mlflow.tracking import MlflowClient

    from mtl_search.results.store import default_tracking_uri

    space = one_reference_trial(Path(__file__).resolve().parents[1] / "search_spaces" / "adashare.yaml", workdir)
    assert main(["run", str(space)]) == 0
    capsys.readouterr()
    assert main(["report", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [o["name"] for o in report["objectives"]] == ["y1", "y2", "params"]
    assert all(t["status"] == "finished" for t in report["trials"])
    assert {t["strategy"] for t in report["trials"]} == {"hard_sharing", "adashare"}

    client = MlflowClient(default_tracking_uri())
    experiment = client.get_experiment_by_name(report["experiment"])
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("mtl_search.strategy") == "adashare"]
    assert runs
    for run in runs:
        metrics = run.data.metrics
        executed = [metrics["model/executed_blocks/y1"], metrics["model/executed_blocks/y2"]]
        assert all(0 <= n <= 2 for n in executed) and metrics["params"] > 0
        smap = json.loads(open(client.download_artifacts(run.info.run_id, "sharing_map.json", str(workdir))).read())
        assert {"execute_probability", "policy", "shared_blocks"} <= set(smap)
        assert [sum(row) for row in smap["policy"]["values"]] == executed


class _ResidualConv(torch.nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.branch = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.branch(x))


def test_works_on_any_shape_preserving_backbone_such_as_residual_conv():
    from mtl_search import Backbone

    backbone = Backbone("residual_conv", (1, 5, 5), 2, (3, 5, 5), [(3, 5, 5)] * 2, True,
                        lambda: torch.nn.Conv2d(1, 3, 3, padding=1), lambda i: _ResidualConv(3))
    problem = Problem((1, 5, 5), (Task("a", "regression"), Task("b", "regression")))
    model = AdaShare().build(problem, backbone, {"tower_width": 4})
    x = torch.randn(4, 1, 5, 5)
    model.searching = True
    assert all(out.shape == (4, 1) for out in model(x).values())  # relaxed path on 4-d activations
    model.set_policy(torch.tensor([[False, False], [True, False]]))
    activations = model.task_activations(x)
    assert torch.equal(activations["a"], model.stem(x))
    assert torch.allclose(activations["b"], model.blocks[0](model.stem(x)))
