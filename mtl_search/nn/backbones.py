"""Backbones: an input layer and a stem followed by L blocks; strategies decide who shares which.

Backbone kinds are registered through the ``register_backbones`` hook; the kinds defined
here (``mlp``, ``residual_mlp``, ``conv``, ``residual_conv``) are registered by the core
itself through that same hook.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ..hookspecs import hookimpl
from ..knobs import Choice, Float, Int, IntList, Knob
from .layers import (
    ACTIVATIONS,
    ResidualConvBlock,
    ResidualMLPBlock,
    conv_layer,
    mlp_layer,
)


@dataclass
class Backbone:
    """A recipe for an input layer, a stem and ``depth`` blocks; every call builds fresh, independently initialised modules.

    ``input_shape`` is the shape (no batch dimension) the kind's stem reads: the data's own
    shape, or a table's encoded width. ``make_input`` builds the input layer that maps a row
    of the model's raw input to that shape (``nn.Identity`` for tensors; for a table, the
    layer that standardises, imputes and encodes its columns, :mod:`mtl_search.nn.inputs`).
    It is part of the stem, so every strategy that builds from ``new_stem()`` reads raw rows;
    a strategy that reads the input directly (mixtures of experts) uses ``new_input()``.

    ``block_shapes[i]`` is the output shape of block ``i``; ``shape_preserving`` is True when
    every block maps its input shape to itself (required by strategies that skip blocks).
    ``new_features()`` maps an activation to a flat vector; ``feature_width(shape)`` is that
    vector's width. ``params`` are the kind's knob values, derived ones included (a conv
    backbone's ``depth`` is the length of its channel list).
    """

    kind: str
    input_shape: tuple[int, ...]
    depth: int
    stem_shape: tuple[int, ...]
    block_shapes: list[tuple[int, ...]]
    shape_preserving: bool
    make_stem: Callable[[], nn.Module]
    make_block: Callable[[int], nn.Module]
    make_features: Callable[[], nn.Module] = nn.Flatten
    feature_width: Callable[[tuple[int, ...]], int] = math.prod
    params: dict[str, Any] = field(default_factory=dict)
    make_input: Callable[[], nn.Module] = nn.Identity

    def new_input(self) -> nn.Module:
        """The input layer, then a flatten: raw model input -> a flat vector of ``input_features``."""
        return nn.Sequential(self.make_input(), nn.Flatten())

    @property
    def input_features(self) -> int:
        """Width of ``new_input()``'s output."""
        return math.prod(self.input_shape)

    def new_stem(self, include_input: bool = True) -> nn.Module:
        """The input layer followed by the kind's stem: raw model input -> an activation of ``stem_shape``.

        ``include_input=False``: the kind's stem alone, reading an ``input_shape`` activation (for
        modules fed by an input layer the model already ran, e.g. experts behind ``new_input()``).
        """
        return nn.Sequential(self.make_input(), self.make_stem()) if include_input else self.make_stem()

    def new_block(self, index: int) -> nn.Module:
        if not 0 <= index < self.depth:
            raise IndexError(f"block {index} of a backbone of depth {self.depth}")
        return self.make_block(index)

    def new_blocks(self, start: int = 0, stop: int | None = None) -> nn.ModuleList:
        """Blocks ``start`` to ``stop - 1`` (``stop`` defaults to ``depth``): ``0 <= start <= stop <= depth``."""
        return nn.ModuleList(self.new_block(i) for i in range(start, self.depth if stop is None else stop))

    def new_features(self) -> nn.Module:
        """Maps the last block's output to a flat feature vector of ``out_features``."""
        return self.make_features()

    def features_of(self, shape: tuple[int, ...]) -> int:
        """Flat feature width of an activation of ``shape`` after ``new_features()``."""
        return self.feature_width(tuple(shape))

    @property
    def out_features(self) -> int:
        return self.features_of(self.block_shapes[-1] if self.depth else self.stem_shape)


@dataclass(frozen=True)
class BackboneKind:
    """A named way to build a Backbone, with its knobs (a space may fix or narrow each)."""

    name: str
    knobs: dict[str, Knob]
    build: Callable[..., Backbone]
    description: str = ""
    input_ranks: tuple[int, ...] | None = None  # len(input_shape) values it can build on; None: any

    def value_ranges(self, knobs: dict[str, Knob], input_shape: tuple[int, ...]) -> dict[str, Int]:
        """The range of every integer the built backbone's ``params`` can hold, ``depth`` included, over ``knobs``' ranges.

        Derived values count: a conv backbone's depth is the length of its channel list. The
        recipe is built (no modules are made) at every combination of the knobs' extreme
        values and choices, so a strategy's bound that names a backbone value is checked
        against what a trial can really get.
        """
        options = [[(name, value) for value in knob.extremes()] for name, knob in knobs.items()]
        seen: dict[str, list[int]] = {}
        for combination in itertools.islice(itertools.product(*options), 4096):
            built = self.build(tuple(input_shape), **dict(combination))
            for name, value in {**built.params, "depth": built.depth}.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    seen.setdefault(name, []).append(value)
        return {name: Int(min(values), max(values)) for name, values in seen.items()}


MLP_KNOBS: dict[str, Knob] = {
    "depth": Int(1, 4, minimum=1),
    "width": Int(16, 256, log=True, minimum=1),
    "activation": Choice("relu", "gelu", "tanh", "silu"),
    "norm": Choice("none", "batch", "layer"),
    "dropout": Float(0.0, 0.5, minimum=0.0, maximum=0.95),
}


def _flat_input(input_shape: tuple[int, ...]) -> int:
    return math.prod(input_shape)


def build_mlp(input_shape: tuple[int, ...], depth: int, width: int, activation: str = "relu", norm: str = "none", dropout: float = 0.0) -> Backbone:
    """Plain MLP: block i is Linear(in, width) -> norm -> activation -> dropout."""
    d = _flat_input(input_shape)

    def make_block(i: int) -> nn.Module:
        return mlp_layer(d if i == 0 else width, width, activation, norm, dropout)

    stem_shape = (d,)
    return Backbone(
        "mlp", tuple(input_shape), depth, stem_shape, [(width,)] * depth, False,
        nn.Flatten, make_block,
        params=dict(depth=depth, width=width, activation=activation, norm=norm, dropout=dropout),
    )


def build_residual_mlp(input_shape: tuple[int, ...], depth: int, width: int, activation: str = "relu", norm: str = "none", dropout: float = 0.0) -> Backbone:
    """A Linear stem to ``width``, then residual blocks that keep the shape."""
    d = _flat_input(input_shape)
    return Backbone(
        "residual_mlp", tuple(input_shape), depth, (width,), [(width,)] * depth, True,
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(d, width), ACTIVATIONS[activation]()),
        lambda i: ResidualMLPBlock(width, activation, norm, dropout),
        params=dict(depth=depth, width=width, activation=activation, norm=norm, dropout=dropout),
    )


