"""`python -m minima run --preset P [--only NAME] [key=value ...]`: the notebooks, in order, via papermill;
`python -m minima data --preset P`: get the study's data (found, downloaded or installed) and cache it;
`python -m minima export-zoo --preset P --into DIR`: the study's pretraining runs as a zoo folder;
`python -m minima plan --preset P [--pilot STUDY]`: the primary hypotheses' power and the runs they need;
`python -m minima replicate A B [--readme]`: the primary verdicts of stored studies A and B (one plan, other
roundings) side by side; --readme writes those that agree into the README's findings."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from minima import paths
from minima.config import EXECUTION_KEYS, ConfigError, Study, parse_overrides
from minima.datasets import DataError


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


def source_key(study: Study, notebook: Path) -> str:
    """What an executed notebook depends on: its source, the study's config (not how it runs) and the
    library's code."""
    h = hashlib.sha1(notebook.read_bytes())
    config = {k: v for k, v in study.as_dict().items() if k not in EXECUTION_KEYS}
    h.update(json.dumps(config, sort_keys=True).encode())
    for f in sorted(Path(__file__).parent.rglob("*.py")) + sorted(Path(__file__).parent.rglob("*.yaml")):
        h.update(f.read_bytes())
    return h.hexdigest()


def run(study: Study, overrides: dict, chosen: list[Path], force: bool = False) -> int:
    """Execute each notebook into the study's folder and export it to HTML; stop at the first failure.

    A notebook already executed with the same source, config and library code is not run again."""
    from papermill.exceptions import PapermillExecutionError

    from minima import executor

    os.environ["MINIMA_HEADLESS"] = "1"
    out_dir = study.output_dir
    study.save()
    print(f"study {study.name!r} (preset {study.preset}) -> {out_dir}", flush=True)
    if study.executor == "dask" and study.scheduler in ("",) + executor.JOBQUEUES:
        # one cluster for every notebook: each notebook's kernel connects to its scheduler
        client = executor.dask_client(study, preload=("minima.pretraining", "minima.finetuning", "minima.landscape", "minima.transfer"))
        overrides = dict(overrides, scheduler=client.scheduler.address)
        print(f"Dask cluster: {client.scheduler.address}, dashboard {client.dashboard_link}", flush=True)
    timings = []
    for i, nb in enumerate(chosen, 1):
        target = out_dir / nb.name
        stamp, key = out_dir / f".{nb.stem}.key", source_key(study, nb)
        if not force and stamp.is_file() and stamp.read_text() == key and target.with_suffix(".html").is_file():
            print(f"[{i}/{len(chosen)}] {nb.stem}: up to date, not run again (--force runs it)", flush=True)
            timings.append((nb.stem, 0.0, target.with_suffix(".html")))
            continue
        print(f"[{i}/{len(chosen)}] {nb.stem} ...", flush=True)
        start = time.perf_counter()
        try:
            execute(nb, target, parameters(study, overrides))
        except PapermillExecutionError as err:
            print(f"\nFAILED: notebook {nb.stem}, cell {err.cell_index} (execution count {err.exec_count}): "
                  f"{err.ename}: {err.evalue}\nexecuted copy with the traceback: {target}", file=sys.stderr)
            return 1
        seconds = time.perf_counter() - start
        html = export_html(target)
        stamp.write_text(key)
        timings.append((nb.stem, seconds, html))
        print(f"[{i}/{len(chosen)}] {nb.stem} done in {seconds:.1f} s -> {html}", flush=True)
    print("\nsummary")
    for name, seconds, html in timings:
        print(f"  {name:<20} {seconds:7.1f} s   {html}")
    print(f"  {'total':<20} {sum(t for _, t, _ in timings):7.1f} s")
    executed = [out_dir / nb.name for nb in notebooks() if (out_dir / nb.name).is_file()]
    if len(executed) > 1:
        print(f"report: {write_report(executed, out_dir / 'report.html')}")
    print(f"config: {out_dir / 'study.yaml'}\ntables: {out_dir / 'tables'}\nruns:   {paths.runs_dir()}")
    print_scoreboard(study)
    return 0


