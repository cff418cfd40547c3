"""Interactive explorers over the stored tables: dropdowns that filter a table and redraw a figure.

In JupyterLab the explorer is live (ipywidgets); in a headless run (papermill sets
MINIMA_HEADLESS) it returns the figure for the first choice of every dropdown, so the executed
notebook and its HTML keep a static figure.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import ipywidgets as w
import pandas as pd
import plotly.graph_objects as go
from IPython.display import display


def headless() -> bool:
    return bool(os.environ.get("MINIMA_HEADLESS"))


def explorer(table: pd.DataFrame, controls: Sequence[str], draw: Callable[[pd.DataFrame, dict], go.Figure],
             defaults: dict | None = None) -> w.Widget | go.Figure:
    """One dropdown per column in `controls`; `draw(filtered_table, selection)` makes the figure."""
    missing = [c for c in controls if c not in table]
    if missing:
        raise ValueError(f"controls {missing} are not columns of the table; columns: {list(table.columns)}")
    options = {c: list(dict.fromkeys(table[c])) for c in controls}
    start = {c: (defaults or {}).get(c, options[c][0]) for c in controls}

    def figure(selection: dict) -> go.Figure:
        mask = pd.Series(True, index=table.index)
        for c, v in selection.items():
            mask &= table[c] == v
        return draw(table[mask], selection)

    if headless():
        return figure(start)
    dropdowns = {c: w.Dropdown(options=options[c], value=start[c], description=c) for c in controls}
    out = w.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            display(figure({c: d.value for c, d in dropdowns.items()}))

    for d in dropdowns.values():
        d.observe(redraw, names="value")
    redraw()
    return w.VBox([w.HBox(list(dropdowns.values())), out])