CONV_FEATURES = ("flatten", "global_avg")

CONV_KNOBS: dict[str, Knob] = {
    "channels": IntList(((16, 32), (32, 64), (16, 32, 64)), minimum=1),
    "kernel": Choice(3, 5),
    "pool": Choice("max", "none"),
    "features": Choice(*CONV_FEATURES),
}

RESIDUAL_CONV_KNOBS: dict[str, Knob] = {
    "depth": Int(1, 4, minimum=1),
    "channels": Int(8, 64, log=True, minimum=1),
    "kernel": Choice(3, 5),
    "features": Choice(*CONV_FEATURES),
}


def _image_input(input_shape: tuple[int, ...]) -> tuple[tuple[int, int, int], Callable[[], nn.Module]]:
    """``(C, H, W)`` of an image input and a maker of the module that gives a batch that shape."""
    if len(input_shape) == 3:
        return tuple(input_shape), nn.Identity
    if len(input_shape) == 2:
        # a single-channel image without its channel axis: (batch, H, W) -> (batch, 1, H, W)
        return (1, *input_shape), lambda: nn.Unflatten(1, (1, input_shape[0]))
    raise ValueError(f"conv backbones need image inputs of shape (C, H, W) or (H, W), got {tuple(input_shape)}")


def _conv_features(features: str) -> tuple[Callable[[], nn.Module], Callable[[tuple[int, ...]], int]]:
    """``flatten`` keeps where things are (needed when tasks differ by position); ``global_avg`` averages it away."""
    if features == "flatten":
        return nn.Flatten, math.prod
    if features == "global_avg":
        return lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), lambda shape: shape[0]
    raise ValueError(f"features must be one of {', '.join(CONV_FEATURES)}, got {features!r}")