def kernel_config():
    """How papermill's kernel manager starts each notebook's kernel: a local kernel on this machine.

    jupyter_client's default transport is TCP on 127.0.0.1 without CurveZMQ keys, and ipykernel (7.x)
    then logs "Kernel is running over TCP without encryption ..." at every start, as its own advice
    says: "Use IPC transport or launch with kernel manager-provisioned CurveZMQ keys". A kernel this
    process starts for itself needs no network: IPC transport (Unix domain sockets) is the supported
    setting (KernelManager.transport). The sockets get a path of their own in Jupyter's runtime folder
    (readable by this user only): jupyter_client's default, `kernel-ipc-<n>` in the working directory,
    is the same for every kernel started there, so two at once (two studies, or the tests' workers)
    would talk to each other's kernels. Where libzmq has no IPC (Windows), kernel-manager-provisioned
    CurveZMQ keys when libzmq has Curve (KernelManager.transport_encryption, jupyter_client >= 8.8),
    else the default."""
    import uuid

    import zmq
    from jupyter_client import KernelManager
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets.config import Config

    if zmq.has("ipc"):
        runtime = Path(jupyter_runtime_dir())
        runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
        return Config(KernelManager=dict(transport="ipc", ip=str(runtime / f"minima-{uuid.uuid4().hex[:12]}-ipc")))
    if zmq.has("curve") and KernelManager.class_traits().get("transport_encryption") is not None:
        return Config(KernelManager=dict(transport_encryption="auto"))
    return Config()


def execute(notebook: Path, target: Path, params: dict) -> None:
    """Run one notebook with papermill into `target` (kernel in the notebook's folder, its output to ours)."""
    import papermill

    papermill.execute_notebook(str(notebook), str(target), parameters=params, cwd=str(notebook.parent),
                               progress_bar=False, stdout_file=sys.stdout, stderr_file=sys.stderr,
                               config=kernel_config())


def write_report(executed: list[Path], target: Path) -> Path:
    """One self-contained HTML page of the executed notebooks, plotly.js embedded once."""
    import nbformat
    from nbconvert import HTMLExporter

    merged, plotly_loaded = None, False
    for path in executed:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            kept = []
            for out in cell.get("outputs", []):
                is_loader = "window.PlotlyConfig" in str(out.get("data", {}).get("text/html", ""))
                if not (is_loader and plotly_loaded):
                    kept.append(out)
                plotly_loaded |= is_loader
            if cell.cell_type == "code":
                cell.outputs = kept
        if merged is None:
            merged = nb
        else:
            merged.cells += nb.cells
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(merged)
    target.write_text(body, encoding="utf-8")
    return target


def print_scoreboard(study: Study) -> None:
    """The conclusions' scoreboard in the terminal, from the study's tables (no notebook needed);
    when a table it needs is not computed yet, say which instead of computing it here."""
    import pandas as pd

    from minima import conclusions, findings, prose

    missing = conclusions.missing_inputs(study)
    if missing:
        print(f"\nscoreboard: not yet, it needs the tables {', '.join(missing)} (notebooks 02-05 compute them)")
        return
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(f"\nscoreboard (mean over pretraining runs [95% t interval; none under 3 runs], * best), "
              f"protocol {study.protocols[0]}:")
        print(prose.scoreboard_text(conclusions.study_scoreboard(study)).to_string())
    path = study.output_dir / "findings.md"
    path.write_text(findings.study_findings(study), encoding="utf-8")
    print(f"findings: {path}")


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


def get_data(study: Study) -> int:
    """Find, download or install the study's data and cache both tasks; one line per task."""
    from minima import data

    for task in data.provide(study):
        s = task.summary()
        print(f"{s['task']}: {s['kind']}, {s['classes']} classes, {s['train']} train / {s['test']} test images "
              f"of {s['image'][1]} px" + (f", from {s['root']}" if "root" in s else ""), flush=True)
    return 0


def export_zoo(study: Study, into: Path) -> int:
    """Write the study's pretraining runs as a zoo; one line per checkpoint."""
    from minima import zoo_export

    get_data(study)
    for row in zoo_export.export_study(study, into).itertuples():
        print(f"{row.name}: {row.arch}, group {row.group} (run {row.run})", flush=True)
    print(f"zoo written to {into}; study it with zoo={into.resolve()}", flush=True)
    return 0


