"""Soft parameter sharing: cross-stitch networks, L2 soft sharing and the Multilinear Relationship Network.

- ``cross_stitch`` (Misra et al., CVPR 2016; docs/methods.md, "Cross-stitch networks"): one column per task,
  the T activations mixed by a learned T x T matrix (optionally one per channel) after
  chosen blocks; alpha starts at 0.9 on the diagonal and 0.1/(T-1) elsewhere and learns
  by SGD with a learning rate ``alpha_lr_multiplier`` times the network's (the network
  itself trains with the trainer's AdamW). GradNorm measures the last stitched block of
  every column (see ``CrossStitchModel.last_shared_weights``).
- ``l2_soft`` (Duong et al., ACL 2015; docs/methods.md, "L2 soft sharing"): one column per task, penalty
  lambda * sum over task pairs of the squared distance of corresponding parameters of the
  tied blocks.
- ``mrn`` (Long et al., NeurIPS 2017; docs/methods.md, "MRN"): a shared trunk, task-specific last layers
  under a tensor-normal prior whose three covariances are re-estimated (flip-flop) after
  every optimiser step, all with mode products.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mtl_search import (
    Backbone,
    Choice,
    Float,
    Int,
    MultiTaskModel,
    Problem,
    SharingMap,
    StackedLinear,
    Strategy,
    hookimpl,
    make_tower,
)

BLOCK_CHOICES = ("all", "first_half", "second_half", "last")


def chosen_blocks(spec: str, depth: int) -> list[int]:
    """Indices of the blocks a ``which blocks`` knob value names; with an odd depth both halves hold the middle block."""
    half = math.ceil(depth / 2)
    blocks = {
        "all": range(depth),
        "first_half": range(half),
        "second_half": range(depth // 2, depth),
        "last": range(depth - 1, depth),
    }
    if spec not in blocks:
        raise ValueError(f"blocks must be one of {', '.join(BLOCK_CHOICES)}, got {spec!r}")
    return list(blocks[spec])


class TaskColumns(nn.Module):
    """One independently initialised copy of the backbone per task, and a tower per task."""

    def __init__(self, problem: Problem, backbone: Backbone, tower_width: int):
        super().__init__()
        self.tasks = problem.task_names
        self.depth = backbone.depth
        self.stems = nn.ModuleList(backbone.new_stem() for _ in self.tasks)
        self.blocks = nn.ModuleList(backbone.new_blocks() for _ in self.tasks)  # blocks[task][block]
        self.features = nn.ModuleList(backbone.new_features() for _ in self.tasks)
        self.towers = nn.ModuleList(make_tower(backbone.out_features, t.output_dim, [tower_width]) for t in problem.tasks)

    def block_parameters(self, task: int, block: int) -> list[nn.Parameter]:
        """The parameters of one task's copy of ``block``; the stem travels with block 0."""
        params = list(self.blocks[task][block].parameters())
        return params + list(self.stems[task].parameters()) if block == 0 else params

    def forward(self, x: torch.Tensor, stitches: nn.ModuleDict | None = None) -> dict[str, torch.Tensor]:
        """Every column on ``x``; ``stitches[str(j)]``, when given, mixes the columns' activations after block j."""
        h = [stem(x) for stem in self.stems]
        for j in range(self.depth):
            h = [self.blocks[t][j](h[t]) for t in range(len(h))]
            if stitches is not None and str(j) in stitches:
                h = stitches[str(j)](h)
        return {name: self.towers[t](self.features[t](h[t])) for t, name in enumerate(self.tasks)}


class CrossStitchUnit(nn.Module):
    """x~_t = sum_s alpha[t, s] x_s over the T column activations, one alpha or one per channel (axis 1)."""

    def __init__(self, tasks: int, channels: int | None):
        super().__init__()
        off = 0.1 / (tasks - 1) if tasks > 1 else 0.0
        alpha = torch.full((tasks, tasks), off).fill_diagonal_(0.9 if tasks > 1 else 1.0)
        self.alpha = nn.Parameter(alpha if channels is None else alpha.expand(channels, tasks, tasks).clone())

    def forward(self, columns: list[torch.Tensor]) -> list[torch.Tensor]:
        stacked = torch.stack(columns)  # (tasks, batch, channels, ...)
        if self.alpha.dim() == 2:
            mixed = torch.einsum("ts,s...->t...", self.alpha, stacked)
        else:
            flat = stacked.reshape(*stacked.shape[:3], -1)  # (tasks, batch, channels, rest)
            mixed = torch.einsum("cts,sbcr->tbcr", self.alpha, flat).reshape(stacked.shape)
        return list(mixed.unbind(0))

    def mixing(self) -> torch.Tensor:
        """The T x T mixing matrix (averaged over channels when per channel)."""
        return self.alpha if self.alpha.dim() == 2 else self.alpha.mean(0)