def build_conv(input_shape: tuple[int, ...], channels: list[int], kernel: int = 3, pool: str = "max", features: str = "flatten") -> Backbone:
    """Block i: conv -> BatchNorm -> ReLU to ``channels[i]``, then 2x2 max pooling (``pool: max``; an axis of size 1 is not pooled)."""
    if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
        raise ValueError(f"channels must be a non-empty list of positive integers, got {channels!r}")
    if pool not in ("max", "none"):
        raise ValueError(f"pool must be 'max' or 'none', got {pool!r}")
    image_shape, make_stem = _image_input(input_shape)
    make_features, feature_width = _conv_features(features)
    c, h, w = image_shape
    in_channels, pools, shapes = [], [], []
    for out in channels:
        in_channels.append(c)
        window = (2 if h >= 2 and pool == "max" else 1, 2 if w >= 2 and pool == "max" else 1)
        pools.append(window)
        c, h, w = out, h // window[0], w // window[1]
        shapes.append((c, h, w))

    def make_block(i: int) -> nn.Module:
        layer = conv_layer(in_channels[i], channels[i], kernel)
        return layer.append(nn.MaxPool2d(pools[i])) if pools[i] != (1, 1) else layer

    return Backbone(
        "conv", tuple(input_shape), len(channels), image_shape, shapes, False,
        make_stem, make_block, make_features, feature_width,
        params=dict(channels=list(channels), kernel=kernel, pool=pool, features=features),
    )


def build_residual_conv(input_shape: tuple[int, ...], depth: int, channels: int, kernel: int = 3, features: str = "flatten") -> Backbone:
    """A conv stem to ``channels``, then ``depth`` residual conv blocks that keep the shape (no pooling)."""
    (c, h, w), make_input = _image_input(input_shape)
    make_features, feature_width = _conv_features(features)
    return Backbone(
        "residual_conv", tuple(input_shape), depth, (channels, h, w), [(channels, h, w)] * depth, True,
        lambda: nn.Sequential(make_input(), conv_layer(c, channels, kernel)),
        lambda i: ResidualConvBlock(channels, kernel),
        make_features, feature_width,
        params=dict(depth=depth, channels=channels, kernel=kernel, features=features),
    )


@hookimpl
def register_backbones(register: Callable[[BackboneKind], None]) -> None:
    register(BackboneKind("mlp", MLP_KNOBS, build_mlp, "Linear -> norm -> activation -> dropout blocks"))
    register(BackboneKind("residual_mlp", MLP_KNOBS, build_residual_mlp, "Linear stem, then shape-preserving residual blocks"))
    register(BackboneKind("conv", CONV_KNOBS, build_conv, "conv -> BatchNorm -> ReLU blocks, optional 2x2 max pooling", input_ranks=(2, 3)))
    register(BackboneKind("residual_conv", RESIDUAL_CONV_KNOBS, build_residual_conv,
                          "conv stem, then shape-preserving residual conv blocks", input_ranks=(2, 3)))
