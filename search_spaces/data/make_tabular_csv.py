"""Write ``tabular.csv`` (next to this script) for ``search_spaces/tabular_csv.yaml``.

The rows come from the built-in synthetic generator (three correlated tasks, MMoE paper,
docs/methods.md, "The MMoE synthetic benchmark") and are turned into what a user's table looks like: a regression,
a binary and a multiclass target with some labels removed, one informative input written
as a categorical column, a few missing feature values, an id to exclude and a user column
for a group split. Run: ``python search_spaces/data/make_tabular_csv.py``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import torch

from mtl_search_plugins.datasets import synthetic_correlated

ROWS, USERS, SEED = 1500, 300, 0
MISSING_LABELS = {"revenue": 0.15, "clicked": 0.25, "segment": 0.30}  # fraction of rows without that label
MISSING_FEATURE = 0.05  # fraction of x1 left empty
REGIONS = np.array(["north", "east", "south", "west"])


def make_table() -> pa.Table:
    """The table, deterministic for SEED."""
    data = synthetic_correlated(correlation=0.7, tasks=3, samples=ROWS, input_dim=8, sin_terms=5, scale=1.0,
                                noise=0.1, seed=SEED, val=0.15, test=0.15)
    x = torch.cat([data.train.x, data.val.x, data.test.x]).numpy().astype(np.float64)
    y = {t: torch.cat([data.train.y[t], data.val.y[t], data.test.y[t]]).double().numpy() for t in ("y1", "y2", "y3")}
    rng = np.random.default_rng(SEED)
    columns: dict[str, object] = {"id": np.arange(ROWS), "user": rng.integers(0, USERS, ROWS)}
    for i in range(6):
        values = x[:, i].round(4)
        if i == 0:
            values = np.where(rng.random(ROWS) < MISSING_FEATURE, np.nan, values)
        columns[f"x{i + 1}"] = pa.array(values, from_pandas=True)  # NaN -> empty cell
    columns["region"] = REGIONS[np.digitize(x[:, 6], np.quantile(x[:, 6], [0.25, 0.5, 0.75]))]
    segment = np.array(["low", "mid", "high"])[np.digitize(y["y3"], np.quantile(y["y3"], [1 / 3, 2 / 3]))]
    targets = {"revenue": y["y1"].round(4), "clicked": (y["y2"] > np.median(y["y2"])).astype(np.int64), "segment": segment}
    for name, values in targets.items():
        keep = rng.random(ROWS) >= MISSING_LABELS[name]
        columns[name] = pa.array([v.item() if k else None for v, k in zip(values, keep)])
    return pa.table(columns)


if __name__ == "__main__":
    out = Path(__file__).with_name("tabular.csv")
    pcsv.write_csv(make_table(), out)
    print(f"wrote {out}")
