"""Notebooks call, show and narrate: the logic lives in the library, so no code cell grows long."""
from pathlib import Path

import nbformat
import pytest

MAX_LOGIC_LINES = 12
NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def logic_lines(source: str) -> int:
    """Lines of a code cell that are neither blank nor comments."""
    return sum(1 for line in source.splitlines() if line.strip() and not line.strip().startswith("#"))


def test_the_count_skips_blank_lines_and_comments():
    assert logic_lines("x = 1\n\n# why\n    # indented why\ny = f(x)  # inline\n") == 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_code_cell_holds_more_than_a_dozen_lines_of_logic(path):
    cells = nbformat.read(path, as_version=4).cells
    long = {i: logic_lines(c.source) for i, c in enumerate(cells) if c.cell_type == "code"}
    assert NOTEBOOKS and max(long.values()) <= MAX_LOGIC_LINES, {
        i: n for i, n in long.items() if n > MAX_LOGIC_LINES}
