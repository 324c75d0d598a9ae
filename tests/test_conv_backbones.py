"""Conv and residual conv backbones: declared shapes match what the modules compute; spaces select them and are checked."""
from __future__ import annotations

import optuna
import pytest
import torch

from mtl_search import IntList, SpaceError
from mtl_search.cli import main
from mtl_search.knobs import Choice, Fixed
from mtl_search.nn.backbones import build_conv, build_residual_conv
from mtl_search.registry import load_registry
from mtl_search.search.prepare import prepare
from mtl_search.search.sampling import TrialSpace
from mtl_search.search.space import load_space


def _trace(backbone, x):
    h = backbone.new_stem()(x)
    shapes = []
    for i in range(backbone.depth):
        h = backbone.new_block(i)(h)
        shapes.append(tuple(h.shape[1:]))
    return h, shapes


@pytest.mark.parametrize("input_shape", [(1, 9, 17), (9, 17), (3, 5, 1)])
@pytest.mark.parametrize("pool", ["max", "none"])
@pytest.mark.parametrize("features", ["flatten", "global_avg"])
def test_conv_shapes_and_feature_width_match_the_modules(input_shape, pool, features):
    backbone = build_conv(input_shape, channels=[4, 6, 8], pool=pool, features=features)
    last, shapes = _trace(backbone, torch.randn(2, *input_shape))
    assert shapes == backbone.block_shapes and not backbone.shape_preserving
    assert backbone.new_features()(last).shape == (2, backbone.out_features)
    if pool == "max" and input_shape[-1] == 17:
        assert shapes[-1][1:] == (9 // 8, 17 // 8)


def test_conv_block_is_conv_batchnorm_relu_then_pooling():
    block = build_conv((1, 8, 8), channels=[4]).new_block(0)
    names = [type(m).__name__ for m in block]
    assert names == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]


@pytest.mark.parametrize("features", ["flatten", "global_avg"])
def test_residual_conv_preserves_shape_and_a_zero_branch_passes_its_input_through(features):
    backbone = build_residual_conv((1, 6, 8), depth=3, channels=5, features=features)
    last, shapes = _trace(backbone, torch.randn(2, 1, 6, 8))
    assert backbone.shape_preserving and shapes == [(5, 6, 8)] * 3 == backbone.block_shapes
    assert backbone.new_features()(last).shape == (2, backbone.out_features)
    block = backbone.new_block(0)
    with torch.no_grad():
        block.branch[-1].weight.zero_()  # the last BatchNorm's scale: the branch outputs its shift, zero
    x = torch.relu(torch.randn(2, 5, 6, 8))
    assert torch.allclose(block(x), x)


def test_conv_needs_image_inputs():
    with pytest.raises(ValueError, match="conv backbones need image inputs"):
        build_conv((12,), channels=[4])


def test_channel_lists_are_checked_when_a_space_narrows_them():
    knob = IntList(((16, 32),), minimum=1)
    assert knob.narrow(Fixed([8, 8, 8]), "backbone.channels") == Fixed([8, 8, 8])
    assert knob.narrow(Choice([4], [4, 8]), "backbone.channels").choices == ((4,), (4, 8))
    with pytest.raises(SpaceError, match="backbone.channels: 0 is below the smallest allowed value 1"):
        knob.narrow(Fixed([16, 0]), "backbone.channels")
    with pytest.raises(SpaceError, match="backbone.channels: expected a non-empty list of integers, got 16"):
        knob.narrow(Fixed(16), "backbone.channels")


DIGITS_CONV = """
data: {{dataset: multi_digits, options: {{samples: 60}}}}
backbone: {{kind: {kind}, {knobs}}}
strategies: {{{strategies}}}
"""


def _space(tmp_path, kind="conv", knobs="channels: [4, 8, 8]", strategies="hard_sharing: {}", dataset=None):
    text = DIGITS_CONV.format(kind=kind, knobs=knobs, strategies=strategies)
    if dataset:
        text = text.replace("multi_digits, options: {samples: 60}", dataset)
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_hard_sharing_depth_bound_follows_the_conv_channel_list(tmp_path):
    plan, _, _ = prepare(load_space(_space(tmp_path, knobs="channels: {choice: [[4], [4, 8, 8]]}")))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        config = TrialSpace(plan)(study.ask())
        depth = len(config["backbone.channels"])
        assert 0 <= config["hard_sharing.shared_depth"] <= depth
        seen.add((depth, config["hard_sharing.shared_depth"]))
    assert (3, 3) in seen and (1, 1) in seen and all(d <= 1 for depth, d in seen if depth == 1)


def test_validate_rejects_a_conv_backbone_on_flat_data(tmp_path, capsys):
    path = _space(tmp_path, dataset="synthetic_correlated")
    assert main(["validate", str(path)]) == 2
    assert "backbone.kind: backbone kind 'conv' needs inputs with 2 or 3 axes; data set 'synthetic_correlated' has input shape (100,)" in capsys.readouterr().err


def test_validate_rejects_a_strategy_on_a_backbone_kind_it_does_not_support(tmp_path, capsys):
    """MTAN builds attention for flat or image features only: a third-party kind it does not list is refused."""
    from mtl_search import Backbone, BackboneKind, hookimpl

    class SequenceKind:
        @hookimpl
        def register_backbones(self, register):
            register(BackboneKind("sequence", {}, lambda input_shape: Backbone("sequence", input_shape, 1, input_shape, [input_shape], True, torch.nn.Identity, lambda i: torch.nn.Identity())))

    registry = load_registry(extra=[("sequence_kind", SequenceKind())])
    space = load_space(_space(tmp_path, kind="sequence", knobs="", strategies="mtan: {}"))
    with pytest.raises(SpaceError, match="strategies.mtan: strategy 'mtan' does not support backbone kind 'sequence'; it supports mlp, residual_mlp, conv, residual_conv"):
        prepare(space, registry)
