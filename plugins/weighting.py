"""Loss weighting methods. ``equal``: the plain sum of the task losses."""
from __future__ import annotations

import torch

from mtl_search import Weighting, hookimpl


class Equal(Weighting):
    name = "equal"
    description = "sum of the task losses, every weight 1"

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(losses.values())


@hookimpl
def register_weightings(register):
    register(Equal)
