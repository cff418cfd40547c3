"""`python -m minima run --preset P [--only NAME] [key=value ...]`: the notebooks, in order, via papermill."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from minima import paths
from minima.config import ConfigError, Study, parse_overrides


def notebooks() -> list[Path]:
    """The study's notebooks in order (NN_name.ipynb)."""
    return sorted(p for p in paths.notebooks_dir().glob("[0-9][0-9]_*.ipynb"))


def select(only: list[str] | None) -> list[Path]:
    """The notebooks named by `--only` (by number or name), all of them when none is given."""
    available = notebooks()
    if not only:
        return available
    chosen = []
    for name in only:
        hits = [p for p in available if name in (p.stem, p.stem[:2], p.stem[3:], p.name)]
        if not hits:
            valid = ", ".join(p.stem for p in available)
            raise ConfigError(f"--only {name!r} names no notebook; valid: {valid} (or their numbers)")
        chosen += [p for p in hits if p not in chosen]
    return sorted(chosen)


def parameters(study: Study, overrides: dict) -> dict:
    return dict(preset=study.preset, overrides=dict(overrides, name=study.name))


def run(study: Study, overrides: dict, chosen: list[Path]) -> int:
    """Execute each notebook into the study's folder and export it to HTML; stop at the first failure."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    os.environ["MINIMA_HEADLESS"] = "1"
    out_dir = study.output_dir
    study.save()
    print(f"study {study.name!r} (preset {study.preset}) -> {out_dir}", flush=True)
    timings = []
    for i, nb in enumerate(chosen, 1):
        target = out_dir / nb.name
        print(f"[{i}/{len(chosen)}] {nb.stem} ...", flush=True)
        start = time.perf_counter()
        try:
            papermill.execute_notebook(str(nb), str(target), parameters=parameters(study, overrides),
                                       cwd=str(nb.parent), progress_bar=False,
                                       stdout_file=sys.stdout, stderr_file=sys.stderr)
        except PapermillExecutionError as err:
            print(f"\nFAILED: notebook {nb.stem}, cell {err.cell_index} (execution count {err.exec_count}): "
                  f"{err.ename}: {err.evalue}\nexecuted copy with the traceback: {target}", file=sys.stderr)
            return 1
        seconds = time.perf_counter() - start
        html = export_html(target)
        timings.append((nb.stem, seconds, html))
        print(f"[{i}/{len(chosen)}] {nb.stem} done in {seconds:.1f} s -> {html}", flush=True)
    print("\nsummary")
    for name, seconds, html in timings:
        print(f"  {name:<20} {seconds:7.1f} s   {html}")
    print(f"  {'total':<20} {sum(t for _, t, _ in timings):7.1f} s")
    print(f"config: {out_dir / 'study.yaml'}\ntables: {out_dir / 'tables'}\nruns:   {paths.runs_dir()}")
    return 0


def export_html(notebook: Path) -> Path:
    """An HTML copy of an executed notebook, figures included (plotly.js embedded, no CDN)."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(notebook, as_version=4))
    html = notebook.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


def prepare(study: Study, overrides: dict, into: Path) -> int:
    """Parameterised, unexecuted copies of the notebooks (what the nbval tests run)."""
    import papermill

    into.mkdir(parents=True, exist_ok=True)
    for nb in notebooks():
        papermill.execute_notebook(str(nb), str(into / nb.name), parameters=parameters(study, overrides),
                                   prepare_only=True, progress_bar=False)
    print(f"prepared {len(notebooks())} notebooks for study {study.name!r} in {into}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minima", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="execute the notebooks with papermill and export HTML")
    prep_p = sub.add_parser("prepare", help="write parameterised notebook copies without running them")
    for p in (run_p, prep_p):
        p.add_argument("--preset", default="default")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, values in YAML")
    run_p.add_argument("--only", action="append", metavar="NAME", help="a notebook's number or name; repeatable")
    prep_p.add_argument("--into", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.overrides)
        study = Study.load(args.preset, **overrides)
        if args.command == "prepare":
            return prepare(study, overrides, args.into)
        chosen = select(args.only)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return run(study, overrides, chosen)


if __name__ == "__main__":
    sys.exit(main())
