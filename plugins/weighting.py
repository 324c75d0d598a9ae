"""Loss weighting and gradient aggregation: how the per-task losses become one update.

Loss weightings (one scalar loss, one backward pass):

(``equal``, the plain sum of the task losses, is the core's default: ``mtl_search.training.weighting``.)

- ``uncertainty`` (Kendall, Gal, Cipolla, CVPR 2018): a learned log-variance ``s_t`` per task;
  a regression task adds ``exp(-s_t) / 2 * L_t + s_t / 2`` (``1/(2 sigma^2) L + log sigma``),
  a classification task ``exp(-s_t) * L_t + s_t / 2`` (``1/sigma^2 L + log sigma``), eq. 7 of
  the paper. (LibMTL and others use ``1/sigma^2`` for every task; not followed here.)
- ``dwa`` (Liu et al., CVPR 2019; docs/methods.md, "Loss weighting"): ``lambda_k = K exp(w_k / Temp) /
  sum_i exp(w_i / Temp)``, ``w_k = L_k(t-1) / L_k(t-2)`` from the epochs' mean training
  losses, ``Temp = 2``, ``lambda = 1`` for the first two epochs.
- ``gradnorm`` (Chen et al., ICML 2018): learned weights ``w_t`` trained on
  ``sum_t |w_t ||grad_W L_t|| - mean_G * r_t^alpha|`` (the target held constant), ``W`` the
  last shared layer's weight matrix (``MultiTaskModel.last_shared_weights()``: by default
  the last shared parameter of rank >= 2 that is not a bias; the mixtures of experts name
  their experts' last weight matrix, cross-stitch the last stitched block of every column,
  measured jointly), ``r_t`` the relative inverse training rate; after every step the
  weights are renormalised to sum to T. With missing labels: ``L_t(0)`` is task t's loss in
  the first batch in which it has a labelled row, and a task without labels in a batch (its
  loss is then exactly 0) takes no part in that step's balance and keeps its weight, which
  therefore stays at its initial 1 until its first labelled batch; the others are
  renormalised so that all still sum to T.
- ``rlw`` (Lin et al., TMLR 2022, random loss weighting): weights ``softmax(z)``, ``z ~ N(0, I)``
  drawn afresh every step.

- ``fixed``: the weighted sum ``sum_t w_t L_t`` with a weight per task set (or searched) by the
  user: knobs ``weight.<task>`` (default 1), e.g. ``training.weighting_options.fixed:
  {weight.converted: {float: [1, 10]}}``.

Floors (``min_weight.<task>``, default 0: none) for the learned loss weightings ``uncertainty``,
``dwa``, ``gradnorm`` and ``rlw``: the weight a task's loss gets in a step is
``max(w_t, min_weight_t)``, so a business-critical task cannot be weighted away. The method's
own state (learned log-variances, GradNorm's weights, DWA's history) evolves as the method
defines; only the weight applied to the loss is floored, and ``weight/<task>`` records it.
(A floor is an addition of this project, not part of the methods' papers.)

Gradient aggregators (torchjd): the Jacobian of the task losses with respect to the model's
``shared_parameters()`` is aggregated into one update by a torchjd ``Aggregator``; every other
parameter gets the gradient of the plain sum of the task losses (the convention of
``torchjd.autojac.mtl_backward``), and the model's regularisation is added to every gradient.
A model whose shared parameters are empty for the sampled knobs (hard sharing at depth 0)
has no conflict to resolve and is trained on the plain sum.

``weight/<task>`` (logged per epoch) is the mean weight the task got over the epoch's steps:
its loss weight, or for an aggregator the weight of its row of the Jacobian.

Devices: every weighting keeps its state (learned weights, GradNorm's initial losses, DWA's
lambdas, the running sums behind ``weight/<task>``) in parameters and buffers, which the
trainer moves with ``.to(device)``, and creates each step's tensors on the losses' device;
the host is read once per epoch (``on_epoch_end``), not per step. Early stopping restores a
weighting's ``state_dict`` (DWA's loss history included, as extra state) with the best weights.
"""
from __future__ import annotations

import importlib.util
from typing import Any, ClassVar

import torch
from torch import nn

from mtl_search import Default, Float, Knob, Problem, Weighting, hookimpl

FLOOR_KNOB = "min_weight"


def floor_knobs(problem: Problem) -> dict[str, Knob]:
    """One ``min_weight.<task>`` knob per task: the floor of that task's weight, 0 (none) unless a space sets or searches it."""
    return {f"{FLOOR_KNOB}.{t}": Default(0.0, Float(0.0, 10.0, minimum=0.0)) for t in problem.task_names}


