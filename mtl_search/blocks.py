"""Backbone blocks. A Backbone is a stem followed by L blocks; strategies decide who shares which.

Backbone kinds are registered through the ``register_backbones`` hook; the kinds defined
here (``mlp``, ``residual_mlp``, ``conv``, ``residual_conv``) are registered by the core
itself through that same hook.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .hookspecs import hookimpl
from .knobs import Choice, Float, Int, IntList, Knob

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def make_norm(norm: str, width: int) -> nn.Module:
    """``none`` | ``batch`` | ``layer`` normalisation for a feature vector of ``width``."""
    if norm == "batch":
        return nn.BatchNorm1d(width)
    if norm == "layer":
        return nn.LayerNorm(width)
    return nn.Identity()


def mlp_layer(in_features: int, out_features: int, activation: str = "relu", norm: str = "none", dropout: float = 0.0) -> nn.Sequential:
    """Linear -> normalisation -> activation -> dropout."""
    return nn.Sequential(
        nn.Linear(in_features, out_features),
        make_norm(norm, out_features),
        ACTIVATIONS[activation](),
        nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
    )


class ResidualBlock(nn.Module):
    """``activation(x + branch(x))``; ``branch`` is exposed so a strategy can gate it (AdaShare).

    ``branch[0]`` is the branch's first layer: its output is the block's intermediate feature.
    """

    def __init__(self, branch: nn.Sequential, activation: str = "relu"):
        super().__init__()
        self.branch = branch
        self.activation = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x + self.branch(x))

    def forward_with_intermediate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output of the branch's first layer, block output)."""
        intermediate = self.branch[0](x)
        return intermediate, self.activation(x + self.branch[1:](intermediate))


class ResidualMLPBlock(ResidualBlock):
    """Residual block of two linear layers: ``activation(x + norm(Linear(layer(x))))``."""

    def __init__(self, width: int, activation: str = "relu", norm: str = "none", dropout: float = 0.0):
        super().__init__(nn.Sequential(mlp_layer(width, width, activation, norm, dropout), nn.Linear(width, width), make_norm(norm, width)), activation)


def conv_layer(in_channels: int, out_channels: int, kernel: int, activation: str = "relu") -> nn.Sequential:
    """Conv2d ('same' padding, no bias: BatchNorm follows) -> BatchNorm2d -> activation."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        ACTIVATIONS[activation](),
    )


class ResidualConvBlock(ResidualBlock):
    """Basic residual block (He et al. 2016): ``activation(x + BN(conv(conv_layer(x))))``; keeps the shape."""

    def __init__(self, channels: int, kernel: int = 3, activation: str = "relu"):
        super().__init__(nn.Sequential(
            conv_layer(channels, channels, kernel, activation),
            nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(channels),
        ), activation)


def forward_with_intermediate(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u, p)``: a block's intermediate feature and its output, both of the output's shape.

    Blocks with several layers (the residual ones) expose ``forward_with_intermediate``;
    for a single-layer block the intermediate feature is its output. MTAN's attention
    modules read ``u``.
    """
    if hasattr(block, "forward_with_intermediate"):
        return block.forward_with_intermediate(x)
    out = block(x)
    return out, out


@dataclass
class Backbone:
    """A recipe for a stem and ``depth`` blocks; every call builds fresh, independently initialised modules.

    ``block_shapes[i]`` is the output shape (no batch dimension) of block ``i``;
    ``shape_preserving`` is True when every block maps its input shape to itself
    (required by strategies that skip blocks). ``new_features()`` maps an activation to a
    flat vector; ``feature_width(shape)`` is that vector's width.
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

    def new_stem(self) -> nn.Module:
        return self.make_stem()

    def new_block(self, index: int) -> nn.Module:
        if not 0 <= index < self.depth:
            raise IndexError(f"block {index} of a backbone of depth {self.depth}")
        return self.make_block(index)

    def new_blocks(self, start: int = 0, stop: int | None = None) -> nn.ModuleList:
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


class StackedLinear(nn.Module):
    """``n`` independent linear maps applied as one batched contraction.

    Input ``(batch, in)`` (the same rows for every map) or ``(n, batch, in)``; output
    ``(n, batch, out)``. Each map is initialised like ``nn.Linear``; ``bias=False`` gives
    ``x W`` alone (e.g. the gates ``softmax(W_t x)`` of mixture-of-experts models).
    """

    def __init__(self, n: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(n, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, out_features).uniform_(-bound, bound)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            out = torch.einsum("bi,nio->nbo", x, self.weight)
            return out if self.bias is None else out + self.bias
        return torch.bmm(x, self.weight) if self.bias is None else torch.baddbmm(self.bias, x, self.weight)


class StackedMLP(nn.Module):
    """``n`` MLPs of equal shape computed together (no Python loop over the ``n``): ``(batch, in) -> (n, batch, widths[-1])``.

    Input ``(batch, in)`` feeds the same rows to every MLP, ``(n, rows, in)`` its own rows to
    each. ``activate_output=False`` leaves the last layer linear (a residual branch's FFN).
    """

    def __init__(self, n: int, in_features: int, widths: list[int], activation: str = "relu", dropout: float = 0.0,
                 activate_output: bool = True):
        super().__init__()
        dims = [in_features, *widths]
        self.layers = nn.ModuleList(StackedLinear(n, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.activation = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.activate_output = activate_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last or self.activate_output:
                x = self.dropout(self.activation(x))
        return x


def make_tower(in_features: int, out_features: int, hidden: list[int] | tuple[int, ...] = (), activation: str = "relu") -> nn.Sequential:
    """A task head: optional hidden layers, then a linear output of ``out_features``."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), ACTIVATIONS[activation]()]
        in_features = width
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)


@hookimpl
def register_backbones(register: Callable[[BackboneKind], None]) -> None:
    register(BackboneKind("mlp", MLP_KNOBS, build_mlp, "Linear -> norm -> activation -> dropout blocks"))
    register(BackboneKind("residual_mlp", MLP_KNOBS, build_residual_mlp, "Linear stem, then shape-preserving residual blocks"))
    register(BackboneKind("conv", CONV_KNOBS, build_conv, "conv -> BatchNorm -> ReLU blocks, optional 2x2 max pooling", input_ranks=(2, 3)))
    register(BackboneKind("residual_conv", RESIDUAL_CONV_KNOBS, build_residual_conv,
                          "conv stem, then shape-preserving residual conv blocks", input_ranks=(2, 3)))
