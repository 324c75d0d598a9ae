"""Figures recorded in MLflow: the Pareto fronts of a search (PNG and interactive HTML), its hypervolume history, a trial's sharing maps."""
from __future__ import annotations

import html
import itertools
from dataclasses import dataclass
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..nn.model import SharingMap  # noqa: E402

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#7f7f7f")
FRONT_COLOUR = "#000000"
FAINT_COLOUR = "#bbbbbb"


@dataclass
class FrontData:
    """The trials of a search with finite objective values, in the order the plots index them."""

    values: list[list[float]]
    names: list[str]
    directions: list[str]
    labels: list[str]  # the child run names
    families: list[str]
    on_front: list[bool]  # the global front
    on_family_front: list[bool]  # non-dominated within the trial's own family
    hover: list[str]
    infeasible: list[bool] | None = None  # violates search.constraints (kept off every front); None: no constraints

    def is_infeasible(self, k: int) -> bool:
        return bool(self.infeasible and self.infeasible[k])

    def family_colours(self) -> dict[str, str]:
        return {family: PALETTE[i % len(PALETTE)] for i, family in enumerate(sorted(set(self.families)))}


@dataclass
class Series:
    """One layer of a front plot: which points, drawn how.

    style: ``points`` (filled, coloured), ``faint`` (grey, dominated background), ``ring``
    (open black circles, labelled with the run name); ``connect`` joins the points in
    order of the x axis when there are exactly two objectives.
    """

    name: str
    colour: str
    indices: list[int]
    style: str
    connect: bool = False


def trials_by_family(data: FrontData) -> list[Series]:
    """Every trial coloured by its family (infeasible ones grey), the global front ringed, labelled and joined."""
    series = [Series(family, colour, [k for k, f in enumerate(data.families) if f == family and not data.is_infeasible(k)], "points")
              for family, colour in data.family_colours().items()]
    infeasible = [k for k in range(len(data.values)) if data.is_infeasible(k)]
    if infeasible:
        series.append(Series("infeasible (search.constraints)", FAINT_COLOUR, infeasible, "faint"))
    return series + [Series("Pareto front", FRONT_COLOUR, [k for k, f in enumerate(data.on_front) if f], "ring", connect=True)]


def fronts_per_family(data: FrontData) -> list[Series]:
    """Each family's own front in its colour (dominated trials faint), and the global front ringed."""
    series = [Series("dominated in its family or infeasible" if data.infeasible and any(data.infeasible) else "dominated in its family",
                     FAINT_COLOUR, [k for k, f in enumerate(data.on_family_front) if not f], "faint")]
    series += [Series(f"{family} front", colour, [k for k, f in enumerate(data.families) if f == family and data.on_family_front[k]], "points", connect=True)
               for family, colour in data.family_colours().items()]
    return series + [Series("global front", FRONT_COLOUR, [k for k, f in enumerate(data.on_front) if f], "ring", connect=True)]


GRID_OBJECTIVES = 4  # up to this many objectives: pairwise projections; more: one parallel-coordinates panel


def _normalised(data: FrontData) -> list[list[float]]:
    """Each trial's objective values scaled per objective to [0, 1], 0 the best value seen (either direction)."""
    columns = list(zip(*data.values)) if data.values else []
    scaled = []
    for values in data.values:
        row = []
        for i, v in enumerate(values):
            low, high = min(columns[i]), max(columns[i])
            share = 0.0 if high == low else (v - low) / (high - low)
            row.append(share if data.directions[i] == "min" else 1.0 - share)
        scaled.append(row)
    return scaled