class _EpochMeanWeights(Weighting):
    """Records the weights applied at every step and reports their mean over each epoch.

    The running sums are (non-persistent) buffers, so ``.to(device)`` moves them with the
    weighting and every step's bookkeeping stays on the losses' device (no host sync per step).
    """

    floors: ClassVar[bool] = False  # True: the method takes per-task floors min_weight.<task> (see floored)

    @classmethod
    def knobs_for(cls, problem: Problem) -> dict[str, Knob]:
        return {**cls.knobs, **(floor_knobs(problem) if cls.floors else {})}

    def __init__(self, tasks: list[str], **params: Any):
        floors = {k: params.pop(k) for k in list(params) if k.startswith(FLOOR_KNOB + ".")}
        super().__init__(tasks, **params)
        unknown = sorted(set(floors) - {f"{FLOOR_KNOB}.{t}" for t in tasks})
        if unknown:
            raise ValueError(f"floors of unknown tasks: {', '.join(unknown)}; tasks: {', '.join(tasks)}")
        if floors and not self.floors:
            raise ValueError(f"weighting {self.name!r} takes no {FLOOR_KNOB} floors")
        self.params.update(floors)
        self.register_buffer("min_weights", torch.tensor([float(floors.get(f"{FLOOR_KNOB}.{t}", 0.0)) for t in self.tasks]))
        self._has_floor = any(float(v) > 0 for v in floors.values())  # a Python flag: no device sync per step
        self.register_buffer("_weight_sum", torch.zeros(len(self.tasks)), persistent=False)
        self.register_buffer("_steps", torch.zeros(len(self.tasks)), persistent=False)
        self._epoch_weights = {t: 1.0 for t in self.tasks}

    def record(self, weights: torch.Tensor, index: torch.Tensor) -> None:
        """Add one step's weights of the tasks at ``index`` (see ``present``)."""
        index = index.to(self._weight_sum.device)
        self._weight_sum.index_add_(0, index, weights.detach().to(self._weight_sum))
        self._steps.index_add_(0, index, torch.ones_like(self._steps[index]))

    def on_epoch_end(self, epoch: int, train_losses: dict[str, float]) -> None:
        sums, steps = self._weight_sum.tolist(), self._steps.tolist()
        for i, task in enumerate(self.tasks):  # a task trained in no step this epoch keeps its last value
            if steps[i]:
                self._epoch_weights[task] = sums[i] / steps[i]
        self._weight_sum.zero_()
        self._steps.zero_()

    def weights(self) -> dict[str, float]:
        return dict(self._epoch_weights)

    def floored(self, weights: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``max(weights, min_weight)`` for the tasks at ``index`` (unchanged, same tensor, when no floor is set)."""
        if not self._has_floor:
            return weights
        return torch.maximum(weights, self.min_weights[index.to(self.min_weights.device)].to(weights))

    def present(self, losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The positions (in ``self.tasks``) of the tasks with a loss this step, and those losses as a vector.

        Usually every task; a schedule that trains one task at a time (LASEM's sequential
        mode) passes only the tasks it trains. Both are on the losses' device.
        """
        index = [i for i, t in enumerate(self.tasks) if t in losses]
        vector = torch.stack([losses[self.tasks[i]] for i in index])
        return torch.tensor(index, dtype=torch.long, device=vector.device), vector


class _LossWeighting(_EpochMeanWeights):
    """A weighted sum of the task losses with weights from ``step_weights``."""

    floors = True

    def step_weights(self, index: torch.Tensor) -> torch.Tensor:
        """This step's weight of each task at ``index`` (positions in ``self.tasks``)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        index, vector = self.present(losses)
        weights = self.floored(self.step_weights(index).to(vector), index)
        self.record(weights, index)
        return (weights * vector).sum()


class Uncertainty(_EpochMeanWeights):
    name = "uncertainty"
    description = "homoscedastic uncertainty (Kendall et al. 2018): learned log-variances, 1/(2 sigma^2) for regression, 1/sigma^2 for classification"
    floors = True

    def __init__(self, tasks: list[str], **params: Any):
        super().__init__(tasks, **params)
        self.log_variance = nn.Parameter(torch.zeros(len(self.tasks)))
        self.register_buffer("precision_scale", torch.full((len(self.tasks),), float("nan")))
        self._scales_set = False  # a Python flag: checking the buffer for NaN would sync with the device every step

    def setup(self, problem: Problem) -> None:
        # eq. 7: a Gaussian likelihood gives 1/(2 sigma^2), a softmax/sigmoid likelihood 1/sigma^2
        scales = [0.5 if problem.task(t).kind == "regression" else 1.0 for t in self.tasks]
        self.precision_scale.copy_(torch.tensor(scales))
        self._scales_set = True

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self._scales_set:
            raise RuntimeError("uncertainty weighting: call setup(problem) first (the trainer does)")
        index, vector = self.present(losses)
        log_variance = self.log_variance[index]
        weights = self.floored(self.precision_scale[index] * torch.exp(-log_variance), index)
        self.record(weights, index)
        return (weights * vector).sum() + 0.5 * log_variance.sum()

    def variances(self) -> dict[str, float]:
        """The learned sigma^2 per task."""
        return dict(zip(self.tasks, torch.exp(self.log_variance.detach()).tolist()))


class DynamicWeightAverage(_LossWeighting):
    name = "dwa"
    description = "dynamic weight average (Liu et al. 2019): softmax over the tasks' loss descent rates of the last two epochs"
    # the paper's Temp = 2; a space may set or search it under training.weighting_options.dwa.temperature
    knobs = {"temperature": Default(2.0, Float(0.5, 10.0, minimum=1e-3))}

    def __init__(self, tasks: list[str], temperature: float = 2.0, **params: Any):
        super().__init__(tasks, temperature=temperature, **params)
        self.temperature = float(temperature)
        self.history: list[torch.Tensor] = []
        self.register_buffer("lambdas", torch.ones(len(self.tasks)))

    def step_weights(self, index: torch.Tensor) -> torch.Tensor:
        return self.lambdas[index]

    def get_extra_state(self) -> dict[str, Any]:
        """The epochs' mean training losses so far (in the state dict, so early stopping can restore them)."""
        return {"history": [h.tolist() for h in self.history]}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.history = [torch.tensor(h, dtype=torch.float64) for h in state["history"]]

    def on_epoch_end(self, epoch: int, train_losses: dict[str, float]) -> None:
        super().on_epoch_end(epoch, train_losses)
        self.history.append(torch.tensor([train_losses[t] for t in self.tasks], dtype=torch.float64))
        if len(self.history) >= 2:
            rates = self.history[-1] / self.history[-2].clamp_min(torch.finfo(torch.float64).tiny)
            lambdas = len(self.tasks) * torch.softmax(rates / self.temperature, dim=0)
            self.lambdas.copy_(lambdas.to(self.lambdas))


class RandomLossWeighting(_LossWeighting):
    name = "rlw"
    description = "random loss weighting (Lin et al. 2022): softmax of standard normal draws, new every step"

    def step_weights(self, index: torch.Tensor) -> torch.Tensor:
        return torch.softmax(torch.randn(len(index), device=index.device), dim=0)


class FixedWeights(Weighting):
    name = "fixed"
    description = "a fixed weight per task (knobs weight.<task>, default 1; searchable): sum_t w_t L_t"

    @classmethod
    def knobs_for(cls, problem: Problem) -> dict[str, Knob]:
        return {f"weight.{t}": Default(1.0, Float(0.0, 100.0, minimum=0.0)) for t in problem.task_names}

    def __init__(self, tasks: list[str], **params: Any):
        unknown = sorted(set(params) - {f"weight.{t}" for t in tasks})
        if unknown:
            raise ValueError(f"fixed weighting: weights of unknown tasks: {', '.join(unknown)}; tasks: {', '.join(tasks)}")
        super().__init__(tasks, **params)
        values = [float(params.get(f"weight.{t}", 1.0)) for t in self.tasks]
        if any(v < 0 for v in values):
            raise ValueError(f"fixed weighting: weights must be >= 0, got {dict(zip(self.tasks, values))}")
        self.register_buffer("task_weights", torch.tensor(values))

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.task_weights[i].to(losses[t]) * losses[t] for i, t in enumerate(self.tasks) if t in losses)

    def weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.task_weights.tolist()))


