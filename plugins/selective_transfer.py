"""Selective layer transfer by EM, LASEM (Lee, Behpour & Eaton, ICML 2021; docs/methods.md, "LASEM").

Every task chooses, per block (or per group of blocks, "LASEMG"), between the shared block
and its own private copy. A transfer configuration is one such binary choice per group, so
a task has 2^G configurations. Per minibatch and per task:

- E-step (eval mode, no gradient): log-likelihood of the batch under every configuration,
  ``log mean_rows p_c(y | x)``; regression uses a Gaussian with the task's running residual
  variance, classification the probability of the true class. Posterior = prior x
  likelihood, normalised in log space.
- M-step: the task's loss is the posterior-weighted sum of the configuration losses; the
  trainer takes one optimiser step on it (every configuration uses the same tensors).

The prior is the running mean of past posteriors (the paper's), optionally reset every
epoch, or argmax counts. At the end each task keeps its argmax-prior configuration and
only the copies it selects run and count as parameters.
``mode: joint`` runs the EM for all tasks at once over the same shared blocks;
``mode: sequential`` is the paper's lifelong setting: tasks are trained one after another
and shared blocks a task did not select are restored to their values before that task.
"""
from __future__ import annotations

import math
from itertools import chain
from typing import Any

import torch
from torch import nn

from mtl_search import (
    Backbone,
    Choice,
    Int,
    Knob,
    MultiTaskModel,
    Problem,
    SharingMap,
    SpaceError,
    Split,
    Strategy,
    Trainer,
    copy_state,
    count_parameters,
    hookimpl,
    knob_bounds,
    make_tower,
)

MAX_CONFIGURATIONS = 64  # per task: 2^6, i.e. at most 6 block groups
MAX_GROUPS = int(math.log2(MAX_CONFIGURATIONS))
RESIDUAL_MOMENTUM = 0.1  # weight of the newest batch in the running residual variance
MIN_VARIANCE = 1e-6
PRIORS = ("running_mean", "epoch_reset", "argmax_counts")
MODES = ("joint", "sequential")
# Layers whose training-mode output depends on the whole batch: prefixes are then run one by one.
_BATCH_STATISTICS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def log_posterior(log_prior: torch.Tensor, log_likelihood: torch.Tensor) -> torch.Tensor:
    """``log(prior * likelihood / sum)`` over the last dimension, without leaving log space.

    Computed in float64: log-likelihoods of badly fitting configurations reach -1e4 and
    beyond, where float32 rounding alone would shift the normalised sum by 1e-4.
    """
    joint = log_prior.double() + log_likelihood.double()
    return joint - torch.logsumexp(joint, dim=-1, keepdim=True)


def batch_log_likelihood(row_log_likelihood: torch.Tensor) -> torch.Tensor:
    """``log mean_rows p_c(y|x)`` from per-row log-likelihoods of shape (configurations, rows)."""
    return torch.logsumexp(row_log_likelihood.double(), dim=-1) - math.log(row_log_likelihood.shape[-1])


