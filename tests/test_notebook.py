"""The head of every notebook, and the papermill call that runs them."""
from pathlib import Path

import nbformat
import pytest

from minima import notebook
from minima.__main__ import execute, kernel_config, write_report
from minima.config import Study
from minima.train import VERBOSE


def test_the_head_shows_only_the_keys_that_differ_from_the_preset():
    study = Study.load("tiny", lr=0.01, methods=["adam", "swa"], batch_size=16)  # batch_size: tiny's own value
    changed = notebook.differences(study)
    assert list(changed.key) == ["methods", "lr"]  # in config order; name and preset are not differences
    assert changed.set_index("key").loc["lr"].tolist() == ["0.003", "0.01"]
    head = notebook.head(study)
    page = head._repr_html_()
    assert f"<code>{study.name}</code>" in page and "<code>tiny</code>" in page
    assert page.count("<details>") == 1 and page.index("<details>") > page.index("lr")
    assert "no overrides" not in repr(head) and "lr: 0.01 (preset: 0.003)" in repr(head)


def test_the_head_of_the_preset_as_is_says_so():
    study = Study.load("tiny", name="my-study")
    assert notebook.differences(study).empty
    assert "No overrides: the preset as is." in notebook.head(study)._repr_html_()
    assert repr(notebook.head(study)).endswith("no overrides: the preset as is")


def test_two_kernels_started_at_once_get_sockets_of_their_own():
    """jupyter_client's IPC default is `kernel-ipc-<n>` in the working directory, one path for every kernel
    started there: two studies at once, or two test workers, talked to each other's kernels."""
    import zmq

    if not zmq.has("ipc"):
        pytest.skip("libzmq without IPC: kernels use TCP")
    a, b = (kernel_config().KernelManager for _ in range(2))
    assert a.transport == b.transport == "ipc"
    assert a.ip != b.ip and Path(a.ip).is_absolute() and Path(a.ip).parent == Path(b.ip).parent


def test_a_notebook_runs_quietly_and_its_head_reaches_the_report(tmp_path, capfd, monkeypatch):
    """No kernel transport warning, no third-party warning (sharpness imports curvlinops, whose linear_operator
    calls torch.jit.script), a batch of runs as one bar whose epochs reach the terminal with --verbose but never
    the notebook: the only stream the executed notebook holds is the head's line."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('preset = "default"\noverrides = {}', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("from minima import notebook, pretraining, sharpness\n\n"
                                  "study = notebook.start(preset, overrides)\nnotebook.head(study)"),
        nbformat.v4.new_code_cell("pretraining.pretrain_all(study);")])
    nb.metadata["kernelspec"] = dict(name="python3", display_name="Python 3", language="python")
    source = tmp_path / "nb.ipynb"
    nbformat.write(nb, source)
    target = tmp_path / "out.ipynb"
    overrides = dict(lr=0.01, methods=["adam"])
    study = Study.load("tiny", **overrides)
    monkeypatch.setenv(VERBOSE, "1")  # as python -m minima run --verbose sets it for the kernels
    monkeypatch.delenv("PYTEST_CURRENT_TEST")  # under pytest, ipykernel would not capture its stdout file as it does
    execute(source, target, dict(preset="tiny", overrides=overrides))  # the runner's own papermill call
    printed = capfd.readouterr()
    assert "study 'tiny-" in printed.out, "the kernel's output reached us"
    assert "adam seed 0 epoch 2: train loss" in printed.out, "verbose: the run's log reached the terminal"
    assert "without encryption" not in printed.out + printed.err
    cells = nbformat.read(target, as_version=4).cells
    streams = [o.text for c in cells for o in c.outputs if o.output_type == "stream"]
    assert streams == [f"study {study.name!r}, outputs in {study.output_dir}\n"]
    assert any("<details>" in o.get("data", {}).get("text/html", "") for o in cells[-2].outputs)
    bar = cells[-1].outputs[0].data
    assert bar["text/plain"].startswith("pretraining: 100%") and 'value="1" max="1"' in bar["text/html"]
    page = write_report([target], tmp_path / "report.html").read_text()
    assert "<details><summary>Full configuration" in page and "0.01" in page
