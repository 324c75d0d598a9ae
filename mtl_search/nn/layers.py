"""Layers every strategy builds from: MLP and conv layers, residual blocks, stacked (batched) experts, task towers."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

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