def plan(study: Study, pilot: str | None) -> int:
    """Print the planner's table: the study's primary hypotheses' simulated power from a pilot's stored tables
    (the study's own unless `pilot` names another stored study), the runs per method for 80% and 90%, and times."""
    import pandas as pd

    from minima import planner, prose

    table = planner.study_plan(study, Study.stored(pilot) if pilot else None)
    print(f"plan for study {study.name!r} (preset {study.preset}) from pilot {pilot or study.name!r}:")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table[planner.SHOWN].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print("\n".join(prose.plan_sentences(table)))
    return 0


README_START, README_END = "<!-- replicated findings: python -m minima replicate -->", "<!-- end of replicated findings -->"


def replicate(names: list[str], readme: bool) -> int:
    """Print the primary verdicts of the stored studies side by side; with `readme`, write the ones that reached the
    same decision in every study between the README's markers (so its findings cannot drift from the pages)."""
    from minima import findings

    studies = [Study.stored(n) for n in names]
    text = findings.replication_markdown(findings.replication(studies), studies)
    print(text)
    if readme:
        path = paths.ROOT / "README.md"
        page = path.read_text()
        if README_START not in page or README_END not in page:
            print(f"error: {path} has no block between {README_START!r} and {README_END!r}", file=sys.stderr)
            return 2
        head, rest = page.split(README_START, 1)
        path.write_text(head + README_START + "\n" + text + "\n" + README_END + rest.split(README_END, 1)[1])
        print(f"wrote the replicated findings into {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minima", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="execute the notebooks with papermill and export HTML")
    prep_p = sub.add_parser("prepare", help="write parameterised notebook copies without running them")
    data_p = sub.add_parser("data", help="get the study's data (found, downloaded or installed) and cache it")
    zoo_p = sub.add_parser("export-zoo", help="write the study's pretraining runs (trained if need be) as a zoo folder")
    plan_p = sub.add_parser("plan", help="simulate the primary hypotheses' power from a pilot's stored tables")
    for p in (run_p, prep_p, data_p, zoo_p, plan_p):
        p.add_argument("--preset", default="default")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, values in YAML")
    run_p.add_argument("--only", action="append", metavar="NAME", help="a notebook's number or name; repeatable")
    run_p.add_argument("--force", action="store_true", help="run notebooks even when their outputs are up to date")
    run_p.add_argument("--verbose", action="store_true",
                       help="print every run's log (its epochs; always in log.txt in the run's folder) here too")
    prep_p.add_argument("--into", type=Path, required=True)
    zoo_p.add_argument("--into", type=Path, required=True, help="the zoo folder; a study reads it with zoo=<folder>")
    plan_p.add_argument("--pilot", metavar="STUDY", help="the stored study to plan from (default: the preset's own)")
    rep_p = sub.add_parser("replicate", help="the primary verdicts of stored runs of one plan, side by side")
    rep_p.add_argument("studies", nargs="+", metavar="STUDY", help="stored studies (outputs/<STUDY>), one plan")
    rep_p.add_argument("--readme", action="store_true", help="write the verdicts that agree into README.md")
    args = parser.parse_args(argv)
    if args.command == "replicate":
        try:
            return replicate(args.studies, args.readme)
        except (ConfigError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    try:
        overrides = parse_overrides(args.overrides)
        study = Study.load(args.preset, **overrides)
        if args.command == "prepare":
            return prepare(study, overrides, args.into)
        if args.command == "data":
            return get_data(study)
        if args.command == "export-zoo":
            return export_zoo(study, args.into)
        if args.command == "plan":
            return plan(study, args.pilot)
        chosen = select(args.only)
        get_data(study)
        if args.verbose:
            from minima.train import VERBOSE

            os.environ[VERBOSE] = "1"  # each notebook's kernel inherits it
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return run_archs(study, overrides, chosen, args.force)


def run_archs(study: Study, overrides: dict, chosen: list[Path], force: bool = False) -> int:
    """`run` the study on each of its `compare_archs` (each its own study), then the study itself, whose notebook
    06 compares them."""
    from minima import architectures

    for arch in study.compare_archs:
        other = architectures.arch_study(study, arch)
        code = run(other, dict(overrides, arch=arch, compare_archs=[], name=other.name), chosen, force)
        if code:
            return code
    return run(study, overrides, chosen, force)


if __name__ == "__main__":
    sys.exit(main())
