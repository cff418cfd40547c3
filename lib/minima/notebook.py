"""What every notebook does first: load the study, save its config, set up figures."""
from __future__ import annotations

from typing import Any

from minima import plots
from minima.config import Study


def start(preset: str, overrides: dict[str, Any]) -> Study:
    """The validated study for a notebook's parameters, its config saved with the outputs."""
    study = Study.load(preset, **dict(overrides))
    study.save()
    plots.setup()
    print(f"study {study.name!r}, outputs in {study.output_dir}", flush=True)
    return study