def last_shared_weights(model: nn.Module) -> list[nn.Parameter]:
    """W of GradNorm: ``model.last_shared_weights()`` (see ``MultiTaskModel``); empty when the model shares nothing.

    A module that is not a ``MultiTaskModel`` but lists ``shared_parameters()`` gets the
    default rule: the last trainable shared parameter of rank >= 2 (else the last one).
    """
    if hasattr(model, "last_shared_weights"):
        return list(model.last_shared_weights())
    shared = [p for p in model.shared_parameters() if p.requires_grad]
    return ([p for p in shared if p.dim() >= 2] or shared)[-1:]


class GradNorm(_EpochMeanWeights):
    name = "gradnorm"
    description = "GradNorm (Chen et al. 2018): learned weights that pull the tasks' gradient norms on the last shared layer together"
    needs_shared_parameters = True
    knobs = {"alpha": Float(0.0, 3.0, minimum=0.0)}
    floors = True

    def __init__(self, tasks: list[str], alpha: float = 1.5, **params: Any):
        super().__init__(tasks, alpha=alpha, **params)
        self.alpha = float(alpha)
        self.task_weights = nn.Parameter(torch.ones(len(self.tasks)))
        self.register_buffer("initial_losses", torch.full((len(self.tasks),), float("nan")))
        # the tasks balanced in the latest step, and their weights before it (see after_step); not state to restore
        self.register_buffer("_balanced", torch.zeros(len(self.tasks), dtype=torch.bool), persistent=False)
        self.register_buffer("_held", torch.ones(len(self.tasks)), persistent=False)

    def gradient_norms(self, losses: torch.Tensor, layer: list[nn.Parameter]) -> torch.Tensor:
        """``||grad_W L_t||`` per task on ``W`` (one or more tensors, measured jointly; the graph is kept for the update)."""
        norms = []
        for loss in losses:
            grads = torch.autograd.grad(loss, layer, retain_graph=True, allow_unused=True)
            squares = [g.pow(2).sum() for g in grads if g is not None]
            norms.append(torch.stack(squares).sum().sqrt() if squares else loss.new_zeros(()))
        return torch.stack(norms).detach()

    def balancing_loss(self, vector: torch.Tensor, index: torch.Tensor, layer: list[nn.Parameter]) -> torch.Tensor:
        """``sum_t |G_W^(t) - mean_G r_t^alpha|`` over the tasks with labels in this batch (the others add nothing).

        A task's loss is exactly 0 in a batch without a labelled row of it (``task_losses``);
        such a task is left out of the means and of the sum, and its L_t(0) is the loss of the
        first batch in which it has labels (NaN until then). Everything stays on the device.
        """
        losses = vector.detach()
        labelled = losses > 0
        known = self.initial_losses[index]
        self.initial_losses[index] = torch.where(torch.isnan(known) & labelled, losses, known)
        balanced = labelled & ~torch.isnan(self.initial_losses[index])
        self._balanced[index] = balanced
        share = balanced.to(losses) / balanced.sum().clamp_min(1)
        norms = self.task_weights[index] * self.gradient_norms(vector, layer)  # G_W^(t) = ||grad_W w_t L_t||
        inverse_rate = torch.where(balanced, losses / self.initial_losses[index].nan_to_num(1.0), torch.zeros_like(losses))
        relative = inverse_rate / (share * inverse_rate).sum().clamp_min(torch.finfo(losses.dtype).tiny)
        target = ((share * norms).sum() * relative ** self.alpha).detach()
        return (balanced.to(losses) * (norms - target).abs()).sum()

    def backward(self, losses: dict[str, torch.Tensor], extra: torch.Tensor, model: nn.Module) -> torch.Tensor:
        index, vector = self.present(losses)
        layer = last_shared_weights(model)
        self._balanced.zero_()
        if layer:  # no shared layer: no norms to balance, the weights stay put
            (self.task_weights.grad,) = torch.autograd.grad(self.balancing_loss(vector, index, layer), self.task_weights)
        self._held.copy_(self.task_weights.detach())
        weights = self.floored(self.task_weights.detach()[index], index)
        self.record(weights, index)
        total = (weights * vector).sum() + extra
        total.backward()
        return total

    @torch.no_grad()
    def after_step(self) -> None:
        """The tasks not balanced this step keep their weights; the balanced ones are rescaled so that all sum to T."""
        weights = torch.where(self._balanced, self.task_weights.clamp(min=1e-6), self._held)
        held = torch.where(self._balanced, torch.zeros_like(weights), weights).sum()
        moving = torch.where(self._balanced, weights, torch.zeros_like(weights)).sum()
        scale = ((len(self.tasks) - held) / moving).nan_to_num(1.0, posinf=1.0, neginf=1.0)  # 1 when no task was balanced
        self.task_weights.copy_(torch.where(self._balanced, weights * scale, weights))


