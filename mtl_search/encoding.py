"""The model's input layer for table features: standardise, impute, indicate missing values, encode categories.

A table's ``x`` holds raw numeric values (NaN where missing) and categorical codes
(``mtl_search.tables``). :class:`TabularInput` turns them into the flat vector a backbone
takes; its training statistics are buffers, so they are saved in the model's state dict
and applied at prediction. Categories are one-hot or embedded: the ``inputs.encoding``
knob. :class:`EncodedInputModel` puts the layer in front of any strategy's model, so no
strategy needs to know about tables.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from .data import Split
from .knobs import Choice, Int, Knob
from .model import MultiTaskModel, SharingMap, count_parameters
from .problem import Problem
from .tables import TableFeatures

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
                parts.append(torch.zeros(len(x), self.total_levels, dtype=x.dtype, device=x.device).scatter_(1, codes, 1.0))
        return torch.cat(parts, dim=1)


class EncodedInputModel(MultiTaskModel):
    """A strategy's model with an input layer in front; every hook of the inner model sees encoded inputs.

    Attributes the wrapper lacks are looked up on the inner model, so a strategy's own
    schedule (``Strategy.fit``) can still reach its model's parts.
    """

    def __init__(self, problem: Problem, input_layer: TabularInput, inner: MultiTaskModel):
        super().__init__(problem)
        self.input_layer, self.inner = input_layer, inner

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("inner")  # absent while unpickling or copying
            if inner is None:
                raise
            return getattr(inner, name)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.inner(self.input_layer(x))

    def sharing_map(self, x: torch.Tensor) -> dict[str, SharingMap]:
        return self.inner.sharing_map(self.input_layer(x))

    def task_losses(self, batch: Split) -> dict[str, torch.Tensor]:
        return self.inner.task_losses(Split(self.input_layer(batch.x), batch.y, batch.mask))

    def regularization(self) -> torch.Tensor:
        return self.inner.regularization()

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        groups = self.inner.param_groups(lr)
        own = list(self.input_layer.parameters())
        return groups + [{"params": own, "lr": lr}] if own else groups

    def shared_parameters(self) -> list[nn.Parameter]:
        # every task reads the same input layer
        return list(self.input_layer.parameters()) + self.inner.shared_parameters()

    def after_step(self) -> None:
        self.inner.after_step()

    def on_epoch_start(self, epoch: int) -> None:
        self.inner.on_epoch_start(epoch)

    def trial_metrics(self) -> dict[str, float]:
        return self.inner.trial_metrics()

    def inference_parameters(self) -> int:
        return self.inner.inference_parameters() + count_parameters(self.input_layer.parameters())


def input_layer_for(problem: Problem, params: dict[str, Any]) -> tuple[Problem, TabularInput | None]:
    """The problem a strategy builds for (its input shape after the input layer), and that layer (None without table features)."""
    if problem.features is None:
        return problem, None
    layer = TabularInput(problem.features, **{**INPUT_DEFAULTS, **params})
    return replace(problem, input_shape=(layer.out_features,), features=None), layer


def with_input_layer(problem: Problem, layer: TabularInput | None, model: MultiTaskModel) -> MultiTaskModel:
    """``model`` behind ``layer`` (unchanged when there is no layer)."""
    return model if layer is None else EncodedInputModel(problem, layer, model)


def has_categories(problem: Problem) -> bool:
    """Whether the problem's inputs have categorical features (so the encoding knobs matter)."""
    return problem.features is not None and bool(problem.features.categorical)
