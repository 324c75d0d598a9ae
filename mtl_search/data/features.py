"""How a table's features are laid out in ``x``: numeric columns (raw values, NaN where missing), then categorical codes.

The training split's statistics (means, standard deviations, vocabularies) live here, so they
travel with the Problem into the model's input layer (:mod:`mtl_search.nn.inputs`) and are
saved with the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class NumericFeature:
    """A numeric column; ``mean``/``std`` from the training split; ``indicator``: it had missing training values."""

    name: str
    mean: float
    std: float
    indicator: bool


@dataclass(frozen=True)
class CategoricalFeature:
    """A categorical column; code ``i + 1`` is ``categories[i]`` (seen in training), code 0 is missing or unseen."""

    name: str
    categories: tuple[str, ...]

    @property
    def levels(self) -> int:
        """Number of codes, the unknown code included."""
        return len(self.categories) + 1


@dataclass(frozen=True)
class TableFeatures:
    """How the columns of ``x`` are laid out: the numeric features, then the categorical codes."""

    numeric: tuple[NumericFeature, ...]
    categorical: tuple[CategoricalFeature, ...]

    @property
    def width(self) -> int:
        return len(self.numeric) + len(self.categorical)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.numeric] + [f.name for f in self.categorical]

    def encode(self, table: Any) -> torch.Tensor:
        """The raw ``x`` of new rows (a pyarrow Table with the feature columns), for prediction."""
        x = np.empty((table.num_rows, self.width), dtype=np.float32)
        for i, feature in enumerate(self.numeric):
            x[:, i] = as_float(table.column(feature.name))
        for j, feature in enumerate(self.categorical):
            x[:, len(self.numeric) + j] = category_codes(table.column(feature.name), feature.categories)
        return torch.from_numpy(x)

    def to_dict(self) -> dict[str, Any]:
        return {"numeric": [vars(f) for f in self.numeric],
                "categorical": [{"name": f.name, "categories": list(f.categories)} for f in self.categorical]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TableFeatures":
        return cls(tuple(NumericFeature(**f) for f in data["numeric"]),
                   tuple(CategoricalFeature(f["name"], tuple(f["categories"])) for f in data["categorical"]))


def as_float(column: Any) -> np.ndarray:
    """A numeric column as float64 with NaN where a value is missing."""
    import pyarrow as pa

    return column.cast(pa.float64()).to_numpy().astype(np.float64, copy=False)


def as_text(column: Any) -> Any:
    """A pyarrow column as strings (unchanged when it already is)."""
    import pyarrow as pa

    return column.cast(pa.string()) if not (column.type == pa.string() or column.type == pa.large_string()) else column


def category_codes(column: Any, categories: tuple[str, ...]) -> np.ndarray:
    """Code ``i + 1`` for ``categories[i]``; 0 for a missing value or one not in ``categories``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = as_text(column.combine_chunks() if hasattr(column, "combine_chunks") else column)
    index = pc.index_in(text, value_set=pa.array(categories, type=text.type))
    return pc.fill_null(index, -1).to_numpy().astype(np.int64) + 1
