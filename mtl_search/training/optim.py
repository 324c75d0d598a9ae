"""An optimiser whose parameter groups each choose their algorithm (AdamW, Adam or SGD).

A model's ``param_groups`` may set ``"optimizer"`` on a group: ``"adamw"`` (the default, the
trainer's optimiser), ``"adam"`` (Adam with L2 weight decay added to the gradient, as
``torch.optim.Adam``) or ``"sgd"`` (``torch.optim.SGD``; ``momentum`` may be set on the group).
A method whose paper trains some parameters with another optimiser than the network
(cross-stitch units under SGD, AdaShare's policy logits under Adam) says so there.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

ALGORITHMS: dict[str, type[torch.optim.Optimizer]] = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


class GroupedOptimizer(torch.optim.Optimizer):
    """One optimiser over groups that name their algorithm in ``group["optimizer"]``; one torch optimiser per algorithm.

    ``param_groups`` lists every group (the dicts of the inner optimisers, so changing a
    group's ``lr`` takes effect); ``step``, ``zero_grad``, ``state_dict`` and
    ``load_state_dict`` act on all of them.
    """

    def __init__(self, groups: Iterable[dict[str, Any]], lr: float, weight_decay: float = 0.0):
        groups = [dict(g) for g in groups]
        unknown = sorted({str(g.get("optimizer")) for g in groups if g.get("optimizer", "adamw") not in ALGORITHMS})
        if unknown:
            raise ValueError(f"parameter group optimizer {', '.join(unknown)} is not one of {', '.join(ALGORITHMS)}")
        self.parts: dict[str, torch.optim.Optimizer] = {}
        for name, cls in ALGORITHMS.items():
            mine = [{k: v for k, v in g.items() if k != "optimizer"} for g in groups if g.get("optimizer", "adamw") == name]
            if mine:
                self.parts[name] = cls(mine, lr=lr, weight_decay=weight_decay)
                for group in self.parts[name].param_groups:
                    group["optimizer"] = name
        self.defaults = {"lr": lr, "weight_decay": weight_decay}
        self._optimizer_step_pre_hooks: dict = {}
        self._optimizer_step_post_hooks: dict = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [g for part in self.parts.values() for g in part.param_groups]

    @property
    def state(self) -> dict:  # type: ignore[override]
        return {p: s for part in self.parts.values() for p, s in part.state.items()}

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self.parts.values():
            part.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts.values():
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        if set(state_dict) != set(self.parts):
            raise ValueError(f"state for optimizers {sorted(state_dict)} does not match this one's {sorted(self.parts)}")
        for name, part in self.parts.items():
            part.load_state_dict(state_dict[name])

    def __repr__(self) -> str:
        return f"GroupedOptimizer({', '.join(f'{n}: {len(p.param_groups)} groups' for n, p in self.parts.items())})"


def make_optimizer(groups: Iterable[dict[str, Any]], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over ``groups``, or a ``GroupedOptimizer`` when a group names another algorithm in ``"optimizer"``."""
    groups = list(groups)
    if all(g.get("optimizer", "adamw") == "adamw" for g in groups):
        return torch.optim.AdamW([{k: v for k, v in g.items() if k != "optimizer"} for g in groups], lr=lr, weight_decay=weight_decay)
    return GroupedOptimizer(groups, lr=lr, weight_decay=weight_decay)
