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
                mode="lines", fill="toself", fillcolor=f"rgba{rgb + (0.18,)}", line=dict(width=0), hoverinfo="skip",
                legendgroup=str(c), showlegend=False, name=f"{c} +-1 sd"), row=1, col=col)
            fig.add_trace(go.Scatter(x=g[x], y=g["mean"], mode="lines", line=dict(color=colours[c]),
                                     name=str(c), legendgroup=str(c), showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(title_text=x_title, row=1, col=col)
    fig.update_yaxes(title_text=y_title, row=1, col=1)
    fig.update_layout(title=f"{title}<br><sup>mean over {band_label}, band: +-1 standard deviation</sup>",
                      legend_title=color, height=420)
    return fig


def along_knobs(table: pd.DataFrame, y: str | Sequence[str], title: str, y_title: str, color: str | None = None,
                band_label: str = "pretraining seeds", log_y: bool = False) -> go.Figure:
    """A knob-sweep table's `y` against each swept knob's value, one panel per knob: one line per `color`
    group (or, without `color`, per column of `y`), mean over the rows at a value, band +-1 sd; a note
    instead of lines where nothing was measured."""
    if color is None:
        table = table.melt(id_vars=["knob", "knob_value"], value_vars=list(y), var_name="measure", value_name="value")
        y, color = "value", "measure"
    table = table.dropna(subset=[y])
    if table.empty:
        fig = go.Figure().update_layout(title=title, xaxis_title="knob value", yaxis_title=y_title)
        return fig.add_annotation(text="nothing to show: the study sweeps no knob, or no run measured this",
                                  showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig = curves(table, x="knob_value", y=y, color=color, facet="knob", title=title, x_title="",
                 y_title=y_title, band_label=band_label)
    for col, knob in enumerate(dict.fromkeys(table.knob), 1):
        fig.update_xaxes(title_text=f"{knob} (the knob's value)", row=1, col=col)
    fig.update_traces(mode="lines+markers", selector=dict(fill=None))  # a few knob values: show where they lie
    return fig.update_yaxes(type="log") if log_y else fig


def accuracy_curves(table: pd.DataFrame, perturbation: str, x_title: str, facet: str | None = "split",
                    band_label: str = "seeds and repeats") -> go.Figure:
    """Accuracy against perturbation strength, one line per method (mean, band +-1 sd), one panel per `facet`."""
    return curves(table, x="strength", y="accuracy", color="method", facet=facet,
                  title=f"Accuracy against strength: {perturbation}", x_title=x_title, y_title="accuracy (fraction correct)",
                  band_label=band_label)


def strip(table: pd.DataFrame, x: str, y: str, color: str | None, title: str, x_title: str,
          y_title: str) -> go.Figure:
    """Every run as a point (jittered) over a box of its group: small samples shown in full."""
    fig = px.strip(table, x=x, y=y, color=color, title=title)
    for trace in px.box(table, x=x, y=y, color=color).data:
        trace.update(boxpoints=False, opacity=0.35, showlegend=False)
        fig.add_trace(trace)
    fig.update_layout(xaxis_title=x_title, yaxis_title=y_title, legend_title=color or "", boxmode="group")
    return fig


def heatmaps(table: pd.DataFrame, row: str, col: str, value: str, facet: str, title: str,
             value_title: str, digits: int = 3) -> go.Figure:
    """One annotated heatmap of `value` (rows `row`, columns `col`, each axis titled by its column's name) per
    value of `facet`, each with its own scale."""
    from plotly.subplots import make_subplots

    facets = list(dict.fromkeys(table[facet]))
    fig = make_subplots(rows=1, cols=len(facets), subplot_titles=[str(f) for f in facets],
                        horizontal_spacing=0.12)
    for i, f in enumerate(facets, 1):
        m = table[table[facet] == f].pivot_table(index=row, columns=col, values=value, sort=False)
        axis = "coloraxis" if i == 1 else f"coloraxis{i}"
        fig.add_trace(go.Heatmap(z=m.values, x=list(m.columns), y=list(m.index), coloraxis=axis,
                                 texttemplate=f"%{{z:.{digits}g}}", hovertemplate=f"%{{y}} vs %{{x}}: %{{z}}<extra>{f}</extra>"),
                      row=1, col=i)
        right = fig.layout[f"xaxis{'' if i == 1 else i}"].domain[1]
        fig.layout[axis] = dict(colorscale="Viridis", colorbar=dict(x=right + 0.01, len=0.8, thickness=10,
                                                                   title=value_title if i == len(facets) else ""))
        fig.update_yaxes(autorange="reversed", title_text=row.replace("_", " "), row=1, col=i)
        fig.update_xaxes(title_text=col.replace("_", " "), row=1, col=i)
    fig.update_layout(title=title, height=380 + 12 * len(m), width=360 * len(facets) + 120)
    return fig


def slice_grid(table: pd.DataFrame, y: str, row: str, col: str, color: str, title: str, y_title: str,
               log_y: bool = False) -> go.Figure:
    """Lines of `y` against t, one panel per (row, col) pair, one line per `color`; t = 0 and 1 marked."""
    from plotly.subplots import make_subplots

    rows, cols = list(dict.fromkeys(table[row])), list(dict.fromkeys(table[col]))
    height = 170 + 230 * len(rows)
    fig = make_subplots(rows=len(rows), cols=len(cols), shared_xaxes=True, shared_yaxes=True,
                        column_titles=[f"BN: {c}" for c in cols], row_titles=[str(r) for r in rows],
                        vertical_spacing=60 / height, horizontal_spacing=0.03)  # 60 px between rows, any count
    palette = px.colors.qualitative.Plotly
    colours = {c: palette[i % len(palette)] for i, c in enumerate(dict.fromkeys(table[color]))}
    for i, r in enumerate(rows, 1):
        for j, c in enumerate(cols, 1):
            part = table[(table[row] == r) & (table[col] == c)]
            for name, g in part.groupby(color, sort=False):
                g = g.sort_values("t")
                fig.add_trace(go.Scatter(x=g.t, y=g[y], mode="lines+markers", name=str(name),
                                         line=dict(color=colours[name]), marker=dict(size=4),
                                         legendgroup=str(name), showlegend=i == 1 and j == 1), row=i, col=j)
            for t in (0, 1):
                fig.add_vline(x=t, line=dict(color="grey", dash="dot", width=1), row=i, col=j)
    fig.update_xaxes(title_text="t (0: first minimum, 1: second)", row=len(rows))
    fig.update_yaxes(type="log" if log_y else "linear")
    for i in range(1, len(rows) + 1):
        fig.update_yaxes(title_text=y_title, row=i, col=1)
    fig.update_layout(title=f"{title}<br><sup>one pair of runs per row (no repeats); columns: batchnorm mode</sup>",
                      legend_title=color, height=height, width=1000)
    return fig


def plane_contour(table: pd.DataFrame, value: str, title: str, value_title: str, log: bool = False) -> go.Figure:
    """Contours of `value` over a plane grid (columns x, y; rows with point == 'grid'), with the
    labelled points (point == 'minimum') marked."""
    import numpy as np

    grid = table[table.point == "grid"].pivot_table(index="y", columns="x", values=value)
    z = np.log10(grid.values) if log else grid.values
    fig = go.Figure(go.Contour(x=grid.columns, y=grid.index, z=z, colorscale="Viridis", ncontours=20,
                               colorbar=dict(title=f"log10 {value_title}" if log else value_title)))
    marks = table[table.point == "minimum"].drop_duplicates("label")
    fig.add_trace(go.Scatter(x=marks.x, y=marks.y, mode="markers+text", text=marks.label, textposition="top center",
                             marker=dict(symbol="x", size=12, color="red"), textfont=dict(color="white", size=14),
                             name="minima"))
    fig.update_layout(title=title, xaxis_title="x: along the first to the second minimum (weight units)",
                      yaxis_title="y: orthogonal direction towards the third (weight units)",
                      width=700, height=600, yaxis=dict(scaleanchor="x", scaleratio=1))
    return fig


def curve_plane(table: pd.DataFrame, title: str) -> go.Figure:
    """The paths of one pair (curves table rows: path, point, x, y, t, loss) in the plane of the pair: x along
    the line from the first minimum to the second, y the distance from that line; bends and minima marked."""
    fig = go.Figure()
    palette = px.colors.qualitative.Plotly
    for i, (path, g) in enumerate(table.groupby("path", sort=False)):
        along, bend = g[g.point == "curve"].sort_values("t"), g[g.point == "bend"]
        colour = palette[i % len(palette)]
        fig.add_trace(go.Scatter(x=along.x, y=along.y, mode="lines+markers", name=str(path), line=dict(color=colour),
                                 customdata=along[["t", "loss"]], legendgroup=str(path),
                                 hovertemplate="t = %{customdata[0]:.3f}, loss %{customdata[1]:.3g} nats"
                                               "<extra></extra>"))
        if len(bend):
            fig.add_trace(go.Scatter(x=bend.x, y=bend.y, mode="markers", name=f"{path} bend",
                                     marker=dict(symbol="diamond-open", size=12, color=colour),
                                     customdata=bend[["loss"]], legendgroup=str(path),
                                     hovertemplate="bend: loss %{customdata[0]:.3g} nats<extra></extra>"))
    ends = table[(table.point == "curve") & table.t.isin([0.0, 1.0])].drop_duplicates("t").sort_values("t")
    fig.add_trace(go.Scatter(x=ends.x, y=ends.y, mode="markers+text",
                             text=["first minimum", "second minimum"][:len(ends)],
                             textposition="bottom center", marker=dict(symbol="x", size=12, color="red"),
                             name="minima"))
    fig.update_layout(title=title, xaxis_title="x: along the line from the first minimum to the second (weight units)",
                      yaxis_title="y: distance from that line (weight units)", legend_title="path",
                      width=800, height=500, yaxis=dict(scaleanchor="x", scaleratio=1))
    return fig


def image_rows(rows: dict[str, torch.Tensor], captions: dict[str, Sequence[str]], title: str) -> go.Figure:
    """A mosaic: one row per name of float images (K, 3, H, W) in [0, 1], a caption under each image."""
    size = next(iter(rows.values())).shape[-1]
    width, gap = max(len(images) for images in rows.values()), max(4, size // 2)
    blank, strip = torch.ones(3, size, size), torch.ones(3, gap, width * size)
    lines = [torch.cat([torch.cat(list(images) + [blank] * (width - len(images)), dim=2), strip], dim=1)
             for images in rows.values()]
    mosaic = (torch.cat(lines, dim=1).permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    fig = px.imshow(mosaic, title=title)
    for r, name in enumerate(rows):
        for c, caption in enumerate(captions[name]):
            fig.add_annotation(x=size * (c + 0.5), y=(size + gap) * r + size + gap / 2, text=caption,
                               showarrow=False, font=dict(size=10))
    fig.update_xaxes(showticklabels=False, title=f"strength, under each image ({size}x{size} px images)")
    fig.update_yaxes(tickvals=[(size + gap) * r + size / 2 for r in range(len(rows))], ticktext=list(rows),
                     title="perturbation")
    fig.update_layout(height=160 + 120 * len(rows), width=160 + 100 * width, margin=dict(l=140))
    return fig


def scatter(table: pd.DataFrame, x: str, y: str, color: str, title: str, x_title: str, y_title: str,
            facet: str | None = None, symbol: str | None = None, error_y: str | None = None,
            hover: list[str] | None = None, color_title: str | None = None, log: bool = False) -> go.Figure:
    """One point per row, optionally faceted, with error bars from column `error_y`, `hover` columns and
    both axes on log scales (`log`)."""
    fig = px.scatter(table, x=x, y=y, color=color, facet_col=facet, symbol=symbol, error_y=error_y, title=title,
                     hover_data=hover, labels={color: color_title or color}, log_x=log, log_y=log)
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    if facet:  # one x title under all panels: one per panel runs into its neighbour's
        fig.update_xaxes(title_text="")
        fig.add_annotation(text=x_title, x=0.5, y=0, xref="paper", yref="paper", yshift=-45, showarrow=False)
        fig.update_layout(margin_b=90)
    else:
        fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title, col=1)
    if pd.api.types.is_integer_dtype(table[color]):  # a count or a step: whole-number ticks on its colour bar
        fig.update_coloraxes(colorbar_dtick=1)
    return fig.update_layout(legend_title=color_title or color)


def by_split(histories: pd.DataFrame, ids: tuple[str, ...] = ("method", "pretrain_seed", "epoch")) -> pd.DataFrame:
    """Per-epoch histories in long form: one row per run (`ids`), epoch and split (train, clean train, test)."""
    names = {"train": "train (as trained)", "clean_train": "train (clean images)", "test": "test"}
    frames = []
    for prefix, split in names.items():
        if f"{prefix}_loss" in histories:
            part = histories.dropna(subset=[f"{prefix}_loss"])
            frames.append(part[list(ids)].assign(
                split=split, loss=part[f"{prefix}_loss"], accuracy=part[f"{prefix}_accuracy"]))
    return pd.concat(frames, ignore_index=True)


def property_outcome(table: pd.DataFrame, prop: str, outcome: str) -> go.Figure:
    """One point per pretraining run: a finetuning outcome (error bars: its sd over finetuning seeds) against a
    property of the minimum (columns value, outcome_value, outcome_std, method, run)."""
    fig = px.scatter(table, x="value", y="outcome_value", color="method", error_y="outcome_std", hover_data=["run"],
                     title=f"{outcome} after finetuning against {prop} of the minimum")
    return fig.update_layout(xaxis_title=f"{prop} (pretrained minimum)",
                             yaxis_title=f"{outcome} (mean over finetuning seeds)", legend_title="method")


def outcome_grid(table: pd.DataFrame, title: str, x_titles: dict[str, str], y_titles: dict[str, str],
                 log_x: Sequence[str] = ()) -> go.Figure:
    """One point per pretraining run: each outcome (rows) against each property (columns; those in `log_x` on a
    log axis), coloured by method, the knob arm's runs as open symbols, error bars one sd over the run's finetuning
    seeds (columns property, outcome, value, outcome_value, outcome_std, method, arm, run); every panel its own axes."""
    fig = px.scatter(table, x="value", y="outcome_value", color="method", symbol="arm", error_y="outcome_std",
                     facet_row="outcome", facet_col="property", hover_data=["run"], title=title,
                     symbol_map={"methods": "circle", "knob": "circle-open"},
                     category_orders={"property": list(x_titles), "outcome": list(y_titles)})
    fig.update_xaxes(matches=None, showticklabels=True)
    fig.update_yaxes(matches=None, showticklabels=True)
    fig.for_each_annotation(lambda a: a.update(text=""))
    for i, prop in enumerate(x_titles, start=1):
        fig.update_xaxes(title_text=x_titles[prop], row=1, col=i)
        if prop in log_x:
            fig.update_xaxes(type="log", col=i)
    for j, outcome in enumerate(reversed(list(y_titles)), start=1):  # plotly counts facet rows from the bottom
        fig.update_yaxes(title_text=y_titles[outcome], row=j, col=1)
    return fig.update_layout(legend_title="method, arm", height=300 * len(y_titles) + 120)



def reliabilities(table: pd.DataFrame, target: float, title: str) -> go.Figure:
    """Per property of a `tables.reliability` table: the reliability of one replicate (ICC) and of the mean of the
    replicates, each with its 95% interval as error bars, beside a dashed line at `target`."""
    k = int(table.replicates.max())
    series = {"one replicate (ICC)": ("icc", "icc_low", "icc_high"),
              f"the mean of {k} replicates (what the study uses)":
                  ("reliability", "reliability_low", "reliability_high")}
    fig = go.Figure([go.Scatter(x=table.property, y=table[v], mode="markers", name=name,
                                error_y=dict(type="data", symmetric=False, array=table[high] - table[v],
                                             arrayminus=table[v] - table[low]))
                     for name, (v, low, high) in series.items()])
    fig.add_hline(y=target, line_dash="dash", annotation_text=f"target {target}")
    return fig.update_layout(title=title, xaxis_title="run-level property", legend_title="reliability of",
                             yaxis_title="test-retest reliability (intraclass correlation)", scattermode="group")


def power_curves(table: pd.DataFrame, current: int, title: str) -> go.Figure:
    """Per hypothesis (column id): simulated power against runs per method, its binomial 95% interval as error bars,
    a dashed line at 80% power and a dotted one at the study's own size `current`."""
    table = table.assign(above=table.ci_high - table.power, below=table.power - table.ci_low)
    fig = px.line(table, x="runs_per_method", y="power", color="id", error_y="above", error_y_minus="below",
                  markers=True, title=title)
    fig.add_hline(y=0.8, line_dash="dash", annotation_text="80% power")
    fig.add_vline(x=current, line_dash="dot", annotation_text="this study")
    return fig.update_layout(xaxis_title="pretraining runs per method (and seeds of the knob arm)",
                             yaxis_title="power (share of simulated pages on which it holds)",
                             legend_title="primary hypothesis", yaxis_range=[0, 1.02])
