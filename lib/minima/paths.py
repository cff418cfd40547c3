"""Where the project's data and outputs live, whatever folder a kernel was started in."""
from __future__ import annotations

import hashlib
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


def folder_digest(folder: Path) -> str:
    """A short hash of a folder's files: the text of its sidecars (.yaml), the size and time of the rest."""
    digest = hashlib.sha1()
    for p in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        if p.is_file():
            stat = p.stat()
            digest.update(f"{p.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
            if p.suffix == ".yaml":
                digest.update(p.read_bytes())
    return digest.hexdigest()[:10]