class _Aggregation(_EpochMeanWeights):
    """Jacobian descent on the shared parameters with a torchjd aggregator."""

    needs_shared_parameters = True
    aggregator_class: ClassVar[str]  # the name in torchjd.aggregation
    aggregator_defaults: ClassVar[dict[str, Any]] = {}  # arguments the aggregator requires, when no knob sets them
    requires: ClassVar[tuple[str, ...]] = ()  # the solver modules torchjd needs for it (its optional extras)

    def __init__(self, tasks: list[str], **params: Any):
        import torchjd.aggregation

        params = {**self.aggregator_defaults, **params}
        super().__init__(tasks, **params)
        self.aggregator = getattr(torchjd.aggregation, self.aggregator_class)(**params)

    def backward(self, losses: dict[str, torch.Tensor], extra: torch.Tensor, model: nn.Module) -> torch.Tensor:
        from torchjd.autojac import backward as jacobian_backward
        from torchjd.autojac import jac_to_grad

        index, vector = self.present(losses)
        total = vector.sum() + extra
        shared = [p for p in model.shared_parameters() if p.requires_grad]
        if not shared:
            self.record(torch.ones(len(index), device=vector.device), index)
            total.backward()
            return total
        shared_ids = {id(p) for p in shared}
        private = [p for p in model.parameters() if p.requires_grad and id(p) not in shared_ids]
        jacobian_backward(list(vector), inputs=shared, retain_graph=True)
        weights = jac_to_grad(shared, self.aggregator)
        self.record(weights if weights is not None else torch.ones(len(index), device=vector.device), index)
        if private:
            torch.autograd.backward(vector.sum(), inputs=private, retain_graph=extra.requires_grad)
        if extra.requires_grad:
            extra.backward()
        return total.detach()


