"""Mixture-of-experts sharing, the whole family (docs/methods.md, "Sparsely-gated mixture of experts" to "DSelect-k").

- ``omoe``, ``mmoe`` (Ma et al., KDD 2018): n experts shared by all tasks, one softmax gate
  per task (MMoE) or one for all (OMoE), a tower per task.
- ``cgc``, ``ple`` (Tang et al., RecSys 2020): private experts per task plus shared experts;
  PLE stacks extraction levels, and every level but the last has a shared gate over ALL
  its experts that feeds the next level's shared experts (LibMTL leaves it out; we do not).
- ``topk_moe`` (Shazeer et al., 2017): noisy top-k gating, importance loss and the paper's
  load loss (normal CDF of the chance of staying in the top k); shared gate(s) under the
  towers, or one gate per task (multi-gate).
- ``switch`` (Fedus et al., 2021): float32 top-1 router, expert capacity, dropped rows pass
  through the residual, load-balancing loss alpha * N * sum f_i P_i, optional router z-loss.
- ``dselect_k`` (Hazimeh et al., NeurIPS 2021): the smooth-step binary-encoded selector, static
  or per-example, with its entropy penalty; expert counts need not be powers of two.

Dense experts run as one batched contraction over stacked weights (``StackedMLP``). Sparse
routing computes only the routed rows: they are dispatched into an (experts, slots, features)
buffer and run as one batched matmul. By default (``experts_on: input``) the experts are MLPs
that read the backbone's input layer (flat: a table's encoded
columns, an image's pixels) and replace the backbone's blocks (so they also run on image
backbones, as MLP experts over the pixels; Switch needs an mlp kind for its width); their
activation follows the backbone's. With ``experts_on: backbone`` (mmoe, omoe, dselect_k, cgc,
ple) every expert is a copy of the backbone recipe -- stem, blocks and features, e.g. a small
CNN on images, as in the vision setups of the MMoE/PLE literature and LibMTL -- and the
copies run as one ``torch.func.vmap`` over their stacked weights (``BackboneExperts``); the
gates still read the flattened input (MMoE's g(x) = softmax(W x)), and for PLE only the first
level's experts are backbones (later levels are MLP experts over their outputs). The sparse
routers (topk_moe, switch) keep MLP experts: their experts compute only routed rows.
Auxiliary losses reach the trainer through ``regularization()``; routing statistics (load per
expert, dropped fraction, over the last training epoch) through ``trial_metrics()``.

GradNorm's W (``last_shared_weights``) is the last weight matrix of the experts, stacked over
them (docs/methods.md, "Loss weighting"): for mmoe/omoe/dselect_k the experts', for cgc/ple the last
level's shared experts', for topk_moe/switch the last sparse layer's experts' (for Switch the
FFN's output matrix; the router is not a layer of the network's features).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mtl_search import (
    ACTIVATIONS,
    Backbone,
    BackboneExperts,
    Choice,
    Default,
    Float,
    Int,
    Knob,
    MultiTaskModel,
    Problem,
    RoutedExperts,
    SharingMap,
    SpaceError,
    StackedLinear,
    StackedMLP,
    Strategy,
    expert_slots,
    hookimpl,
    knob_bounds,
    make_tower,
)

EPSILON = 1e-6  # inside DSelect-k's entropy penalty, as in the paper: -r log(r + 1e-6)


# ---------------------------------------------------------------------------------------------
# Shared pieces

def cv_squared(values: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation along the last axis (population variance / mean^2), summed over the rest."""
    mean = values.mean(-1)
    return (values.var(-1, unbiased=False) / (mean * mean + 1e-10)).sum()


def expert_names(n: int) -> list[str]:
    return [f"expert{i}" for i in range(n)]


class MixtureModel(MultiTaskModel):
    """Base of the family's models: per-task towers on per-task representations, auxiliary loss of the last forward.

    Subclasses implement ``encode(x) -> (representations (tasks or 1, batch, width), auxiliary loss, details)``;
    ``x`` there is the flat input vector from the backbone's input layer (``Backbone.new_input()``:
    a table's encoded columns, or the flattened pixels of an image).
    """

    def __init__(self, problem: Problem, backbone: Backbone, width: int, tower_width: int):
        super().__init__(problem)
        self.input = backbone.new_input()
        self.tasks = problem.task_names
        self.towers = nn.ModuleDict({t.name: make_tower(width, t.output_dim, [tower_width]) for t in problem.tasks})
        self._auxiliary: torch.Tensor | None = None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        representations, self._auxiliary, _ = self.encode(self.input(x))
        return {t: self.towers[t](representations[i if len(representations) > 1 else 0]) for i, t in enumerate(self.tasks)}

    def regularization(self) -> torch.Tensor:
        """The auxiliary losses (balancing, z-loss, entropy ...) of the latest forward pass."""
        return self._auxiliary if self._auxiliary is not None else torch.zeros((), device=self._device())


