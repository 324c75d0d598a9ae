"""The model's input layer for table features: standardise, impute, indicate missing values, encode categories.

A table's ``x`` holds raw numeric values (NaN where missing) and categorical codes
(:mod:`mtl_search.data.features`). :class:`TabularInput` turns them into the flat vector a
backbone takes; its training statistics are buffers (and the whole feature layout its extra
state), so they are saved in the model's state dict and applied at prediction. Categories
are one-hot or embedded: the ``inputs.encoding`` knob. The layer is the input stage of the
backbone recipe (``Backbone.make_input``, set by :func:`mtl_search.nn.create.build_backbone`),
so no strategy needs to know about tables.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..data.features import TableFeatures
from ..data.problem import Problem
from ..knobs import Choice, Int, Knob

INPUT_KNOBS: dict[str, Knob] = {
    "encoding": Choice("onehot", "embedding"),
    "embedding_dim": Int(2, 32, log=True, minimum=1),
}
INPUT_DEFAULTS: dict[str, Any] = {"encoding": "onehot", "embedding_dim": 8}


class TabularInput(nn.Module):
    """``x`` (numeric values then categorical codes) -> standardised numerics, missing indicators, encoded categories."""

    def __init__(self, features: TableFeatures, encoding: str = "onehot", embedding_dim: int = 8):
        super().__init__()
        if encoding not in ("onehot", "embedding"):
            raise ValueError(f"encoding must be onehot or embedding, got {encoding!r}")
        numeric, categorical = features.numeric, features.categorical
        self.features, self.n_numeric, self.encoding = features, len(numeric), encoding
        self.register_buffer("mean", torch.tensor([f.mean for f in numeric], dtype=torch.float32))
        self.register_buffer("std", torch.tensor([f.std for f in numeric], dtype=torch.float32))
        self.register_buffer("indicated", torch.tensor([i for i, f in enumerate(numeric) if f.indicator], dtype=torch.long))
        levels = torch.tensor([f.levels for f in categorical], dtype=torch.long)
        # one table for every categorical column: column j's codes start at offsets[j]
        self.register_buffer("offsets", torch.cumsum(levels, 0) - levels)
        total = int(levels.sum())
        self.embedding = nn.Embedding(total, embedding_dim) if encoding == "embedding" and total else None
        categorical_width = len(categorical) * embedding_dim if self.embedding is not None else total
        self.total_levels = total
        self.out_features = self.n_numeric + len(self.indicated) + categorical_width

    def get_extra_state(self) -> dict[str, Any]:
        """The whole feature layout (names, statistics, vocabularies) travels in the state dict, for prediction on new rows."""
        return {"features": self.features.to_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.features = TableFeatures.from_dict(state["features"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = x[:, : self.n_numeric]
        missing = torch.isnan(raw)
        # a missing value is imputed with the training mean: 0 after standardisation
        numeric = torch.where(missing, torch.zeros_like(raw), (raw - self.mean) / self.std)
        parts = [numeric, missing[:, self.indicated].to(x.dtype)]
        if self.total_levels:
            codes = x[:, self.n_numeric :].long() + self.offsets
            if self.embedding is not None:
                parts.append(self.embedding(codes).flatten(1))
            else:
                parts.append(x.new_zeros(x.shape[0], self.total_levels).scatter_(1, codes, 1.0))  # shape[0], not len(x): traced as the batch size
        return torch.cat(parts, dim=1)


def has_categories(problem: Problem) -> bool:
    """Whether the problem's inputs have categorical features (so the encoding knobs matter)."""
    return problem.features is not None and bool(problem.features.categorical)
