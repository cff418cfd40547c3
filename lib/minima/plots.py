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
