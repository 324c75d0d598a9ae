"""Write ``funnel.csv`` (next to this script) for ``search_spaces/funnel.yaml``.

Impressions -> clicks -> conversions from the built-in ``synthetic_funnel`` generator
(``mtl_search_plugins.funnel.generate_funnel``): an item's latent quality raises both its
click and its conversion probability, so the clicked rows over-represent good items (a
known selection bias). Columns: ``id``; the features ``item`` (text, categorical) and
``u1``..``u4``; the targets ``clicked`` and ``converted`` (0 where there was no click: the
space declares ``converted`` after ``clicked``, so those rows are masked); ``w_click``, a
sample weight of the click task (blank in some rows: weight 1); and the true probabilities
``true_ctr`` and ``true_cvr`` (excluded from the features; kept to measure the bias).
Run: ``python search_spaces/data/make_funnel_csv.py``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from mtl_search_plugins.funnel import generate_funnel

ROWS, ITEMS, USER_FEATURES, SEED = 2000, 60, 4, 0
MISSING_WEIGHT = 0.1  # fraction of w_click left blank


def make_table() -> pa.Table:
    """The table, deterministic for SEED."""
    data = generate_funnel(samples=ROWS, items=ITEMS, user_features=USER_FEATURES, selection=1.5, quality_effect=1.5,
                           click_bias=-1.0, conversion_bias=-0.5, seed=SEED)
    rng = np.random.default_rng(SEED + 1)
    columns: dict[str, object] = {"id": np.arange(ROWS), "item": np.array([f"item{i}" for i in data["item"]])}
    for i in range(USER_FEATURES):
        columns[f"u{i + 1}"] = data["u"][:, i].round(4)
    columns["clicked"] = data["clicked"]
    columns["converted"] = data["converted"]
    # e.g. an inverse-propensity weight of the slot the impression was shown in: 1, 1.5 or 2
    weight = rng.choice([1.0, 1.5, 2.0], ROWS)
    columns["w_click"] = pa.array([None if m else w for w, m in zip(weight, rng.random(ROWS) < MISSING_WEIGHT)], pa.float64())
    columns["true_ctr"] = data["true_ctr"].round(4)
    columns["true_cvr"] = data["true_cvr"].round(4)
    return pa.table(columns)


if __name__ == "__main__":
    out = Path(__file__).with_name("funnel.csv")
    pcsv.write_csv(make_table(), out)
