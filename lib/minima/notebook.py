"""What every notebook does first: load the study, save its config, set up figures, show its head."""
from __future__ import annotations

import html
from typing import Any

import pandas as pd

from minima import confirmatory, plots
from minima.config import Study


def start(preset: str, overrides: dict[str, Any]) -> Study:
    """The validated study for a notebook's parameters, its config and confirmatory plan saved with the outputs
    (the plan before notebook 02 trains a run: `confirmatory.write_plan` keeps the first and notes any change)."""
    study = Study.load(preset, **dict(overrides))
    study.save()
    confirmatory.write_plan(study)
    plots.setup()
    print(f"study {study.name!r}, outputs in {study.output_dir}", flush=True)
    return study


def differences(study: Study) -> pd.DataFrame:
    """The keys whose value differs from the study's preset (key, preset, study), in config order.

    The study's name and preset are not compared: they say which study it is, not how it differs."""
    base = Study.load(study.preset).as_dict()
    rows = [dict(key=k, preset=repr(base[k]), study=repr(v)) for k, v in study.as_dict().items()
            if k not in ("name", "preset") and v != base[k]]
    return pd.DataFrame(rows, columns=["key", "preset", "study"])


class Head:
    """The head of a notebook: the study's name and preset, the keys that differ from the preset, and
    the full configuration folded away (an HTML <details> block: JupyterLab and nbconvert's HTML
    export both show it closed, one click opens it). Plain text where there is no HTML (a terminal)."""

    def __init__(self, study: Study):
        self.study, self.changed = study, differences(study)

    def _repr_html_(self) -> str:
        s = self.study
        title = (f"<p><b>Study <code>{html.escape(s.name)}</code></b>, preset "
                 f"<code>{html.escape(s.preset)}</code>, outputs in <code>{html.escape(str(s.output_dir))}</code></p>")
        if len(self.changed):
            changed = (f"<p>{len(self.changed)} key(s) differ from the preset:</p>"
                       + self.changed.to_html(index=False, escape=True))
        else:
            changed = "<p>No overrides: the preset as is.</p>"
        full = s.describe()
        config = (f"<details><summary>Full configuration ({len(full)} keys)</summary>"
                  f"{full.to_html(index=False, escape=True)}</details>")
        return title + changed + config

    def __repr__(self) -> str:
        s = self.study
        lines = [f"study {s.name!r}, preset {s.preset!r}"]
        if len(self.changed):
            lines += [f"  {r.key}: {r.study} (preset: {r.preset})" for r in self.changed.itertuples()]
        else:
            lines.append("no overrides: the preset as is")
        return "\n".join(lines)


def head(study: Study) -> Head:
    """What the top of every notebook shows (the last line of its setup cell)."""
    return Head(study)
