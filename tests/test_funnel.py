"""Conversion funnels: masks from the parent, ESMM's entire-space loss, AITM's transfer and calibrator, the funnel data set."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mtl_search_plugins.funnel import (
    FUNNEL_DEFAULTS,
    AITMModel,
    ESMMModel,
    calibration_loss,
    generate_funnel,
    synthetic_funnel,
)

from mtl_search import (
    Problem,
    SpaceError,
    Split,
    Task,
    TrainConfig,
    Trainer,
    predict,
    split_rows,
)
from mtl_search.data.dataset import apply_funnel_masks
from mtl_search.nn.create import create_model
from mtl_search.registry import load_registry
from mtl_search.results.saved_models import load_model_dir, prediction_rows, save_model
from mtl_search.search.prepare import prepare
from mtl_search.search.space import load_space, parse_space
from mtl_search.training.weighting import Equal

REPO = Path(__file__).resolve().parents[1]
REGISTRY = load_registry()
FUNNEL = Problem((4,), (Task("clicked", "binary"), Task("converted", "binary", after="clicked")))


def _model(name, problem=FUNNEL, knobs=None, backbone=None, inputs=None):
    strategy = REGISTRY.strategies[name]
    defaults = {"shared_depth": 0, "tower_width": 8, **({"alpha": 0.6} if name == "aitm" else {})}
    return create_model(problem, strategy, REGISTRY.backbones["mlp"], {**defaults, **(knobs or {})},
                        backbone or {"depth": 1, "width": 8}, inputs)


def test_funnel_labels_are_masked_where_the_parent_is_negative_or_unlabelled():
    x = torch.zeros(6, 4)
    y = {"clicked": torch.tensor([1.0, 1, 0, 0, 1, 1]), "converted": torch.tensor([1.0, 0, 1, 0, 1, 0])}
    split = Split(x, y, {"clicked": torch.tensor([True, True, True, True, False, True]),
                         "converted": torch.tensor([True, True, True, True, True, False])})
    from mtl_search import Dataset

    data = apply_funnel_masks(Dataset(FUNNEL, split, split.subset(torch.arange(6)), split.subset(torch.arange(6))))
    expected = torch.tensor([True, True, False, False, False, False])  # clicked and labelled, and converted labelled
    assert torch.equal(data.train.mask["converted"], expected)
    assert torch.equal(apply_funnel_masks(data).train.mask["converted"], expected)  # idempotent
    assert "clicked" in data.train.mask and torch.equal(data.train.mask["clicked"], split.mask["clicked"])


def test_space_validates_after_and_rejects_bad_funnels(tmp_path):
    base = {"data": {"dataset": "synthetic_funnel", "options": {"samples": 200}}, "strategies": {"hard_sharing": {}}}
    plan, data, _ = prepare(parse_space(base), REGISTRY)
    assert plan.problem.task("converted").after == "clicked"
    assert torch.equal(data.train.mask["converted"], data.train.y["clicked"] == 1)
    for tasks, path, fragment in [
        ({"converted": {"after": "clickd"}}, "tasks.converted.after", "unknown parent task 'clickd'"),
        ({"clicked": {"after": "converted"}}, "tasks.clicked.after", "cycle"),
        ({"converted": {"after": "converted"}}, "tasks.converted.after", "after itself"),
    ]:
        with pytest.raises(SpaceError) as err:
            prepare(parse_space({**base, "tasks": tasks}), REGISTRY)
        assert err.value.path == path and fragment in str(err.value)
    with pytest.raises(SpaceError) as err:  # the parent of a funnel task must be binary
        Problem((1,), (Task("dwell", "regression"), Task("buy", "binary", after="dwell")))
    assert err.value.path == "tasks.buy.after" and "binary" in str(err.value)
    no_funnel = {"data": {"dataset": "synthetic_correlated", "options": {"samples": 100}}, "strategies": {"esmm": {}}}
    with pytest.raises(SpaceError) as err:  # a funnel strategy on tasks without a funnel: a clean error before any trial
        prepare(parse_space(no_funnel), REGISTRY)
    assert err.value.path == "strategies.esmm" and "after:" in str(err.value)


def test_esmm_ctcvr_never_exceeds_ctr_and_predictions_report_all_three():
    torch.manual_seed(0)
    model = _model("esmm")
    x = torch.randn(200, 4) * 3
    p = predict(model, x)
    assert set(p) == {"clicked", "converted", "converted.joint"}  # pCTR, pCVR, pCTCVR
    assert torch.allclose(p["converted.joint"], p["clicked"] * p["converted"])
    assert bool((p["converted.joint"] <= p["clicked"]).all())
    rows = prediction_rows(model, x[:3])
    assert set(rows[0]) == {"clicked", "converted", "converted.joint"}


def test_esmm_cvr_tower_learns_from_unclicked_rows_only_through_the_ctcvr_product():
    torch.manual_seed(0)
    model = _model("esmm")
    x = torch.randn(16, 4)
    unclicked = Split(x, {"clicked": torch.zeros(16), "converted": torch.zeros(16)},
                      {"converted": torch.zeros(16, dtype=torch.bool)})  # as the funnel mask leaves them
    cvr_tower = list(model.private["converted"].parameters()) + list(model.towers["converted"].parameters())
    losses = model.task_losses(unclicked)
    assert all(g is None for g in torch.autograd.grad(losses["clicked"], cvr_tower, retain_graph=True, allow_unused=True))
    grads = torch.autograd.grad(losses["converted"], cvr_tower, retain_graph=True)
    assert sum(float(g.abs().sum()) for g in grads) > 0  # gradient on rows without a click ...
    out = model(x)
    ctcvr = torch.sigmoid(out["clicked"].view(-1)) * torch.sigmoid(out["converted"].view(-1))
    by_hand = torch.autograd.grad(-torch.log1p(-ctcvr).mean(), cvr_tower)  # ... is exactly that of CE(0, pCTR x pCVR)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, by_hand))
    naive = _model("hard_sharing")  # the masked-label path: those rows give the CVR tower nothing
    assert float(naive.task_losses(unclicked)["converted"].detach()) == 0.0


def _train(name, data, epochs, inputs, knobs=None):
    torch.manual_seed(0)
    model = _model(name, data.problem, knobs, {"depth": 1, "width": 16}, inputs)
    Trainer(data, TrainConfig(epochs=epochs, batch_size=128, lr=1e-2, patience=epochs), Equal(data.problem.task_names)).fit(model)
    return model


def test_esmm_estimates_cvr_on_unclicked_rows_closer_to_the_truth_than_training_on_clicked_rows():
    """The generator's selection bias: a CVR model trained on clicked rows only overestimates CVR where users do not click."""
    options = {**FUNNEL_DEFAULTS, "samples": 3000, "items": 100}
    data = synthetic_funnel(**options)
    truth = generate_funnel(**{k: v for k, v in options.items() if k not in ("val", "test")})
    test_rows = split_rows(options["samples"], options["val"], options["test"], options["seed"])[2]
    true_cvr = torch.from_numpy(truth["true_cvr"]).float()[test_rows]
    unclicked = torch.from_numpy(truth["clicked"])[test_rows] == 0
    assert torch.equal(data.test.y["clicked"] == 0, unclicked)  # the rows line up with the truth
    inputs = {"encoding": "embedding", "embedding_dim": 4}
    errors = {}
    for name in ("esmm", "hard_sharing"):  # hard_sharing at shared_depth 0: separate CTR and CVR networks, CVR on clicks only
        p = predict(_train(name, data, 8, inputs), data.test.x)["converted"]
        errors[name] = float((p[unclicked] - true_cvr[unclicked]).abs().mean())
    assert errors["esmm"] < 0.8 * errors["hard_sharing"], errors