EXPERTS_ON = ("input", "backbone")


def make_experts(n: int, in_features: int, widths: list[int], activation: str, backbone: Backbone | None, experts_on: str) -> nn.Module:
    """``n`` dense experts: MLPs over the flat input (``input``) or copies of the backbone (``backbone``)."""
    if experts_on == "input":
        return StackedMLP(n, in_features, widths, activation)
    if experts_on == "backbone":
        if backbone is None:
            raise ValueError("experts_on: backbone needs the backbone to copy")
        return BackboneExperts(n, backbone)
    raise ValueError(f"experts_on must be one of {', '.join(EXPERTS_ON)}, got {experts_on!r}")


def last_expert_weight(experts: nn.Module) -> nn.Parameter:
    """The experts' last weight matrix, stacked over the experts (GradNorm's W)."""
    return experts.last_weight() if isinstance(experts, BackboneExperts) else experts.layers[-1].weight


# ---------------------------------------------------------------------------------------------
# MMoE, OMoE, DSelect-k: dense experts under one gate per task (or one gate for all)

class SoftmaxGate(nn.Module):
    """``softmax(W_g x)`` for each of ``gates`` gates, without bias as in the paper: (batch, in) -> (batch, gates, experts)."""

    def __init__(self, in_features: int, gates: int, experts: int):
        super().__init__()
        self.gates, self.experts = gates, experts
        self.linear = nn.Linear(in_features, gates * experts, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.linear(x).view(x.shape[0], self.gates, self.experts)
        return torch.softmax(logits, dim=-1), x.new_zeros(())


def smooth_step(t: torch.Tensor, gamma: float) -> torch.Tensor:
    """S(t) = 0 for t <= -g/2, 1 for t >= g/2, else -2t^3/g^3 + 3t/(2g) + 1/2."""
    cubic = -2 * t**3 / gamma**3 + 3 * t / (2 * gamma) + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


class DSelectKGate(nn.Module):
    """DSelect-k (docs/methods.md, "DSelect-k"): k single-expert selectors on m = ceil(log2 n) smooth-step bits per gate.

    Selector l scores expert i by prod_j (S(z_lj) if bit j of i is 1 else 1 - S(z_lj)); the gate is
    q = sum_l softmax(w)_l r(z_l). ``per_example=False``: z, w are free parameters per gate;
    ``True``: z, w are linear in x. Initialisation as the official code: z ~ U(-g/100, g/100)
    (the per-example kernel and bias too), w ~ U(-0.05, 0.05).

    Auxiliary loss: ``entropy * sum -r log(r + 1e-6)`` over selectors and experts (per-example:
    averaged over rows, so ``entropy`` does not scale with the batch size). When n is not a power
    of two, codes n..2^m-1 select no expert and r sums to less than one; as the official code
    does, a penalty sum_l (1 / sum_i r_li - 1) (zero once r sums to one) keeps the selectors on
    reachable experts. A selector saturated on such a code (sum r = 0, zero gradient) would
    make it infinite: its sum is clamped at 1e-6 (a guard of ours, not in the official code).
    """

    def __init__(self, in_features: int, gates: int, experts: int, selectors: int, per_example: bool, gamma: float,
                 entropy: float):
        super().__init__()
        if experts < 2:
            raise ValueError(f"DSelect-k needs at least 2 experts, got {experts}")
        self.gates, self.experts, self.selectors = gates, experts, selectors
        self.per_example, self.gamma, self.entropy = per_example, gamma, entropy
        self.bits = math.ceil(math.log2(experts))
        codes = [[(i >> j) & 1 for j in range(self.bits)] for i in range(experts)]
        self.register_buffer("codes", torch.tensor(codes, dtype=torch.bool), persistent=False)  # (experts, bits)
        z_size, w_size = gates * selectors * self.bits, gates * selectors
        if per_example:
            self.z = nn.Linear(in_features, z_size)
            self.w = nn.Linear(in_features, w_size)
            for p in self.z.parameters():
                nn.init.uniform_(p, -gamma / 100, gamma / 100)
            for p in self.w.parameters():
                nn.init.uniform_(p, -0.05, 0.05)
        else:
            self.z = nn.Parameter(torch.empty(z_size).uniform_(-gamma / 100, gamma / 100))
            self.w = nn.Parameter(torch.empty(w_size).uniform_(-0.05, 0.05))

    def selector_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """r: (rows, gates, selectors, experts) and selector weights softmax(w): (rows, gates, selectors); rows = 1 when static."""
        z, w = (self.z(x), self.w(x)) if self.per_example else (self.z.unsqueeze(0), self.w.unsqueeze(0))
        step = smooth_step(z.view(-1, self.gates, self.selectors, 1, self.bits), self.gamma)
        r = torch.where(self.codes, step, 1 - step).prod(-1)
        return r, torch.softmax(w.view(-1, self.gates, self.selectors), dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r, weights = self.selector_outputs(x)
        q = torch.einsum("bgs,bgse->bge", weights, r).expand(x.shape[0], -1, -1)
        per_row = self.entropy * -(r * torch.log(r + EPSILON)).sum((1, 2, 3))
        if self.experts != 2**self.bits:
            # a selector saturated on a code that names no expert has sum r = 0 (and no gradient: every
            # smooth step is flat there); the clamp keeps its penalty finite (at most 1 / EPSILON - 1)
            per_row = per_row + (1 / r.sum(-1).clamp_min(EPSILON) - 1).sum((1, 2))
        return q, per_row.mean()


class MixtureOfExpertsModel(MixtureModel):
    """f^t(x) = sum_i g^t(x)_i f_i(x); y_t = h_t(f^t(x)). The gate is softmax (MMoE/OMoE) or DSelect-k."""

    def __init__(self, problem: Problem, backbone: Backbone, experts: int, expert_width: int, expert_depth: int,
                 tower_width: int, gate: nn.Module, experts_on: str = "input"):
        width = backbone.out_features if experts_on == "backbone" else expert_width
        super().__init__(problem, backbone, width, tower_width)
        in_features = backbone.input_features
        self.n_experts = experts
        self.experts = make_experts(experts, in_features, [expert_width] * expert_depth, backbone.params.get("activation", "relu"),
                                    backbone, experts_on)
        self.gate = gate

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Gate weights, shape (batch, gates, experts)."""
        return self.gate(self.input(x))[0]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        weights, auxiliary = self.gate(x)
        return torch.einsum("bge,ebw->gbw", weights, self.experts(x)), auxiliary, None

    def shared_parameters(self) -> list[nn.Parameter]:
        shared_gate = self.gate.gates == 1 and len(self.tasks) > 1
        return list(self.experts.parameters()) + (list(self.gate.parameters()) if shared_gate else [])

    def last_shared_weights(self) -> list[nn.Parameter]:
        """GradNorm's W: the experts' last weight matrix (stacked over the experts), not the gate."""
        return [last_expert_weight(self.experts)]

    def sharing_map(self, x: torch.Tensor) -> dict[str, SharingMap]:
        mean = self.gate_weights(x).mean(dim=0)  # (gates, experts)
        values = mean.expand(len(self.tasks), -1) if self.gate.gates == 1 else mean
        return {"gate_weights": SharingMap(values.clamp(0, 1), self.tasks, expert_names(self.n_experts))}


# ---------------------------------------------------------------------------------------------
# CGC and PLE

@dataclass
class LevelGates:
    """The gate weights of one extraction level: task gates (tasks, batch, own + shared), shared gate (batch, all) or None."""

    task: torch.Tensor
    shared: torch.Tensor | None


class ExtractionLevel(nn.Module):
    """One CGC / PLE extraction level (docs/methods.md, "CGC and PLE").

    Task t's ``experts_per_task`` private experts and its gate read task t's input; the shared
    experts (and the shared gate, on every level but the last) read the shared input. Task t's
    gate is softmax(W_t x) over its own and the shared experts; the shared gate is softmax over
    all experts of the level and makes the next level's shared input. Private experts of all
    tasks are one stacked module (one batched contraction), task gates too.
    """

    def __init__(self, tasks: int, in_features: int, experts_per_task: int, shared_experts: int, widths: list[int],
                 activation: str, shared_gate: bool, backbone: Backbone | None = None):
        """``backbone``: the experts are copies of it (``BackboneExperts``, first level only) instead of MLPs of ``widths``."""
        super().__init__()
        self.n_tasks, self.per_task, self.n_shared = tasks, experts_per_task, shared_experts
        on = "input" if backbone is None else "backbone"
        self.private = make_experts(tasks * experts_per_task, in_features, widths, activation, backbone, on)
        self.shared = make_experts(shared_experts, in_features, widths, activation, backbone, on)
        self.task_gates = StackedLinear(tasks, in_features, experts_per_task + shared_experts, bias=False)
        self.shared_gate = nn.Linear(in_features, tasks * experts_per_task + shared_experts, bias=False) if shared_gate else None

    def forward(self, task_input: torch.Tensor, shared_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, LevelGates]:
        """``task_input``: (batch, in) read by every task (the first level) or (tasks, batch, in)."""
        if task_input.dim() == 3:  # each private expert reads its own task's rows
            task_input_per_expert = task_input.repeat_interleave(self.per_task, dim=0)
        else:
            task_input_per_expert = task_input
        private = self.private(task_input_per_expert)  # (tasks * per_task, batch, width)
        shared = self.shared(shared_input)  # (shared, batch, width)
        private_by_task = private.view(self.n_tasks, self.per_task, *private.shape[1:])
        gates = torch.softmax(self.task_gates(task_input), dim=-1)  # (tasks, batch, per_task + shared)
        task_out = (torch.einsum("tbe,tebw->tbw", gates[..., : self.per_task], private_by_task)
                    + torch.einsum("tbe,ebw->tbw", gates[..., self.per_task :], shared))
        if self.shared_gate is None:
            return task_out, None, LevelGates(gates, None)
        shared_weights = torch.softmax(self.shared_gate(shared_input), dim=-1)  # (batch, all experts)
        shared_out = (torch.einsum("be,ebw->bw", shared_weights[:, : private.shape[0]], private)
                      + torch.einsum("be,ebw->bw", shared_weights[:, private.shape[0] :], shared))
        return task_out, shared_out, LevelGates(gates, shared_weights)


class ProgressiveLayeredExtractionModel(MixtureModel):
    """PLE: ``levels`` extraction levels (1 = CGC); towers on the last level's task outputs."""

    def __init__(self, problem: Problem, backbone: Backbone, levels: int, shared_experts: int, experts_per_task: int,
                 expert_width: int, expert_depth: int, tower_width: int, experts_on: str = "input"):
        """``experts_on: backbone``: the first level's experts are copies of the backbone; later levels are MLP experts
        of ``expert_width`` over the previous level's outputs."""
        if experts_on not in EXPERTS_ON:
            raise ValueError(f"experts_on must be one of {', '.join(EXPERTS_ON)}, got {experts_on!r}")
        first = backbone.out_features if experts_on == "backbone" else expert_width
        super().__init__(problem, backbone, first if levels == 1 else expert_width, tower_width)
        activation = backbone.params.get("activation", "relu")
        widths = [expert_width] * expert_depth
        ins = [backbone.input_features, first] + [expert_width] * (levels - 2)
        self.levels = nn.ModuleList(
            ExtractionLevel(len(self.tasks), ins[j], experts_per_task, shared_experts, widths, activation, shared_gate=j < levels - 1,
                            backbone=backbone if experts_on == "backbone" and j == 0 else None)
            for j in range(levels)
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[LevelGates]]:
        task_h, shared_h, gates = x, x, []
        for level in self.levels:
            task_h, shared_h, level_gates = level(task_h, shared_h)
            gates.append(level_gates)
        return task_h, x.new_zeros(()), gates

    def shared_parameters(self) -> list[nn.Parameter]:
        """Shared experts everywhere; below the last level also every private expert and the shared gate (they feed it)."""
        params: list[nn.Parameter] = []
        for j, level in enumerate(self.levels):
            params += list(level.shared.parameters())
            if j < len(self.levels) - 1:
                params += list(level.private.parameters()) + list(level.shared_gate.parameters())
        return params

    def last_shared_weights(self) -> list[nn.Parameter]:
        """GradNorm's W: the last level's shared experts' last weight matrix (stacked over those experts)."""
        return [last_expert_weight(self.levels[-1].shared)]

    def sharing_map(self, x: torch.Tensor) -> dict[str, SharingMap]:
        """Per level and task: gate mass on its own experts, on the shared ones, and on other tasks' experts
        reached through the previous level's shared gate (task mass on shared x shared-gate mass on others)."""
        _, _, gates = self.encode(self.input(x))
        per_task, maps = self.levels[0].per_task, {}
        for j, level_gates in enumerate(gates):
            own = level_gates.task[..., :per_task].sum(-1)  # (tasks, batch)
            shared = level_gates.task[..., per_task:].sum(-1)
            other = torch.zeros_like(shared)
            if j > 0:
                previous = gates[j - 1].shared[:, : len(self.tasks) * per_task].view(-1, len(self.tasks), per_task).sum(-1)  # (batch, tasks)
                other = shared * (previous.sum(-1, keepdim=True) - previous).T
            values = torch.stack([own, shared, other], dim=-1).mean(1)
            maps[f"level{j + 1}"] = SharingMap(values.clamp(0, 1), self.tasks, ["own", "shared", "other via shared gate"])
        return maps


# ---------------------------------------------------------------------------------------------
# Sparse routing: noisy top-k and Switch (their experts are RoutedExperts: only routed rows are computed)

@dataclass
class Routing:
    """What one sparse layer did with a batch: chosen experts (groups, batch, k) and which choices were processed."""

    expert: torch.Tensor
    kept: torch.Tensor
    n_experts: int


def prob_in_top_k(clean: torch.Tensor, noisy: torch.Tensor, noise_std: torch.Tensor, top_values: torch.Tensor, k: int) -> torch.Tensor:
    """P(x, i) = Phi(((x W_g)_i - kth_excluding(H(x), k, i)) / softplus((x W_noise)_i)) (Shazeer et al., appendix A).

    The chance that expert i stays in the top k when only its own noise is drawn again.
    ``top_values`` are the k + 1 largest noisy values (descending): the k-th largest of the
    others is the (k+1)-th overall when i is in the top k, the k-th overall when it is not.
    """
    threshold_if_in = top_values[..., k : k + 1]
    threshold_if_out = top_values[..., k - 1 : k]
    return torch.where(noisy > threshold_if_in, torch.special.ndtr((clean - threshold_if_in) / noise_std),
                       torch.special.ndtr((clean - threshold_if_out) / noise_std))


class NoisyTopKLayer(nn.Module):
    """Sparsely-gated MoE layer (Shazeer et al. 2017; docs/methods.md, "Sparsely-gated mixture of experts") with ``groups`` gates.

    H(x) = x W_g + eps * softplus(x W_noise) (eps ~ N(0, 1), in training only and when ``noise``);
    G(x) = softmax(KeepTopK(H(x), k)); y = sum_i G_i E_i(x), computed for the k chosen experts only.
    W_g and W_noise start at zero. Gate g reads input group g: (groups, batch, in) -> (groups, batch, out).

    Auxiliary loss per gate: importance_weight * CV(sum_x G(x))^2 + load_weight * CV(Load)^2,
    Load_i = sum_x Phi((x W_g)_i - kth_excluding(H(x), k, i)) / softplus((x W_noise)_i)). The load
    estimator exists only with noise and k < n: otherwise the load loss is left out (the count
    of rows has no gradient).
    """

    drops_rows = False

    def __init__(self, groups: int, in_features: int, experts: int, widths: list[int], activation: str, k: int,
                 noise: bool, importance_weight: float, load_weight: float):
        super().__init__()
        if not 1 <= k <= experts:
            raise ValueError(f"k={k} must lie in [1, experts={experts}]")
        self.k, self.n, self.noise = k, experts, noise
        self.importance_weight, self.load_weight = importance_weight, load_weight
        self.gate = StackedLinear(groups, in_features, experts, bias=False)
        self.noise_gate = StackedLinear(groups, in_features, experts, bias=False)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.noise_gate.weight)
        self.experts = RoutedExperts(StackedMLP(experts, in_features, widths, activation), experts)

    def gates(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sparse gate values (groups, batch, experts) with k non-zeros per row, the chosen experts, the auxiliary loss."""
        clean = self.gate(h)
        noisy = clean
        noisy_training = self.noise and self.training
        if noisy_training:
            noise_std = nn.functional.softplus(self.noise_gate(h))
            noisy = clean + torch.randn_like(clean) * noise_std
        top_values, top_index = noisy.topk(min(self.k + 1, self.n), dim=-1)
        gates = torch.zeros_like(noisy).scatter(-1, top_index[..., : self.k], torch.softmax(top_values[..., : self.k], dim=-1))
        auxiliary = self.importance_weight * cv_squared(gates.sum(1))
        if noisy_training and self.k < self.n:
            load = prob_in_top_k(clean, noisy, noise_std, top_values, self.k).sum(1)
            auxiliary = auxiliary + self.load_weight * cv_squared(load)
        return gates, top_index[..., : self.k], auxiliary

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Routing]:
        groups, batch, _ = h.shape
        gates, chosen, auxiliary = self.gates(h)
        row = torch.arange(groups * batch, device=h.device).repeat_interleave(self.k)
        expert = chosen.reshape(-1)
        weight = gates.reshape(groups * batch, self.n)[row, expert]
        out = self.experts(h.reshape(groups * batch, -1)[row], expert) * weight.unsqueeze(-1)
        mixed = out.new_zeros(groups * batch, out.shape[-1]).index_add(0, row, out)
        return mixed.view(groups, batch, -1), auxiliary, Routing(chosen, torch.ones_like(chosen, dtype=torch.bool), self.n)


TRUNCATED_STD = 0.87962566103423978  # std of a standard normal truncated at +-2 (the rescaling of variance_scaling)


class SwitchLayer(nn.Module):
    """A Switch layer (Fedus et al. 2021; docs/methods.md, "Switch routing"): h + p_i(h) E_i(h) with i = argmax p(h).

    The router p(h) = softmax(W_r h) runs in float32 whatever the autocast dtype. Capacity per
    expert = ceil(capacity_factor * rows / n) (at least 1; the rows come first-come in batch
    order); rows over capacity skip the experts and pass through the residual unchanged.
    Auxiliary loss alpha * N * sum_i f_i P_i (f_i: fraction of rows whose argmax is i, P_i: mean
    router probability) plus z_loss * mean(logsumexp(logits)^2). Experts are the FFN
    width -> expert_width -> width; the router is initialised as in the paper and its reference
    code (``variance_scaling(0.1, "fan_in", "truncated_normal")``): a normal truncated at two
    standard deviations whose pre-truncation std is sqrt(0.1 / fan_in) / TRUNCATED_STD, so the
    truncated draws have std sqrt(0.1 / fan_in).
    """

    drops_rows = True

    def __init__(self, width: int, experts: int, expert_width: int, activation: str, capacity_factor: float, alpha: float,
                 z_loss: float):
        super().__init__()
        self.n, self.capacity_factor, self.alpha, self.z_loss = experts, capacity_factor, alpha, z_loss
        std = math.sqrt(0.1 / width) / TRUNCATED_STD  # trunc_normal_ takes absolute bounds: truncate at two standard deviations
        self.router = nn.Parameter(nn.init.trunc_normal_(torch.empty(width, experts), std=std, a=-2 * std, b=2 * std))
        self.experts = RoutedExperts(StackedMLP(experts, width, [expert_width, width], activation, activate_output=False), experts)

    def router_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Router logits in float32 (autocast off), shape (rows, experts)."""
        with torch.autocast(device_type=h.device.type, enabled=False):
            return h.float() @ self.router.float()

    def balancing_loss(self, probs: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        """alpha * N * sum_i f_i P_i; equals alpha when routing is uniform."""
        fraction = torch.bincount(expert, minlength=self.n).float() / expert.numel()
        return self.alpha * self.n * (fraction * probs.mean(0)).sum()

    def capacity(self, rows: int) -> int:
        return max(1, math.ceil(self.capacity_factor * rows / self.n))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Routing]:
        x = h[0]  # one router for all tasks: a single group
        logits = self.router_logits(x)
        probs = torch.softmax(logits, dim=-1)
        top_prob, expert = probs.max(dim=-1)
        order, _, slot = expert_slots(expert, self.n)
        position = torch.empty_like(order)
        position[order] = slot  # rank among the rows sent to the same expert, in batch order
        kept = position < self.capacity(x.shape[0])
        routed = kept.nonzero().squeeze(-1)
        update = self.experts(x[routed], expert[routed]) * top_prob[routed].unsqueeze(-1).to(x.dtype)
        out = x.index_add(0, routed, update)
        auxiliary = self.balancing_loss(probs, expert)
        if self.z_loss:
            auxiliary = auxiliary + self.z_loss * (torch.logsumexp(logits, dim=-1) ** 2).mean()
        return out.unsqueeze(0), auxiliary, Routing(expert.view(1, -1, 1), kept.view(1, -1, 1), self.n)


class RoutingStats:
    """Per layer, counts of processed choices per expert and of dropped choices since the last reset."""

    def __init__(self, layers: list[tuple[int, bool]]):
        self.layers = layers  # (experts, drops rows) per layer
        self.reset()

    def reset(self) -> None:
        self.load = [torch.zeros(n) for n, _ in self.layers]
        self.dropped = [0.0 for _ in self.layers]
        self.total = [0.0 for _ in self.layers]

    def add(self, routings: list[Routing]) -> None:
        for j, routing in enumerate(routings):
            kept = routing.expert[routing.kept]
            self.load[j] += torch.bincount(kept.detach().cpu(), minlength=routing.n_experts).float()
            self.total[j] += routing.expert.numel()
            self.dropped[j] += float(routing.expert.numel() - kept.numel())

    def metrics(self) -> dict[str, float]:
        """``layer{j}/load/expert{i}``: share of layer j's routing choices that expert i processed; ``layer{j}/dropped_fraction``."""
        out: dict[str, float] = {}
        for j, (_, drops) in enumerate(self.layers):
            if not self.total[j]:
                continue
            for i, value in enumerate((self.load[j] / self.total[j]).tolist()):
                out[f"layer{j + 1}/load/expert{i}"] = value
            if drops:
                out[f"layer{j + 1}/dropped_fraction"] = self.dropped[j] / self.total[j]
        return out


class SparseMixtureModel(MixtureModel):
    """A stem, then sparse MoE layers over ``groups`` inputs (1: shared by all tasks; tasks: one gate per task), then towers."""

    def __init__(self, problem: Problem, backbone: Backbone, stem: nn.Module, layers: list[nn.Module], groups: int, width: int,
                 tower_width: int):
        super().__init__(problem, backbone, width, tower_width)
        self.stem, self.layers, self.groups = stem, nn.ModuleList(layers), groups
        self.stats = RoutingStats([(layer.n, layer.drops_rows) for layer in layers])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[Routing]]:
        h = self.stem(x)
        h = h.unsqueeze(0).expand(self.groups, *h.shape)
        auxiliary, routings = h.new_zeros(()), []
        for layer in self.layers:
            h, layer_auxiliary, routing = layer(h)
            auxiliary = auxiliary + layer_auxiliary
            routings.append(routing)
        if self.training:
            self.stats.add(routings)
        return h, auxiliary, routings

    def on_epoch_start(self, epoch: int) -> None:
        self.stats.reset()

    def export_refusal(self) -> str | None:
        return ("its sparse layers send each row only to the experts its gate picks, grouping the rows per expert by a "
                "data-dependent sort and gather (with an expert capacity, which rows an expert takes depends on the rest of the batch): "
                "a dispatch a static ONNX or TorchScript graph cannot express; serve it with the MLflow pyfunc model")

    def trial_metrics(self) -> dict[str, float]:
        return self.stats.metrics()

    def shared_parameters(self) -> list[nn.Parameter]:
        shared = list(self.stem.parameters())
        for layer in self.layers:
            shared += list(layer.experts.parameters()) if self.groups > 1 else list(layer.parameters())
        return shared

    def last_shared_weights(self) -> list[nn.Parameter]:
        """GradNorm's W: the last sparse layer's experts' last weight matrix (stacked over the experts)."""
        return [self.layers[-1].experts.experts.layers[-1].weight]

    def sharing_map(self, x: torch.Tensor) -> dict[str, SharingMap]:
        """Per layer: the share of each task's routing choices that each expert processed (and that were dropped)."""
        _, _, routings = self.encode(self.input(x))
        maps = {}
        for j, (routing, layer) in enumerate(zip(routings, self.layers)):
            choices = routing.expert[0].numel()
            load = torch.stack([torch.bincount(e[k], minlength=routing.n_experts).float() for e, k in zip(routing.expert, routing.kept)]) / choices
            columns = expert_names(routing.n_experts)
            if layer.drops_rows:
                load = torch.cat([load, (~routing.kept).flatten(1).float().mean(1, keepdim=True)], dim=1)
                columns = columns + ["dropped"]
            values = load.expand(len(self.tasks), -1) if self.groups == 1 else load
            maps[f"layer{j + 1}_load"] = SharingMap(values, self.tasks, columns)
        return maps


# ---------------------------------------------------------------------------------------------
# Strategies

def _activation(backbone: Backbone) -> str:
    return backbone.params.get("activation", "relu")


EXPERT_KNOBS = {
    "expert_width": Int(8, 256, log=True, minimum=1),
    "expert_depth": Int(1, 2, minimum=1),
    "tower_width": Int(4, 64, log=True, minimum=1),
}
# experts_on: "input" (MLP experts over the flat input) or "backbone" (each expert a copy of the backbone)
EXPERTS_ON_KNOB = Default("input", Choice(*EXPERTS_ON))
_KNOBS = {"experts": Int(2, 16, minimum=1), **EXPERT_KNOBS, "experts_on": EXPERTS_ON_KNOB}


class _FamilyStrategy(Strategy):
    """What every strategy of the family shares: the family name; experts read the backbone's input layer.

    Because the experts replace the backbone's blocks and read the flat output of its input
    layer, they build on every backbone kind: on an image backbone they are MLP experts over
    the pixels, on a table MLP experts over the encoded columns, unless the dense strategies'
    ``experts_on: backbone`` makes each expert a copy of the backbone.
    """

    family = "mixture_of_experts"
    declares_shared_parameters = True


class _MixtureOfExperts(_FamilyStrategy):
    knobs = _KNOBS
    gate_per_task = True

    def gate(self, problem: Problem, in_features: int, params: dict[str, Any]) -> nn.Module:
        return SoftmaxGate(in_features, len(problem.tasks) if self.gate_per_task else 1, params["experts"])

    def build(self, problem: Problem, backbone: Backbone, params: dict[str, Any]) -> MultiTaskModel:
        gate = self.gate(problem, backbone.input_features, params)
        return MixtureOfExpertsModel(problem, backbone, params["experts"], params["expert_width"], params["expert_depth"],
                                     params["tower_width"], gate, params.get("experts_on", "input"))


class MMoE(_MixtureOfExperts):
    name = "mmoe"
    description = "multi-gate mixture of experts: one softmax gate per task over shared experts"


class OMoE(_MixtureOfExperts):
    name = "omoe"
    description = "one-gate mixture of experts: a single softmax gate shared by all tasks"
    gate_per_task = False


class DSelectK(_MixtureOfExperts):
    name = "dselect_k"
    description = "MMoE with DSelect-k gates: k smooth-step binary selectors per task, static or per-example, entropy penalty"
    knobs = {
        **_KNOBS,
        "k": Int(1, 4, minimum=1),
        "gate": Choice("static", "per_example"),
        "entropy": Float(1e-3, 1.0, log=True, minimum=0.0),
        "gamma": Float(1.0, 1.0, minimum=1e-6),
    }

    def gate(self, problem: Problem, in_features: int, params: dict[str, Any]) -> nn.Module:
        return DSelectKGate(in_features, len(problem.tasks), params["experts"], params["k"], params["gate"] == "per_example",
                            params["gamma"], params["entropy"])


class _ProgressiveLayeredExtraction(_FamilyStrategy):
    knobs = {"shared_experts": Int(1, 4, minimum=1), "experts_per_task": Int(1, 4, minimum=1), **EXPERT_KNOBS,
             "experts_on": EXPERTS_ON_KNOB}

    def build(self, problem: Problem, backbone: Backbone, params: dict[str, Any]) -> MultiTaskModel:
        return ProgressiveLayeredExtractionModel(problem, backbone, params.get("levels", 1), params["shared_experts"],
                                                 params["experts_per_task"], params["expert_width"], params["expert_depth"],
                                                 params["tower_width"], params.get("experts_on", "input"))


class CGC(_ProgressiveLayeredExtraction):
    name = "cgc"
    description = "customized gate control: private experts per task plus shared experts, each task gated over its own and the shared"


class PLE(_ProgressiveLayeredExtraction):
    name = "ple"
    description = "progressive layered extraction: stacked CGC levels with a shared gate over all experts on every level but the last"
    knobs = {"levels": Int(1, 3, minimum=1), **_ProgressiveLayeredExtraction.knobs}


class TopKMoE(_FamilyStrategy):
    name = "topk_moe"
    description = "sparsely-gated MoE: noisy top-k gating with importance and load losses; shared gate or one gate per task"
    knobs = {
        "experts": Int(4, 16, minimum=1),
        "k": Int(1, 3, minimum=1),
        "noise": Choice(True, False),
        "importance_weight": Float(1e-3, 0.1, log=True, minimum=0.0),
        "load_weight": Float(1e-3, 0.1, log=True, minimum=0.0),
        "gates": Choice("shared", "per_task"),
        "layers": Int(1, 2, minimum=1),
        **EXPERT_KNOBS,
    }

    def check(self, knobs: dict[str, Knob], backbone: dict[str, Knob], path: str) -> None:
        """Every k the space allows must be at most every expert count it allows (top-k of n needs k <= n)."""
        largest_k, fewest_experts = knob_bounds(knobs["k"])[1], knob_bounds(knobs["experts"])[0]
        if largest_k > fewest_experts:
            raise SpaceError(f"{path}.k", f"k may be {largest_k} but experts may be as few as {fewest_experts}; top-k routing needs k <= experts")

    def build(self, problem: Problem, backbone: Backbone, params: dict[str, Any]) -> MultiTaskModel:
        groups = len(problem.tasks) if params["gates"] == "per_task" else 1
        widths = [params["expert_width"]] * params["expert_depth"]
        ins = [backbone.input_features] + [params["expert_width"]] * (params["layers"] - 1)
        layers = [NoisyTopKLayer(groups, d, params["experts"], widths, _activation(backbone), params["k"], params["noise"],
                                 params["importance_weight"], params["load_weight"]) for d in ins]
        return SparseMixtureModel(problem, backbone, nn.Identity(), layers, groups, params["expert_width"], params["tower_width"])


class Switch(_FamilyStrategy):
    name = "switch"
    description = "Switch routing: float32 top-1 router with expert capacity, dropped rows on the residual, balancing and z-losses"
    backbones = ("mlp", "residual_mlp")  # its residual layers take the backbone's width
    knobs = {
        "experts": Int(4, 16, minimum=1),
        "capacity_factor": Float(1.0, 2.0, minimum=0.0),
        "alpha": Float(1e-3, 0.1, log=True, minimum=0.0),
        "z_loss": Float(0.0, 1e-2, minimum=0.0),
        "layers": Int(1, 2, minimum=1),
        "expert_width": EXPERT_KNOBS["expert_width"],
        "tower_width": EXPERT_KNOBS["tower_width"],
    }

    def build(self, problem: Problem, backbone: Backbone, params: dict[str, Any]) -> MultiTaskModel:
        """A linear stem to the backbone's width, then ``layers`` residual Switch layers, then towers."""
        width, activation = backbone.params["width"], _activation(backbone)
        stem = nn.Sequential(nn.Linear(backbone.input_features, width), ACTIVATIONS[activation]())
        layers = [SwitchLayer(width, params["experts"], params["expert_width"], activation, params["capacity_factor"],
                              params["alpha"], params["z_loss"]) for _ in range(params["layers"])]
        return SparseMixtureModel(problem, backbone, stem, layers, 1, width, params["tower_width"])


@hookimpl
def register_strategies(register):
    for strategy in (MMoE(), OMoE(), CGC(), PLE(), TopKMoE(), Switch(), DSelectK()):
        register(strategy)