class CrossStitchModel(MultiTaskModel):
    def __init__(self, problem: Problem, backbone: Backbone, stitch_blocks: str, alpha_per_channel: bool,
                 alpha_lr_multiplier: float, tower_width: int):
        super().__init__(problem)
        self.columns = TaskColumns(problem, backbone, tower_width)
        self.stitch_at = chosen_blocks(stitch_blocks, backbone.depth)
        tasks = len(problem.tasks)
        self.units = nn.ModuleDict({
            str(j): CrossStitchUnit(tasks, backbone.block_shapes[j][0] if alpha_per_channel else None) for j in self.stitch_at
        })
        self.alpha_lr_multiplier = alpha_lr_multiplier

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.columns(x, self.units)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """The network at ``lr`` (the trainer's AdamW); the stitch units by plain SGD at ``lr * alpha_lr_multiplier``, no weight decay.

        The paper trains everything by SGD and alpha with a learning rate about 10^3 times the
        network's: a step proportional to alpha's gradient. Under AdamW a step is about the
        learning rate whatever the gradient's size, so the same multiplier would move alpha by
        about ``lr * multiplier`` per step (rows far from convex within a few dozen steps);
        SGD keeps the paper's update for alpha. No weight decay: it would pull alpha to 0.
        """
        alphas = list(self.units.parameters())
        alpha_ids = {id(p) for p in alphas}
        network = [p for p in self.parameters() if p.requires_grad and id(p) not in alpha_ids]
        return [{"params": network, "lr": lr},
                {"params": alphas, "lr": lr * self.alpha_lr_multiplier, "weight_decay": 0.0, "optimizer": "sgd"}]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Every column's parameters up to the last stitch point reach every task, as do the units."""
        last = max(self.stitch_at)
        params = [p for t in range(len(self.columns.tasks)) for j in range(last + 1) for p in self.columns.block_parameters(t, j)]
        return params + list(self.units.parameters())

    def last_shared_weights(self) -> list[nn.Parameter]:
        """GradNorm's W: the last weight tensor of every column's block at the last stitch point, measured jointly.

        The stitch unit's T x T alpha is a mixing coefficient, not a layer's weights; the
        last layer whose output reaches every task is block ``max(stitch_at)`` of every
        column (each task's loss depends on all of them through the stitch), so GradNorm
        balances the norm of each task's gradient on those T weight tensors together.
        """
        last = max(self.stitch_at)
        weights = []
        for column in self.columns.blocks:
            named = [(n, p) for n, p in column[last].named_parameters() if p.requires_grad]
            matrices = [p for n, p in named if p.dim() >= 2 and not n.rsplit(".", 1)[-1].startswith("bias")]
            weights += matrices[-1:]
        return weights

    def sharing_map(self, x: torch.Tensor) -> dict[str, SharingMap]:
        """Per stitch point: |alpha| with rows normalised to sum one (at init exactly alpha)."""
        maps = {}
        for j, unit in self.units.items():
            mix = unit.mixing().detach().abs()
            maps[f"alpha_block{j}"] = SharingMap(mix / mix.sum(1, keepdim=True).clamp_min(1e-12), self.columns.tasks, self.columns.tasks)
        return maps


class L2SoftModel(MultiTaskModel):
    def __init__(self, problem: Problem, backbone: Backbone, penalty: float, tied_blocks: str, tower_width: int):
        super().__init__(problem)
        self.columns = TaskColumns(problem, backbone, tower_width)
        self.penalty = penalty
        self.tied = chosen_blocks(tied_blocks, backbone.depth)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.columns(x)

    def copies(self, block: int) -> list[torch.Tensor]:
        """Each parameter of ``block`` stacked over the task copies: tensors of shape (tasks, ...)."""
        per_task = [self.columns.block_parameters(t, block) for t in range(len(self.columns.tasks))]
        return [torch.stack(group) for group in zip(*per_task)]

    def pairwise_distance(self, block: int) -> torch.Tensor:
        """sum over task pairs t < s of ||theta_t - theta_s||^2 for one block."""
        total = torch.zeros((), device=self._device())
        for stacked in self.copies(block):
            first, second = torch.triu_indices(len(stacked), len(stacked), offset=1, device=stacked.device)
            total = total + (stacked[first] - stacked[second]).pow(2).sum()
        return total

    def regularization(self) -> torch.Tensor:
        return self.penalty * sum((self.pairwise_distance(j) for j in self.tied), torch.zeros((), device=self._device()))

    def sharing_map(self, x: torch.Tensor) -> dict[str, SharingMap]:
        """Per block and task: mean over the other tasks of 1 - ||a - b||^2 / (2 (||a||^2 + ||b||^2)), in [0, 1], 1 for identical copies."""
        tasks = len(self.columns.tasks)
        values = torch.zeros(tasks, self.columns.depth)
        for j in range(self.columns.depth):
            flat = torch.cat([p.detach().reshape(tasks, -1) for p in self.copies(j)], dim=1).cpu()
            sq = flat.pow(2).sum(1)
            dist = torch.cdist(flat, flat).pow(2)
            similarity = 1 - dist / (2 * (sq[:, None] + sq[None, :])).clamp_min(1e-12)
            values[:, j] = (similarity.sum(1) - similarity.diagonal()) / max(tasks - 1, 1)
        columns = [f"block{j}{'' if j in self.tied else ' (untied)'}" for j in range(self.columns.depth)]
        return {"copy_similarity": SharingMap(values.clamp(0, 1), self.columns.tasks, columns)}