def test_aitm_calibrator_is_zero_when_the_funnel_holds_and_positive_when_a_later_step_is_likelier():
    problem = Problem((4,), (Task("click", "binary"), Task("cart", "binary", after="click"), Task("buy", "binary", after="cart")))
    holds = {"click": torch.tensor([0.9, 0.5]), "cart": torch.tensor([0.5, 0.5]), "buy": torch.tensor([0.1, 0.2])}
    assert float(calibration_loss(problem, holds)) == 0.0
    broken = {"click": torch.tensor([0.9, 0.5]), "cart": torch.tensor([0.95, 0.4]), "buy": torch.tensor([0.1, 0.6])}
    # mean over rows of sum_t max(p_t - p_{t-1}, 0): row 1: 0.05 + 0; row 2: 0 + 0.2
    assert float(calibration_loss(problem, broken)) == pytest.approx((0.05 + 0.2) / 2)


def test_aitm_trains_on_the_entire_space_with_the_calibrator_as_regularization():
    torch.manual_seed(0)
    model = _model("aitm", knobs={"alpha": 2.0})
    assert isinstance(model, AITMModel) and float(model.regularization()) == 0.0
    x = torch.randn(32, 4)
    batch = Split(x, {"clicked": (x[:, 0] > 0).float(), "converted": (x[:, 1] > 0).float()})
    apply_funnel_masks(type("D", (), {"problem": FUNNEL, "train": batch, "val": batch, "test": batch})())
    losses = model.task_losses(batch)
    logits = model.step_logits(x)
    p = {n: torch.sigmoid(v.view(-1)) for n, v in logits.items()}
    y_ctcvr = batch.y["clicked"] * batch.y["converted"]
    expected = F.binary_cross_entropy(p["converted"], y_ctcvr)
    assert float(losses["converted"].detach()) == pytest.approx(float(expected.detach()), rel=1e-4)
    calibrator = 2.0 * F.relu(p["converted"] - p["clicked"]).mean()
    assert float(model.regularization().detach()) == pytest.approx(float(calibrator.detach()), rel=1e-5, abs=1e-9)
    conditional = torch.sigmoid(model(x)["converted"].view(-1))  # reported like every strategy's: P(converted | clicked)
    assert torch.allclose(conditional, (p["converted"] / p["clicked"]).clamp(max=1 - 1e-6), atol=1e-5)
    ait = model.ait["converted"]
    assert ait.last_weights.shape == (32, 2) and torch.allclose(ait.last_weights.sum(1), torch.ones(32))



