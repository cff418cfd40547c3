"""Plotly figure builders, one function per kind of figure; every figure names its axes and units."""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import plotly.io as pio
import torch


def setup() -> None:
    """Figures render live in JupyterLab and stay in executed notebooks and their HTML, offline."""
    pio.renderers.default = "plotly_mimetype+notebook"
    pio.templates.default = "plotly_white"


def image_grid(images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
               n_classes: int, per_class: int, title: str) -> go.Figure:
    """A mosaic: one row per class (its name on the axis), `per_class` random examples per row."""
    rows, names = [], []
    for c in range(min(n_classes, len(class_names))):
        idx = torch.nonzero(labels == c).flatten()[:per_class]
        if len(idx) == 0:
            continue
        row = images[idx]
        if len(idx) < per_class:
            row = torch.cat([row, torch.zeros(per_class - len(idx), *row.shape[1:], dtype=row.dtype)])
        rows.append(torch.cat(list(row), dim=2))
        names.append(class_names[c])
    mosaic = torch.cat(rows, dim=1).permute(1, 2, 0).numpy()
    size = images.shape[-1]
    fig = px.imshow(mosaic, title=title)
    fig.update_xaxes(showticklabels=False, title=f"{per_class} random examples per class ({size}x{size} px)")
    fig.update_yaxes(tickvals=[size * (i + 0.5) for i in range(len(names))], ticktext=names, title="class")
    fig.update_layout(height=120 + 40 * len(names), width=900, margin=dict(l=180))
    return fig


def bars(table: pd.DataFrame, x: str, y: str, color: str | None, title: str,
         x_title: str, y_title: str, error: str | None = None) -> go.Figure:
    """Grouped bars, with error bars from column `error` when given."""
    fig = px.bar(table, x=x, y=y, color=color, barmode="group", error_y=error, title=title)
    fig.update_layout(xaxis_title=x_title, yaxis_title=y_title, legend_title=color or "")
    return fig


def lines(table: pd.DataFrame, x: str, y: str, color: str, title: str, x_title: str,
          y_title: str, dash: str | None = None) -> go.Figure:
    """One line per group of `color` (and `dash`)."""
    fig = px.line(table, x=x, y=y, color=color, line_dash=dash, title=title)
    fig.update_layout(xaxis_title=x_title, yaxis_title=y_title, legend_title=color)
    return fig


def curves(table: pd.DataFrame, x: str, y: str, color: str, title: str, x_title: str, y_title: str,
           facet: str | None = None, band_label: str = "seeds") -> go.Figure:
    """Mean of `y` over repeats (rows sharing facet, color and x) with a band of +-1 standard deviation."""
    from plotly.subplots import make_subplots

    facets = list(dict.fromkeys(table[facet])) if facet else [None]
    fig = make_subplots(rows=1, cols=len(facets), subplot_titles=[str(f) for f in facets] if facet else None,
                        shared_yaxes=True)
    palette = px.colors.qualitative.Plotly
    colours = {c: palette[i % len(palette)] for i, c in enumerate(dict.fromkeys(table[color]))}
    for col, f in enumerate(facets, 1):
        part = table if f is None else table[table[facet] == f]
        stats = part.groupby([color, x])[y].agg(["mean", "std", "count"]).reset_index().fillna({"std": 0})
        for c, g in stats.groupby(color, sort=False):
            rgb = px.colors.hex_to_rgb(colours[c])
            fig.add_trace(go.Scatter(
                x=list(g[x]) + list(g[x])[::-1], y=list(g["mean"] + g["std"]) + list(g["mean"] - g["std"])[::-1],
                fill="toself", fillcolor=f"rgba{rgb + (0.18,)}", line=dict(width=0), hoverinfo="skip",
                legendgroup=str(c), showlegend=False, name=f"{c} +-1 sd"), row=1, col=col)
            fig.add_trace(go.Scatter(x=g[x], y=g["mean"], mode="lines", line=dict(color=colours[c]),
                                     name=str(c), legendgroup=str(c), showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(title_text=x_title, row=1, col=col)
    fig.update_yaxes(title_text=y_title, row=1, col=1)
    fig.update_layout(title=f"{title}<br><sup>mean over {band_label}, band: +-1 standard deviation</sup>",
                      legend_title=color, height=420)
    return fig


def strip(table: pd.DataFrame, x: str, y: str, color: str | None, title: str, x_title: str,
          y_title: str) -> go.Figure:
    """Every run as a point (jittered) over a box of its group: small samples shown in full."""
    fig = px.strip(table, x=x, y=y, color=color, title=title)
    for trace in px.box(table, x=x, y=y, color=color).data:
        trace.update(boxpoints=False, opacity=0.35, showlegend=False)
        fig.add_trace(trace)
    fig.update_layout(xaxis_title=x_title, yaxis_title=y_title, legend_title=color or "", boxmode="group")
    return fig