def block_groups(depth: int, groups: int) -> list[range]:
    """``groups`` contiguous runs of the ``depth`` blocks, sizes differing by at most one."""
    return [range(g * depth // groups, (g + 1) * depth // groups) for g in range(groups)]


def configuration_bits(groups: int) -> torch.Tensor:
    """(2^groups, groups) 0/1 matrix: bit g of configuration index c is 1 when group g uses the shared block."""
    return (torch.arange(2**groups).unsqueeze(1) >> torch.arange(groups)) & 1


class LasemModel(MultiTaskModel):
    """Shared units, one private copy of every unit per task, a tower per task, and the EM state.

    A *unit* is one block group; the backbone's stem travels with the first unit and its
    feature map with the last, so shape-changing backbones (conv) work unchanged.
    """

    def __init__(self, problem: Problem, backbone: Backbone, groups: int, tower_width: int, prior: str, mode: str):
        super().__init__(problem)
        if backbone.depth < 1:
            raise ValueError("lasem needs a backbone with at least one block")
        if not 1 <= groups <= backbone.depth:
            raise ValueError(f"groups {groups} must lie in [1, {backbone.depth}] (the backbone's depth)")
        if 2**groups > MAX_CONFIGURATIONS:
            raise ValueError(f"{groups} groups give {2**groups} configurations per task, above the limit {MAX_CONFIGURATIONS}")
        if prior not in PRIORS or mode not in MODES:
            raise ValueError(f"prior must be one of {PRIORS} and mode one of {MODES}, got {prior!r}, {mode!r}")
        self.tasks = problem.task_names
        self.depth, self.prior_kind, self.mode = backbone.depth, prior, mode
        self.groups = block_groups(backbone.depth, groups)
        self.shared = self._new_units(backbone)
        self.private = nn.ModuleDict({t: self._new_units(backbone) for t in self.tasks})
        self.towers = nn.ModuleDict({t.name: make_tower(backbone.out_features, t.output_dim, [tower_width]) for t in problem.tasks})
        n_tasks, n_configs = len(self.tasks), 2**groups
        self.register_buffer("bits", configuration_bits(groups), persistent=False)
        self.register_buffer("posterior_sum", torch.zeros(n_tasks, n_configs))
        self.register_buffer("posterior_count", torch.zeros(n_tasks))
        self.register_buffer("argmax_count", torch.zeros(n_tasks, n_configs))
        self.register_buffer("residual_variance", torch.full((n_tasks,), math.nan))
        self.active = list(self.tasks)  # the tasks whose EM runs in task_losses (one at a time in sequential mode)
        self.batch_prefixes = not any(isinstance(m, _BATCH_STATISTICS) for m in self.modules())

    def _new_units(self, backbone: Backbone) -> nn.ModuleList:
        last = len(self.groups) - 1
        return nn.ModuleList(
            nn.Sequential(*([backbone.new_stem()] if g == 0 else []), *(backbone.new_block(i) for i in blocks),
                          *([backbone.new_features()] if g == last else []))
            for g, blocks in enumerate(self.groups)
        )

    # --- the prior and the configurations it selects -------------------------------------------
    def prior(self) -> torch.Tensor:
        """(tasks, configurations) prior; uniform for a task before its first E-step."""
        if self.prior_kind == "argmax_counts":
            counts = self.argmax_count + 1.0  # add-one smoothing: a zero count would exclude a configuration forever
            return counts / counts.sum(dim=1, keepdim=True)
        count = self.posterior_count.unsqueeze(1)
        uniform = torch.full_like(self.posterior_sum, 1.0 / self.posterior_sum.shape[1])
        return torch.where(count > 0, self.posterior_sum / count.clamp(min=1.0), uniform)

    def configuration(self) -> dict[str, list[int]]:
        """Each task's current configuration (argmax of its prior): 1 = shared, 0 = private, one entry per group."""
        chosen = self.bits[self.prior().argmax(dim=1)]
        return {task: chosen[i].tolist() for i, task in enumerate(self.tasks)}

    def on_epoch_start(self, epoch: int) -> None:
        if self.prior_kind == "epoch_reset":
            for index in self._active_indices():
                self.posterior_sum[index] = 0.0
                self.posterior_count[index] = 0.0

    def _active_indices(self) -> list[int]:
        return [self.tasks.index(t) for t in self.active]

    # --- evaluating all configurations -------------------------------------------------------------
    def _through(self, unit: nn.Module, states: torch.Tensor) -> torch.Tensor:
        """Apply ``unit`` to (prefixes, rows, ...) states: one batched call, unless batch statistics forbid mixing prefixes."""
        if self.batch_prefixes or not self.training:
            return unit(states.flatten(0, 1)).unflatten(0, states.shape[:2])
        return torch.stack([unit(s) for s in states])

    def configuration_outputs(self, x: torch.Tensor, task: str) -> torch.Tensor:
        """``task``'s predictions under every configuration, shape (2^G, rows, output).

        Configurations sharing a prefix share its computation: group g runs once for each
        of the 2^g distinct prefixes (all of them in one batched call), never once per
        configuration, and no weight is copied.
        """
        states = x.unsqueeze(0)
        for shared, private in zip(self.shared, self.private[task]):
            # private first: the new index is bit_g * 2^g + old index, so bit g of the index is group g's choice
            states = torch.cat([self._through(private, states), self._through(shared, states)])
        return self._through(self.towers[task], states)

    def e_step(self, task: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Log-posterior over ``task``'s configurations for this batch (eval mode); updates the prior and residual variance."""
        index, spec = self.tasks.index(task), self.problem.task(task)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                outputs = self.configuration_outputs(x, task)
        finally:
            self.train(was_training)
        n_configs = outputs.shape[0]
        log_prior = self.prior()[index].log()
        variance: float | torch.Tensor = 1.0
        if spec.kind == "regression":
            squared = (outputs.reshape(n_configs, -1) - y.reshape(1, -1).to(outputs.dtype)).square().mean(dim=1)
            if torch.isnan(self.residual_variance[index]):
                self.residual_variance[index] = (log_prior.exp() * squared).sum().clamp(min=MIN_VARIANCE)
            variance = self.residual_variance[index]
        rows = spec.log_likelihood(outputs.flatten(0, 1), y.reshape(-1).repeat(n_configs), variance).view(n_configs, -1)
        log_post = log_posterior(log_prior, batch_log_likelihood(rows)).to(outputs.dtype)
        posterior = log_post.exp()
        self.posterior_sum[index] += posterior
        self.posterior_count[index] += 1.0
        self.argmax_count[index, posterior.argmax()] += 1.0
        if spec.kind == "regression":
            batch_variance = (posterior * squared).sum()
            updated = (1 - RESIDUAL_MOMENTUM) * self.residual_variance[index] + RESIDUAL_MOMENTUM * batch_variance
            self.residual_variance[index] = updated.clamp(min=MIN_VARIANCE)
        return log_post

    def task_losses(self, batch: Split) -> dict[str, torch.Tensor]:
        """E-step, then the M-step objective: sum over configurations of posterior x loss, per active task."""
        losses = {}
        for task in self.active:
            spec, mask = self.problem.task(task), batch.labelled(task)
            x, y = (batch.x, batch.y[task]) if mask is None else (batch.x[mask], batch.y[task][mask])
            if len(x) == 0:  # no label of this task in the batch: nothing to learn, keep the graph
                losses[task] = self.towers[task][-1].bias.sum() * 0.0
                continue
            log_post = self.e_step(task, x, y)  # before the training-mode pass, which may update batch-norm statistics
            outputs = self.configuration_outputs(x, task)
            posterior = log_post.exp()
            n_configs = outputs.shape[0]
            per_row = spec.loss(outputs.flatten(0, 1), y.reshape(-1).repeat(n_configs), reduction="none")
            losses[task] = (posterior * per_row.view(n_configs, -1).mean(dim=1)).sum()
        return losses

    # --- the selected model ------------------------------------------------------------------------
    def units_of(self, task: str, bits: list[int]) -> list[nn.Module]:
        """The units ``task`` runs under a configuration (``bits``: one 0/1 per group, 1 = shared)."""
        return [self.shared[g] if use_shared else self.private[task][g] for g, use_shared in enumerate(bits)]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each task through its current configuration only; tasks whose paths share a prefix compute it once."""
        computed: dict[tuple[str, ...], torch.Tensor] = {}
        out = {}
        for task, bits in self.configuration().items():
            h, key = x, ()
            for use_shared, unit in zip(bits, self.units_of(task, bits)):
                key = key + ("shared" if use_shared else task,)
                if key not in computed:
                    computed[key] = unit(h)
                h = computed[key]
            out[task] = self.towers[task](h)
        return out

    def inference_parameters(self) -> int:
        """Parameters the selected configurations use: private copies never selected (and shared units nobody selects) drop out."""
        used = [unit for task, bits in self.configuration().items() for unit in self.units_of(task, bits)]
        return count_parameters(chain.from_iterable(m.parameters() for m in [*used, *self.towers.values()]))

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.shared.parameters())

    def sharing_map(self, x: torch.Tensor) -> dict[str, SharingMap]:
        """``p_shared``: P(block shared) under each task's prior; ``configuration``: the selected configuration (1 = shared)."""
        prior = self.prior()
        group_of_block = [g for g, blocks in enumerate(self.groups) for _ in blocks]
        p_shared = (prior @ self.bits.to(prior.dtype))[:, group_of_block]
        selected = self.bits[prior.argmax(dim=1)].to(prior.dtype)[:, group_of_block]
        columns = [f"block{i}" for i in range(self.depth)]
        return {"p_shared": SharingMap(p_shared, self.tasks, columns), "configuration": SharingMap(selected, self.tasks, columns)}

    def trial_metrics(self) -> dict[str, float]:
        """Per task: its configuration's prior mass and, per block, whether it uses the shared block."""
        prior = self.prior()
        metrics: dict[str, float] = {}
        for i, (task, bits) in enumerate(self.configuration().items()):
            metrics[f"lasem/{task}/configuration_mass"] = float(prior[i].max())
            for g, blocks in enumerate(self.groups):
                metrics.update({f"lasem/{task}/block{b}_shared": float(bits[g]) for b in blocks})
        return metrics

    # --- sequential (lifelong) mode ------------------------------------------------------------------
    def shared_state(self) -> list[dict[str, torch.Tensor]]:
        """A copy of every shared unit's state (parameters and buffers)."""
        return [copy_state(unit) for unit in self.shared]

    def restore_unselected_shared(self, task: str, before: list[dict[str, torch.Tensor]]) -> None:
        """Put back the shared units ``task``'s configuration does not use, as they were in ``before``."""
        for unit, state, use_shared in zip(self.shared, before, self.configuration()[task]):
            if not use_shared:
                unit.load_state_dict(state)


class Lasem(Strategy):
    name = "lasem"
    family = "selective_transfer"
    description = "EM over per-task transfer configurations: each task picks shared block or private copy per block group"
    knobs = {
        "groups": Int(1, "depth", minimum=1, maximum=MAX_GROUPS),
        "mode": Choice(*MODES),
        "prior": Choice(*PRIORS),
        "tower_width": Int(4, 64, log=True, minimum=1),
    }

    def check(self, knobs: dict[str, Knob], backbone: dict[str, Knob], path: str) -> None:
        """Refuse group ranges that allow more than MAX_CONFIGURATIONS configurations (the core refuses more groups than blocks)."""
        most = knob_bounds(knobs["groups"], backbone)[1]
        if 2**most > MAX_CONFIGURATIONS:
            raise SpaceError(
                f"{path}.groups",
                f"up to {most} block groups allow {2**most} transfer configurations per task, above the limit of "
                f"{MAX_CONFIGURATIONS}; set groups to at most {MAX_GROUPS} (blocks are then grouped, LASEMG)",
            )

    def build(self, problem: Problem, backbone: Backbone, params: dict[str, Any]) -> MultiTaskModel:
        return LasemModel(problem, backbone, params["groups"], params["tower_width"], params["prior"], params["mode"])

    def fit(self, model: MultiTaskModel, trainer: Trainer) -> MultiTaskModel:
        """Joint: the trainer's loop (the E-step runs inside ``task_losses``). Sequential: one task at a time, ``epochs`` each."""
        if model.mode == "joint":
            trainer.fit(model)
            return model
        for task in model.tasks:
            before = model.shared_state()
            model.active = [task]
            trainer.fit(model, trainer.make_optimizer(model))
            model.restore_unselected_shared(task, before)
        model.active = list(model.tasks)
        return model


@hookimpl
def register_strategies(register):
    register(Lasem())