def mode_product(tensor: torch.Tensor, matrix: torch.Tensor, mode: int) -> torch.Tensor:
    """The mode-``mode`` product tensor x_mode matrix: ``matrix`` applied along one axis."""
    return torch.movedim(torch.tensordot(matrix, tensor, dims=([1], [mode])), 0, mode)


class TensorNormalPrior(nn.Module):
    """TN(0, S_task, S_in, S_out) over a stacked weight W of shape (tasks, D_in, D_out); holds the precisions O = S^-1.

    ``penalty(W) = vec(W)^T (O_task kron O_in kron O_out) vec(W)`` and ``update(W)`` (flip-flop)
    both use mode products only; the Kronecker product is never formed.
    """

    def __init__(self, shape: tuple[int, int, int], eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        for mode, size in enumerate(shape):
            self.register_buffer(f"covariance{mode}", torch.eye(size))
            self.register_buffer(f"precision{mode}", torch.eye(size))

    def precisions(self) -> list[torch.Tensor]:
        return [getattr(self, f"precision{mode}") for mode in range(3)]

    def penalty(self, weight: torch.Tensor) -> torch.Tensor:
        scaled = weight
        for mode, precision in enumerate(self.precisions()):
            scaled = mode_product(scaled, precision, mode)
        return (weight * scaled).sum()

    @torch.no_grad()
    def update(self, weight: torch.Tensor) -> None:
        """S_k <- W_(k) (kron of the other two precisions) W_(k)^T scaled to trace = its size, + eps I; O_k = S_k^-1.

        Every mode is updated from the old precisions (flip-flop). Scaling the trace to the
        size (rather than to 1) keeps the identity start a fixed point; a constant factor
        only rescales the penalty, whose weight is a knob. The eps ridge comes after the
        scaling so that it bounds every precision by 1/eps: a mode wider than the product of
        the other two (D_in > T * D_out, the usual case) has a rank-deficient estimate, and
        a ridge added before the scaling vanishes next to a large trace and lets the
        precisions diverge until the inverse fails.
        """
        weight = weight.detach().double()
        old = [p.double().clone() for p in self.precisions()]  # kept apart: the buffers change below
        for mode in range(3):
            scaled = weight
            for other in range(3):
                if other != mode:
                    scaled = mode_product(scaled, old[other], other)
            size = weight.shape[mode]
            covariance = torch.tensordot(torch.movedim(scaled, mode, 0), torch.movedim(weight, mode, 0), dims=([1, 2], [1, 2]))
            covariance = covariance * (size / torch.trace(covariance).clamp_min(torch.finfo(covariance.dtype).tiny))
            covariance = covariance + self.eps * torch.eye(size, dtype=covariance.dtype, device=covariance.device)
            getattr(self, f"covariance{mode}").copy_(covariance)
            getattr(self, f"precision{mode}").copy_(torch.linalg.inv(covariance))

    def task_correlation(self) -> torch.Tensor:
        """The task covariance S_task normalised to a correlation matrix."""
        covariance = self.covariance0
        scale = covariance.diagonal().clamp_min(1e-12).sqrt()
        return covariance / (scale[:, None] * scale[None, :])


class MRNModel(MultiTaskModel):
    """Shared trunk; task-specific layers stacked as (tasks, D_in, D_out) tensors, each under a tensor-normal prior.

    The task-specific hidden layer always carries a prior; the output layer does too when
    every task has the same output width (otherwise the tasks' outputs are not one tensor).
    """

    def __init__(self, problem: Problem, backbone: Backbone, task_width: int, penalty_weight: float):
        super().__init__(problem)
        self.tasks = problem.task_names
        tasks = len(self.tasks)
        self.trunk = nn.Sequential(backbone.new_stem(), *backbone.new_blocks(), backbone.new_features())
        self.hidden = StackedLinear(tasks, backbone.out_features, task_width)
        self.activation = nn.ReLU()
        widths = {t.output_dim for t in problem.tasks}
        self.stacked_output = len(widths) == 1
        if self.stacked_output:
            self.output = StackedLinear(tasks, task_width, widths.pop())
        else:
            self.output = nn.ModuleList(nn.Linear(task_width, t.output_dim) for t in problem.tasks)
        layers = [self.hidden, self.output] if self.stacked_output else [self.hidden]
        self.prior_layers = ["hidden", "output"][: len(layers)]
        self.priors = nn.ModuleList(TensorNormalPrior(tuple(layer.weight.shape)) for layer in layers)
        self.penalty_weight = penalty_weight

    def _weights(self) -> list[torch.Tensor]:
        return [getattr(self, name).weight for name in self.prior_layers]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.activation(self.hidden(self.trunk(x)))  # (tasks, batch, task_width)
        if self.stacked_output:
            out = self.output(h)
            return {name: out[t] for t, name in enumerate(self.tasks)}
        return {name: self.output[t](h[t]) for t, name in enumerate(self.tasks)}

    def regularization(self) -> torch.Tensor:
        return self.penalty_weight * sum(prior.penalty(w) for prior, w in zip(self.priors, self._weights()))

    def after_step(self) -> None:
        for prior, weight in zip(self.priors, self._weights()):
            prior.update(weight)

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    def sharing_map(self, x: torch.Tensor) -> dict[str, SharingMap]:
        """|task correlation| of each prior's task covariance."""
        return {f"task_correlation_{name}": SharingMap(prior.task_correlation().abs().clamp(0, 1), self.tasks, self.tasks)
                for name, prior in zip(self.prior_layers, self.priors)}

    def trial_metrics(self) -> dict[str, float]:
        """The signed task correlations of the hidden layer's prior (the map shows magnitudes)."""
        corr = self.priors[0].task_correlation()
        return {f"task_correlation/{a}/{b}": float(corr[i, j]) for i, a in enumerate(self.tasks) for j, b in enumerate(self.tasks) if i < j}


TOWER_WIDTH = Int(4, 64, log=True, minimum=1)


class CrossStitch(Strategy):
    name = "cross_stitch"
    family = "soft_sharing"
    description = "one column per task; learned T x T mixing of the columns' activations after chosen blocks"
    knobs = {
        "stitch_blocks": Choice(*BLOCK_CHOICES),
        "alpha_per_channel": Choice(False, True),
        # alpha's SGD rate is lr * multiplier; the paper's 1e2-1e3 is relative to an SGD network rate, and at the
        # AdamW-scale rates of a search (~1e-3) a multiplier of 1000 moves alpha's rows to sums of 2-4 within 25 steps
        # of a 32-wide MLP (100: within 0.1 of 1); a space may widen the range
        "alpha_lr_multiplier": Float(1.0, 100.0, log=True, minimum=0.0),
        "tower_width": TOWER_WIDTH,
    }

    def build(self, problem: Problem, backbone: Backbone, params: dict[str, Any]) -> MultiTaskModel:
        return CrossStitchModel(problem, backbone, params["stitch_blocks"], params["alpha_per_channel"],
                                params["alpha_lr_multiplier"], params["tower_width"])


class L2Soft(Strategy):
    name = "l2_soft"
    family = "soft_sharing"
    description = "one column per task; lambda * squared distance between the task copies of the tied blocks"
    knobs = {
        "penalty": Float(1e-4, 1.0, log=True, minimum=0.0),
        "tied_blocks": Choice(*BLOCK_CHOICES),
        "tower_width": TOWER_WIDTH,
    }

    def build(self, problem: Problem, backbone: Backbone, params: dict[str, Any]) -> MultiTaskModel:
        return L2SoftModel(problem, backbone, params["penalty"], params["tied_blocks"], params["tower_width"])


class MRN(Strategy):
    name = "mrn"
    family = "soft_sharing"
    description = "shared trunk; task-specific layers under a tensor-normal prior with flip-flop covariance updates"
    knobs = {
        "task_width": Int(8, 128, log=True, minimum=1),
        "penalty_weight": Float(1e-5, 1e-2, log=True, minimum=0.0),
    }

    def build(self, problem: Problem, backbone: Backbone, params: dict[str, Any]) -> MultiTaskModel:
        return MRNModel(problem, backbone, params["task_width"], params["penalty_weight"])


@hookimpl
def register_strategies(register):
    register(CrossStitch())
    register(L2Soft())
    register(MRN())
