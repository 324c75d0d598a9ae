"""Figures recorded in MLflow: the Pareto front of a search and a trial's sharing maps."""
from __future__ import annotations

import itertools
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .model import SharingMap  # noqa: E402


def front_figure(values: Sequence[Sequence[float]], names: Sequence[str], directions: Sequence[str],
                 strategies: Sequence[str], labels: Sequence[str], on_front: Sequence[bool]) -> plt.Figure:
    """Scatter of every trial, coloured by strategy, front points ringed and labelled.

    Two objectives: one panel; more: a grid of pairwise projections.
    """
    pairs = list(itertools.combinations(range(len(names)), 2)) or [(0, 0)]
    cols = min(3, len(pairs))
    rows = (len(pairs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.5 * rows), squeeze=False)
    palette = plt.get_cmap("tab10")
    colours = {s: palette(i % 10) for i, s in enumerate(sorted(set(strategies)))}
    for ax, (i, j) in zip(axes.flat, pairs):
        for strategy, colour in colours.items():
            idx = [k for k, s in enumerate(strategies) if s == strategy]
            ax.scatter([values[k][i] for k in idx], [values[k][j] for k in idx], color=colour, label=strategy, alpha=0.75)
        front = sorted((k for k, f in enumerate(on_front) if f), key=lambda k: values[k][i])
        ax.plot([values[k][i] for k in front], [values[k][j] for k in front], "k--", linewidth=1)
        ax.scatter([values[k][i] for k in front], [values[k][j] for k in front], s=140, facecolors="none", edgecolors="black", label="Pareto front")
        for k in front:
            ax.annotate(labels[k], (values[k][i], values[k][j]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel(f"{names[i]} ({'lower' if directions[i] == 'min' else 'higher'} is better)")
        ax.set_ylabel(f"{names[j]} ({'lower' if directions[j] == 'min' else 'higher'} is better)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Trials and Pareto front (validation metrics)")
    fig.tight_layout()
    return fig


def sharing_map_figure(maps: dict[str, SharingMap]) -> plt.Figure:
    """One heatmap per sharing map, tasks as rows, values in [0, 1]."""
    n = max(len(maps), 1)
    fig, axes = plt.subplots(1, n, figsize=(max(4.0, 0.6 * max((len(m.columns) for m in maps.values()), default=4) + 2) * n, 3.5), squeeze=False)
    for ax, (name, smap) in zip(axes.flat, maps.items()):
        image = ax.imshow(smap.values.numpy(), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(smap.columns)), smap.columns, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(smap.rows)), smap.rows, fontsize=8)
        for (r, c), value in zip(itertools.product(range(len(smap.rows)), range(len(smap.columns))), smap.values.flatten().tolist()):
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white" if value < 0.6 else "black")
        ax.set_title(name)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig
