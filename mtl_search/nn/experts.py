"""Experts computed together: copies of a backbone under one vmapped call, and experts that compute only routed rows.

Generic layers of mixture-of-experts models (the ``mixture_of_experts`` plugin builds its
strategies from them; any plugin may). Dense MLP experts are ``StackedMLP``
(:mod:`mtl_search.nn.layers`).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .backbones import Backbone
from .layers import StackedMLP


class BackboneExperts(nn.Module):
    """``n`` experts, each a fresh copy of the backbone (stem, blocks, features), run as one vmapped call.

    ``(batch, backbone.input_features)`` flat rows (the output of the backbone's input layer,
    as the family's models pass them) ->
    ``(n, batch, backbone.out_features)``. The copies' parameters and buffers are stacked
    (``torch.func.stack_module_state``: parameter ``stacked.<name>`` of shape ``(n, ...)``)
    and the backbone runs once under ``torch.func.vmap`` with ``functional_call``; BatchNorm
    running statistics are stacked buffers updated per expert, dropout draws per expert.
    Each expert is initialised exactly as ``n`` separately built backbones would be.
    """

    def __init__(self, n: int, backbone: Backbone):
        super().__init__()
        # the model's input layer runs once before the experts (and the gates): each copy starts at the kind's own stem
        copies = [nn.Sequential(backbone.new_stem(include_input=False), *backbone.new_blocks(), backbone.new_features()) for _ in range(n)]
        params, buffers = torch.func.stack_module_state(copies)
        self.n, self.input_shape, self.out_features = n, tuple(backbone.input_shape), backbone.out_features
        self._names = {name: name.replace(".", "_") for name in [*params, *buffers]}
        self.stacked = nn.Module()
        for name, value in params.items():
            self.stacked.register_parameter(self._names[name], nn.Parameter(value))
        for name, value in buffers.items():
            self.stacked.register_buffer(self._names[name], value)
        self._param_names, self._buffer_names = list(params), list(buffers)
        object.__setattr__(self, "_base", copies[0].to("meta"))  # structure only; not a submodule (holds no state)

    def train(self, mode: bool = True) -> "BackboneExperts":
        super().train(mode)
        self._base.train(mode)
        return self

    def expert(self, i: int) -> nn.Module:
        """A standalone copy of expert ``i`` (its weights and buffers copied out of the stack)."""
        module = copy.deepcopy(self._base).to_empty(device=self.stacked_device())
        state = {name: getattr(self.stacked, self._names[name])[i].detach().clone() for name in [*self._param_names, *self._buffer_names]}
        module.load_state_dict(state)
        return module.train(self.training)

    def stacked_device(self) -> torch.device:
        return next(iter(self.stacked.parameters())).device

    def last_weight(self) -> nn.Parameter:
        """The stacked weight of the last layer with a weight matrix (rank >= 2 per expert, not a bias)."""
        names = [n for n in self._param_names if not n.rsplit(".", 1)[-1].startswith("bias") and getattr(self.stacked, self._names[n]).dim() >= 3]
        return getattr(self.stacked, self._names[names[-1]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError(f"backbone experts read (batch, features) rows that all experts share, got shape {tuple(x.shape)}")
        images = x.reshape(x.shape[0], *self.input_shape)
        params = {n: getattr(self.stacked, self._names[n]) for n in self._param_names}
        buffers = {n: getattr(self.stacked, self._names[n]) for n in self._buffer_names}

        def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(self._base, (p, b), (rows,))

        return torch.func.vmap(one, in_dims=(0, 0, None), randomness="different")(params, buffers, images)


def expert_slots(expert: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort routing choices by expert (stable: batch order kept): the order, the count per expert, each sorted choice's slot in its expert."""
    order = torch.argsort(expert, stable=True)
    counts = torch.bincount(expert, minlength=n)
    slot = torch.arange(len(order), device=expert.device) - (counts.cumsum(0) - counts)[expert[order]]
    return order, counts, slot


class RoutedExperts(nn.Module):
    """Stacked experts that compute only the (row, expert) pairs a router selected.

    ``forward(rows, expert)``: ``rows`` (pairs, in), ``expert`` (pairs,) -> (pairs, out). The
    pairs are sorted by expert into an (experts, slots, in) buffer whose slots are the most
    pairs any expert got, and the experts run as one batched matmul on it; with balanced
    routing that is about ``pairs`` rows of work, not ``experts x batch``.
    """

    def __init__(self, experts: StackedMLP, n: int):
        super().__init__()
        self.experts, self.n = experts, n

    def forward(self, rows: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        if rows.shape[0] == 0:
            return rows.new_zeros(0, self.experts.layers[-1].weight.shape[-1])
        order, counts, slot = expert_slots(expert, self.n)
        sorted_expert = expert[order]
        buffer = rows.new_zeros(self.n, int(counts.max()), rows.shape[1]).index_put((sorted_expert, slot), rows[order])
        out_sorted = self.experts(buffer)[sorted_expert, slot]
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=rows.device)
        return out_sorted[inverse]
