"""Where the project's data and outputs live, whatever folder a kernel was started in."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """The folder users put real data in and data caches land in (MINIMA_DATA overrides)."""
    return Path(os.environ.get("MINIMA_DATA", ROOT / "data"))


def outputs_dir() -> Path:
    """The folder of every study's outputs and of the shared run store (MINIMA_OUTPUTS overrides)."""
    return Path(os.environ.get("MINIMA_OUTPUTS", ROOT / "outputs"))


def runs_dir() -> Path:
    """Content-addressed training runs, shared by studies whose configs agree."""
    return outputs_dir() / "runs"


def notebooks_dir() -> Path:
    return ROOT / "notebooks"


def resolve_data_path(path: str) -> Path:
    """An absolute path as given; a relative one inside the project's data folder."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else data_dir() / p
