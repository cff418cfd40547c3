import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import pytest

from minima import widgets

TABLE = pd.DataFrame(dict(measure=["a", "a", "b", "b"], method=["x", "y", "x", "y"], value=[1, 2, 3, 4]))


def _draw(table, selection):
    return px.bar(table, x="method", y="value", title=f"measure {selection['measure']}")


def test_headless_explorer_leaves_the_static_figure_of_the_default_choice(monkeypatch):
    monkeypatch.setenv("MINIMA_HEADLESS", "1")
    fig = widgets.explorer(TABLE, ["measure"], _draw, defaults=dict(measure="b"))
    assert isinstance(fig, go.Figure)
    assert list(fig.data[0].y) == [3, 4] and "measure b" in fig.layout.title.text


def test_live_explorer_redraws_when_a_dropdown_changes(monkeypatch):
    monkeypatch.delenv("MINIMA_HEADLESS", raising=False)
    drawn = []
    box = widgets.explorer(TABLE, ["measure"], lambda t, s: drawn.append(list(t.value)) or _draw(t, s))
    dropdown = box.children[0].children[0]
    assert dropdown.options == ("a", "b") and drawn == [[1, 2]]
    dropdown.value = "b"
    assert drawn[-1] == [3, 4]


def test_explorer_rejects_a_control_that_is_not_a_column():
    with pytest.raises(ValueError, match="'nope'"):
        widgets.explorer(TABLE, ["nope"], _draw)
