"""MultiTaskModel (what every strategy builds) and SharingMap (what every model reports)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

from ..data.dataset import Split
from ..data.problem import Problem


@dataclass
class SharingMap:
    """A small matrix with values in [0, 1]: rows are tasks, columns are blocks, experts or tasks."""

    values: torch.Tensor
    rows: list[str]
    columns: list[str]

    def __post_init__(self) -> None:
        self.values = torch.as_tensor(self.values, dtype=torch.float32).detach().cpu()
        if tuple(self.values.shape) != (len(self.rows), len(self.columns)):
            raise ValueError(f"sharing map of shape {tuple(self.values.shape)} does not match {len(self.rows)} rows x {len(self.columns)} columns")

    def to_dict(self) -> dict[str, Any]:
        return {"rows": list(self.rows), "columns": list(self.columns), "values": self.values.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SharingMap":
        return cls(torch.tensor(data["values"]), data["rows"], data["columns"])


def task_losses(problem: Problem, predictions: dict[str, torch.Tensor], batch: Split) -> dict[str, torch.Tensor]:
    """Mean loss per task over the batch rows that carry that task's label, weighted by the task's sample weights if any.

    With weights ``w`` the loss is ``sum w_i l_i / sum w_i`` over the labelled rows; a batch
    whose labelled rows all weigh 0 gives a zero loss (with the graph kept).
    """
    losses = {}
    for task in problem.tasks:
        pred, target, weight = predictions[task.name], batch.y[task.name], batch.weights(task.name)
        mask = batch.labelled(task.name)
        if mask is not None:
            if not bool(mask.any()):
                losses[task.name] = pred.sum() * 0.0  # keeps the graph; no labelled row here
                continue
            pred, target = pred[mask], target[mask]
            weight = weight[mask] if weight is not None else None
        losses[task.name] = task.loss(pred, target, weight=weight)
    return losses


class MultiTaskModel(nn.Module):
    """Base class of every strategy's model: ``forward(x) -> {task name: prediction}``.

    Subclasses implement ``forward`` and ``sharing_map(x)``; the other methods have defaults
    that a strategy overrides when it needs them:

    - ``regularization()``: added to the weighted task losses (soft-sharing penalties,
      auxiliary MoE losses). Default zero.
    - ``task_losses(batch)``: per-task training losses of a batch (a strategy that needs an
      E-step per batch overrides this). Default: forward, then masked task losses.
    - ``param_groups(lr)``: optimiser parameter groups (e.g. a larger learning rate for
      cross-stitch units). Default: one group. A group may name its algorithm in
      ``"optimizer"``: ``"adamw"`` (default), ``"adam"`` or ``"sgd"`` (``mtl_search.optim``).
    - ``shared_parameters()``: parameters used by more than one task (for gradient
      aggregation methods). Default: none declared.
    - ``last_shared_weights()``: the weight tensor(s) W of the last shared layer, on which
      GradNorm measures the tasks' gradient norms. Default: the last weight among
      ``shared_parameters()`` (rank >= 2, not a bias); a model overrides it when its
      parameter order cannot tell (e.g. stacked experts, whose biases are 3-D).
    - ``after_step()``: called after every optimiser step (e.g. MRN's covariance update).
    - ``on_epoch_start(epoch)``: called at the start of every training epoch.
    - ``trial_metrics()``: extra figures recorded on the trial (routing statistics ...).
    - ``trial_tags()``: extra text recorded on the trial as MLflow tags ``model/<key>``
      (e.g. a learned structure in a form a space accepts).
    - ``inference_parameters()``: parameter count used at inference (default: all).
    - ``export_refusal()``: why the model cannot be exported as a static graph, or None (default).
    """

    def __init__(self, problem: Problem):
        super().__init__()
        self.problem = problem

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def sharing_map(self, x: torch.Tensor) -> dict[str, SharingMap]:  # pragma: no cover - abstract
        """Named maps of what each task shares; ``x`` is a sample of validation inputs (for data-dependent maps such as gates)."""
        raise NotImplementedError(f"{type(self).__name__} must implement sharing_map(x)")

    def regularization(self) -> torch.Tensor:
        return torch.zeros((), device=self._device())

    def task_losses(self, batch: Split) -> dict[str, torch.Tensor]:
        return task_losses(self.problem, self(batch.x), batch)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def shared_parameters(self) -> list[nn.Parameter]:
        return []

    def last_shared_weights(self) -> list[nn.Parameter]:
        """The weight tensor(s) W of the last shared layer (GradNorm's ``||grad_W L_t||``); empty when nothing is shared.

        Several tensors are measured jointly (the norm of their concatenated gradients): a
        model returns more than one when its last shared layer is split over tensors.
        Default: the last trainable shared parameter of rank >= 2 whose name is not a bias
        (a norm scale or a bias after the layer is skipped); if there is none, the last
        trainable shared parameter.
        """
        shared = [p for p in self.shared_parameters() if p.requires_grad]
        names = {id(p): name for name, p in self.named_parameters()}
        weights = [p for p in shared if p.dim() >= 2 and not names.get(id(p), "").rsplit(".", 1)[-1].startswith("bias")]
        return (weights or shared)[-1:]

    def after_step(self) -> None:
        pass

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def trial_metrics(self) -> dict[str, float]:
        return {}

    def trial_tags(self) -> dict[str, str]:
        return {}

    def inference_parameters(self) -> int:
        return count_parameters(self.parameters())

    def export_refusal(self) -> str | None:
        """Why the model cannot be exported as a static graph (ONNX, TorchScript), or None; the export also checks its graph against ``predict``."""
        return None

    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")


def count_parameters(params: Iterable[nn.Parameter]) -> int:
    """Number of scalars in distinct parameter tensors (a tensor used twice counts once)."""
    seen: dict[int, int] = {}
    for p in params:
        seen[id(p)] = p.numel()
    return sum(seen.values())


def copy_state(module: nn.Module) -> dict[str, Any]:
    """A detached copy of ``module``'s state dict (tensors cloned, extra state such as a table input layer's copied)."""
    import copy

    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in module.state_dict().items()}