@pytest.mark.parametrize("name", ["esmm", "aitm"])
def test_funnel_models_share_parameters_under_every_input_encoding(name):
    from mtl_search_plugins.weighting import last_shared_weights

    data = synthetic_funnel(**{**FUNNEL_DEFAULTS, "samples": 200, "items": 5})  # numeric columns and a categorical item
    table, rows = data.problem, data.train.x[:8]
    for problem, x, inputs, expected_depth in [(table, rows, {"encoding": "onehot"}, 1), (FUNNEL, torch.randn(8, 4), None, 1),
                                               (table, rows, {"encoding": "embedding", "embedding_dim": 4}, 0)]:  # the paper's
        torch.manual_seed(0)
        model = _model(name, problem, backbone={"depth": 2, "width": 8}, inputs=inputs)
        shared = model.shared_parameters()
        assert model.shared_depth == expected_depth and sum(p.numel() for p in shared) > 0, (inputs, problem.input_shape)
        ids = {id(p) for p in shared}
        assert not any(id(p) in ids for p in model.private.parameters())  # shared means used by every task's path, once
        assert model.sharing_map(torch.zeros(1))["shared_blocks"].values[:, 1].tolist() == [float(expected_depth)] * 2
        layer = last_shared_weights(model)  # GradNorm's W
        assert len(layer) == 1 and layer[0].dim() == 2 and id(layer[0]) in ids
        loss = sum(out.sum() for out in model(x).values())
        (grad,) = torch.autograd.grad(loss, layer)  # the tasks' gradients meet there
        assert grad.abs().sum() > 0


def test_task_grouping_runs_on_a_funnel_space_with_one_hot_inputs():
    from mtl_search.search.grouping import measure_affinity

    space = parse_space({"data": {"dataset": "synthetic_funnel", "options": {"samples": 120, "items": 5}},
                         "inputs": {"encoding": "onehot"}, "backbone": {"kind": "mlp", "depth": 1, "width": 8},
                         "strategies": {"esmm": {"tower_width": 4}}, "training": {"epochs": 1, "patience": 1, "batch_size": 64}})
    measured = measure_affinity(space)
    assert measured["strategy"] == "esmm" and measured["steps"] > 0
    assert torch.isfinite(measured["affinity"]).all()

def test_funnel_models_save_and_reload_with_their_funnel(tmp_path):
    torch.manual_seed(0)
    model = _model("esmm")
    config = {"strategy": "esmm", "esmm.shared_depth": 0, "esmm.tower_width": 8, "backbone.depth": 1, "backbone.width": 8}
    save_model(tmp_path, model, config, FUNNEL, "mlp")
    assert json.loads((tmp_path / "problem.json").read_text())["problem"]["tasks"][1]["after"] == "clicked"
    loaded = load_model_dir(tmp_path, REGISTRY)
    assert isinstance(loaded, ESMMModel) and loaded.problem.task("converted").after == "clicked"
    x = torch.randn(5, 4)
    assert torch.allclose(predict(loaded, x)["converted.joint"], predict(model, x)["converted.joint"])


def test_shipped_funnel_space_validates_and_masks_conversions():
    plan, data, _ = prepare(load_space(REPO / "search_spaces" / "funnel.yaml"))
    assert set(plan.strategies) >= {"esmm", "aitm"}
    clicked = (data.train.y["clicked"] == 1)
    assert torch.equal(data.train.mask["converted"], clicked)
    assert data.train.weights("clicked") is not None and data.train.weights("converted") is None


def test_funnel_bias_benchmark_runs():
    from benchmarks.funnel_bias import cvr_error

    result = cvr_error("aitm", seed=0, samples=300, items=10, epochs=1)
    assert set(result) == {"mae", "mean_prediction", "true_mean"} and 0 <= result["mae"] <= 1
