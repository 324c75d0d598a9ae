"""Backbone blocks. A Backbone is a stem followed by L blocks; strategies decide who shares which.

Backbone kinds are registered through the ``register_backbones`` hook; the kinds defined
here (``mlp``, ``residual_mlp``) are registered by the core itself through that same hook.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .hookspecs import hookimpl
from .knobs import Choice, Float, Int, Knob

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


class ResidualMLPBlock(nn.Module):
    """``activation(x + branch(x))``; ``branch`` is exposed so a strategy can gate it (AdaShare)."""

    def __init__(self, width: int, activation: str = "relu", norm: str = "none", dropout: float = 0.0):
        super().__init__()
        self.branch = nn.Sequential(mlp_layer(width, width, activation, norm, dropout), nn.Linear(width, width), make_norm(norm, width))
        self.activation = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x + self.branch(x))


@dataclass
class Backbone:
    """A recipe for a stem and ``depth`` blocks; every call builds fresh, independently initialised modules.

    ``block_shapes[i]`` is the output shape (no batch dimension) of block ``i``;
    ``shape_preserving`` is True when every block maps its input shape to itself
    (required by strategies that skip blocks).
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
        return math.prod(shape) if self.make_features is nn.Flatten else shape[0]

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
