"""Lookahead inter-task affinity (TAG: Fifty et al., "Efficiently Identifying Task Groupings for Multi-Task Learning", NeurIPS 2021).

On a training batch X, with theta_s the model's shared parameters::

    theta_s'(i) = theta_s - eta * grad_{theta_s} L_i(X)        (one step on task i's loss alone)
    Z(i -> j)   = 1 - L_j(X; theta_s'(i)) / L_j(X; theta_s)

Z(i -> j) > 0: a step for task i alone also lowers task j's loss. It is measured every
``training.affinity_every`` optimiser steps (0, the default: never) for any model whose
``shared_parameters()`` is not empty, and averaged over the measured steps.

The lookahead optimiser: a plain SGD step with the training optimiser's current learning
rate (its first parameter group's). The paper takes the training optimiser's step; with
AdamW that step depends on moment estimates accumulated from the *combined* gradients, so
a per-task AdamW step would mix in the other tasks' history; the SGD step is the one the
paper's formula writes and isolates task i. Task-specific parameters are left as they are
(they do not change L_j for j != i in one step on task i's loss).

Both losses of the ratio are computed by the same no-grad forward in evaluation mode (no
dropout, normalisation by running statistics), so the ratio measures the step and not the
noise of two dropout masks; the parameters and buffers are restored exactly afterwards.
Cost per measured step: one extra backward per task (its gradient on the shared
parameters, from the training forward's graph) and 1 + T extra forwards (the base losses
and one lookahead per task).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..record import AFFINITY, MODEL, affinity_key


def lookahead_affinity(shared: list[nn.Parameter], losses: dict[str, torch.Tensor],
                       evaluate: Callable[[], dict[str, torch.Tensor]], lr: float) -> torch.Tensor:
    """The T x T matrix Z[i, j] = Z(i -> j) of one batch.

    ``losses``: the tasks' losses of the batch, still attached to the graph (it is retained);
    ``evaluate()``: the tasks' losses of the same batch with the current parameters (no grad);
    ``lr``: the lookahead step size eta. The parameters in ``shared`` are restored exactly.
    """
    names = list(losses)
    if not shared:
        raise ValueError("task affinity needs shared parameters; the model declares none")
    grads = []
    for name in names:
        grad = torch.autograd.grad(losses[name], shared, retain_graph=True, allow_unused=True)
        grads.append([g if g is not None else torch.zeros_like(p) for g, p in zip(grad, shared)])
    saved = [p.detach().clone() for p in shared]
    affinity = torch.zeros(len(names), len(names))
    with torch.no_grad():
        base = evaluate()
        for i, grad in enumerate(grads):
            # through .data: the training graph, still to be backpropagated, saved these tensors; writing
            # their data leaves autograd's version counters alone, and the exact restore below keeps
            # that backward correct
            for p, g in zip(shared, grad):
                p.data.sub_(lr * g)
            after = evaluate()
            for p, s in zip(shared, saved):
                p.data.copy_(s)
            for j, name in enumerate(names):
                affinity[i, j] = 1.0 - float(after[name]) / max(float(base[name]), 1e-12)
    return affinity


class AffinityMeter:
    """Measures the lookahead affinity every ``every`` training steps and keeps the running mean (what the trainer calls)."""

    def __init__(self, tasks: list[str], every: int):
        if every < 1:
            raise ValueError(f"affinity_every must be >= 1 to measure, got {every}")
        self.tasks, self.every = list(tasks), every
        self.steps = 0
        self.measured = 0
        self.total = torch.zeros(len(tasks), len(tasks))

    def observe(self, model: nn.Module, batch: Any, losses: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        """Called by the trainer after the forward of each step, before the backward."""
        self.steps += 1
        if (self.steps - 1) % self.every:
            return
        shared = [p for p in model.shared_parameters() if p.requires_grad]
        if not shared:
            return
        # the buffers (BatchNorm statistics) are not changed by eval-mode forwards; only the mode is restored
        was_training = model.training

        def evaluate() -> dict[str, torch.Tensor]:
            model.eval()
            try:
                return {k: v.detach() for k, v in model.task_losses(batch).items()}
            finally:
                model.train(was_training)

        z = lookahead_affinity(shared, {t: losses[t] for t in self.tasks}, evaluate, float(optimizer.param_groups[0]["lr"]))
        self.total += z
        self.measured += 1

    def mean(self) -> torch.Tensor | None:
        """The mean affinity over the measured steps (rows: the task stepped on, columns: the task affected), or None."""
        return self.total / self.measured if self.measured else None

    def metrics(self) -> dict[str, float]:
        """``affinity/<i>/<j>`` = mean Z(i -> j), plus the measured step count."""
        mean = self.mean()
        if mean is None:
            return {}
        out = {affinity_key(a, b): float(mean[i, j]) for i, a in enumerate(self.tasks) for j, b in enumerate(self.tasks)}
        out["affinity_steps"] = float(self.measured)
        return out


def mean_by_strategy(trials: list[tuple[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per strategy, the mean of each ``affinity/<i>/<j>`` figure over the trials that measured it.

    ``trials``: (strategy, that trial's metrics); a metric key may carry a prefix
    (``model/affinity/a/b``). Returns ``{strategy: {"a/b": mean Z(a -> b)}}``.
    """
    sums: dict[str, dict[str, list[float]]] = {}
    for strategy, metrics in trials:
        for key, value in metrics.items():
            head, found, pair = key.partition(AFFINITY)
            if found and head in ("", MODEL):
                sums.setdefault(strategy, {}).setdefault(pair, []).append(float(value))
    return {s: {pair: sum(v) / len(v) for pair, v in pairs.items()} for s, pairs in sums.items()}