def _aggregation(name: str, attribute: str, description: str, knobs: dict[str, Knob] | None = None,
                 defaults: dict[str, Any] | None = None, requires: tuple[str, ...] = ()) -> type[_Aggregation]:
    """The weighting class of the torchjd aggregator ``torchjd.aggregation.<attribute>``."""
    return type(attribute, (_Aggregation,), {
        "name": name, "description": f"{description} (torchjd {attribute})", "aggregator_class": attribute,
        "knobs": knobs or {}, "aggregator_defaults": defaults or {}, "requires": requires,
        "__module__": __name__, "__qualname__": attribute,
    })


_QUADPROG = ("numpy", "qpsolvers", "quadprog")  # torchjd's quadprog-projector extra
_CVXPY = ("numpy", "cvxpy")  # torchjd's cagrad extra


# module-level names, so that Ray pickles the classes by reference
UPGrad = _aggregation("upgrad", "UPGrad", "UPGrad (Quinton & Rey 2024): projects every task gradient onto the dual cone, then averages",
                      requires=_QUADPROG)
MGDA = _aggregation("mgda", "MGDA", "MGDA (Desideri 2012; Sener & Koltun 2018): the minimum-norm point of the task gradients' convex hull")
PCGrad = _aggregation("pcgrad", "PCGrad", "PCGrad (Yu et al. 2020): projects away the conflicting components between task gradients")
CAGrad = _aggregation("cagrad", "CAGrad", "CAGrad (Liu et al. 2021): the conflict-averse update within radius c of the mean gradient",
                      knobs={"c": Float(0.1, 0.9, minimum=0.0, maximum=0.999)}, defaults={"c": 0.5}, requires=_CVXPY)
IMTLG = _aggregation("imtl_g", "IMTLG", "IMTL-G (Liu et al. 2021): the update with equal projections onto every task gradient")
DualProj = _aggregation("dualproj", "DualProj", "DualProj (Quinton & Rey 2024): projects the mean gradient onto the dual cone of the task gradients",
                        requires=_QUADPROG)
AlignedMTL = _aggregation("aligned_mtl", "AlignedMTL", "Aligned-MTL (Senushkin et al. 2023): aligns the principal components of the task gradients")


def available_aggregations() -> list[type[_Aggregation]]:
    """The aggregator weightings whose torchjd and solvers (quadprog, cvxpy) are installed.

    Found without importing them: torchjd with cvxpy takes about a second to import, which
    every command that loads the plugins (``validate`` included) would otherwise pay.
    """
    if importlib.util.find_spec("torchjd") is None:
        return []
    return [cls for cls in (UPGrad, MGDA, PCGrad, CAGrad, IMTLG, DualProj, AlignedMTL)
            if all(importlib.util.find_spec(module) is not None for module in cls.requires)]


@hookimpl
def register_weightings(register):
    register(FixedWeights)
    for cls in (Uncertainty, DynamicWeightAverage, GradNorm, RandomLossWeighting, *available_aggregations()):
        register(cls)