def _parallel_png(data: FrontData, series: list[Series], title: str) -> plt.Figure:
    """Many objectives: one line per trial across the objectives (0 = the best value seen of each)."""
    scaled, xs = _normalised(data), list(range(len(data.names)))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.9 * len(xs)), 5))
    for layer in series:
        for n, k in enumerate(layer.indices):
            ring = layer.style == "ring"
            ax.plot(xs, scaled[k], color=layer.colour, linewidth=2.2 if ring else 1, alpha=0.3 if layer.style == "faint" else 0.85,
                    label=layer.name if n == 0 else None)
            if ring:
                ax.annotate(data.labels[k], (xs[-1], scaled[k][-1]), fontsize=7, xytext=(4, 0), textcoords="offset points")
    ax.set_xticks(xs, [_axis_title(name, d) for name, d in zip(data.names, data.directions)], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("scaled value (0 = best seen)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _parallel_plotly(data: FrontData, series: list[Series], title: str) -> Any:
    import plotly.graph_objects as go

    scaled, names = _normalised(data), [_axis_title(name, d) for name, d in zip(data.names, data.directions)]
    fig = go.Figure()
    for layer in series:
        for n, k in enumerate(layer.indices):
            fig.add_trace(go.Scatter(x=names, y=scaled[k], mode="lines", line=dict(color=layer.colour, width=3 if layer.style == "ring" else 1),
                                     opacity=0.35 if layer.style == "faint" else 0.9, hovertext=data.hover[k], hoverinfo="text",
                                     name=layer.name, legendgroup=layer.name, showlegend=n == 0))
    fig.update_layout(title=title, height=500, width=max(700, 90 * len(names)), template="plotly_white",
                      yaxis_title="scaled value (0 = best seen)")
    return fig


def _pairs(n: int) -> list[tuple[int, int]]:
    """The objective pairs a figure shows: one panel for two objectives, every pair for more."""
    return list(itertools.combinations(range(n), 2)) or [(0, 0)]


def _axis_title(name: str, direction: str) -> str:
    return f"{name} ({'lower' if direction == 'min' else 'higher'} is better)"


def _ordered(data: FrontData, series: Series, i: int) -> list[int]:
    return sorted(series.indices, key=lambda k: data.values[k][i])


def front_png(data: FrontData, series: list[Series], title: str) -> plt.Figure:
    """A matplotlib figure of the series: one panel for two objectives, a grid of pairwise projections for up to
    ``GRID_OBJECTIVES``, parallel coordinates for more (a 12-objective grid would be 66 panels)."""
    if len(data.names) > GRID_OBJECTIVES:
        return _parallel_png(data, series, title)
    pairs = _pairs(len(data.names))
    cols = min(3, len(pairs))
    rows = (len(pairs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.5 * rows), squeeze=False)
    for ax, (i, j) in zip(axes.flat, pairs):
        for layer in series:
            order = _ordered(data, layer, i)
            xs, ys = [data.values[k][i] for k in order], [data.values[k][j] for k in order]
            if layer.connect and len(data.names) == 2 and len(order) > 1:
                ax.plot(xs, ys, "--", color=layer.colour, linewidth=1)
            if layer.style == "ring":
                ax.scatter(xs, ys, s=140, facecolors="none", edgecolors=layer.colour, label=layer.name)
                for k in order:
                    ax.annotate(data.labels[k], (data.values[k][i], data.values[k][j]), fontsize=7, xytext=(4, 4), textcoords="offset points")
            else:
                ax.scatter(xs, ys, color=layer.colour, label=layer.name, alpha=0.4 if layer.style == "faint" else 0.8, s=20 if layer.style == "faint" else 36)
        ax.set_xlabel(_axis_title(data.names[i], data.directions[i]))
        ax.set_ylabel(_axis_title(data.names[j], data.directions[j]))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def front_plotly(data: FrontData, series: list[Series], title: str) -> Any:
    """The same figure in plotly: hover shows each trial's run name, strategy, values and knobs."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if len(data.names) > GRID_OBJECTIVES:
        return _parallel_plotly(data, series, title)
    pairs = _pairs(len(data.names))
    cols = min(3, len(pairs))
    rows = (len(pairs) + cols - 1) // cols
    fig = make_subplots(rows=rows, cols=cols)
    for panel, (i, j) in enumerate(pairs):
        row, col = panel // cols + 1, panel % cols + 1
        for layer in series:
            order = _ordered(data, layer, i)
            ring = layer.style == "ring"
            connect = layer.connect and len(data.names) == 2
            marker = dict(size=14, color="rgba(0,0,0,0)", line=dict(color=layer.colour, width=2)) if ring else \
                dict(size=7 if layer.style == "faint" else 9, color=layer.colour, opacity=0.5 if layer.style == "faint" else 0.85)
            fig.add_trace(go.Scatter(
                x=[data.values[k][i] for k in order], y=[data.values[k][j] for k in order],
                mode=("lines+" if connect else "") + ("markers+text" if ring else "markers"),
                text=[data.labels[k] for k in order] if ring else None, textposition="top right",
                hovertext=[data.hover[k] for k in order], hoverinfo="text",
                marker=marker, line=dict(dash="dash", color=layer.colour, width=1),
                name=layer.name, legendgroup=layer.name, showlegend=panel == 0,
            ), row=row, col=col)
        fig.update_xaxes(title_text=_axis_title(data.names[i], data.directions[i]), row=row, col=col)
        fig.update_yaxes(title_text=_axis_title(data.names[j], data.directions[j]), row=row, col=col)
    fig.update_layout(title=title, height=450 * rows, width=560 * cols, template="plotly_white")
    return fig


def plotly_page(figures: list[Any], title: str) -> str:
    """One self-contained HTML page (plotly.js embedded once: the MLflow UI may have no internet)."""
    import plotly.io as pio

    parts = [pio.to_html(fig, full_html=False, include_plotlyjs=(k == 0)) for k, fig in enumerate(figures)]
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>{''.join(parts)}</body></html>"


def hypervolume_figure(history: Sequence[tuple[float, int]], reference: Sequence[float], names: Sequence[str]) -> plt.Figure:
    """Hypervolume and front size after each finished trial (one reference point throughout)."""
    steps = list(range(1, len(history) + 1))
    fig, (hv_ax, size_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    hv_ax.step(steps, [hv for hv, _ in history], where="post", marker="o")
    hv_ax.set_xlabel("finished trials")
    hv_ax.set_ylabel("hypervolume")
    hv_ax.set_title("reference point: " + ", ".join(f"{n}={v:.4g}" for n, v in zip(names, reference)), fontsize=9)
    size_ax.step(steps, [size for _, size in history], where="post", marker="o", color="black")
    size_ax.set_xlabel("finished trials")
    size_ax.set_ylabel("front size")
    for ax in (hv_ax, size_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def sharing_map_figure(maps: dict[str, SharingMap]) -> plt.Figure:
    """One heatmap per sharing map, tasks as rows, values in [0, 1].

    A map with values outside [0, 1] (the signed task affinity) gets a diverging scale
    centred on 0 and its values printed to two significant digits.
    """
    n = max(len(maps), 1)
    fig, axes = plt.subplots(1, n, figsize=(max(4.0, 0.6 * max((len(m.columns) for m in maps.values()), default=4) + 2) * n, 3.5), squeeze=False)
    for ax, (name, smap) in zip(axes.flat, maps.items()):
        values = smap.values.numpy()
        signed = values.size > 0 and (values.min() < 0 or values.max() > 1)
        bound = float(abs(values).max()) if signed else 1.0
        image = ax.imshow(values, vmin=-bound if signed else 0.0, vmax=bound, cmap="RdBu_r" if signed else "viridis", aspect="auto")
        ax.set_xticks(range(len(smap.columns)), smap.columns, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(smap.rows)), smap.rows, fontsize=8)
        for (r, c), value in zip(itertools.product(range(len(smap.rows)), range(len(smap.columns))), smap.values.flatten().tolist()):
            ax.text(c, r, f"{value:.2g}" if signed else f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if signed or value >= 0.6 else "white")
        ax.set_title(name)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig
