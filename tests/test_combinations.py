"""Every combination of methods, arms and protocols the config accepts runs to the end: a study that lacks what a
section needs skips it with one sentence instead of failing notebooks into the run."""
import nbformat
import pytest
import torch
import yaml

from minima import __main__ as cli
from minima import architectures, models, store, tables
from minima.config import Study, parse_overrides

# one worker for the module under xdist: its cases share the runs they train (`shared`)
pytestmark = pytest.mark.xdist_group("combinations")

# the tiny preset made smaller still: one pretraining epoch, one finetuning seed, two strengths per perturbation
SMALL = ["pretrain_epochs=1", "finetune_seeds=[0]", "finetune_epochs=1", "robustness_repeats=1", "energy_repeats=1",
         "noise_sigmas=[0.0, 0.3]", "mask_sizes=[0, 8]", "fgsm_eps=[0.0, 0.03]", "pgd_eps=[0.0, 0.03]",
         "energy_sigmas=[0.0, 0.3]", "curve_kinds=[bezier]"]
NOTEBOOKS_OF_RUNS = ["02_pretraining", "03_landscape", "04_robustness", "05_finetuning", "06_conclusions"]  # not 01: data
# overrides, the notebooks to run, and what the executed notebooks print (after "!": do not print).
# Every notebook of a one-method study takes a path of its own; a two-method study differs from the nbval run of
# tiny's six methods only in notebook 03 (no plane) and, on two architectures, in 06: each notebook costs ~15 s of
# imports alone
CASES = {
    "one method, no knob arm, one protocol": (
        ["methods=[sam]", "sweeps={}", "protocols=[linear_probe]"], NOTEBOOKS_OF_RUNS,
        dict(landscape=["No slices: ", "No plane: ", "No curves between minima: "],
             conclusions=["No method comparison: each compares a method with adam, and this study has no adam"])),
    # and on a second architecture without batchnorm (ConvNeXt), compared in notebook 06
    "two methods, two architectures": (
        ["methods=[adam, sam]", "sweeps={}", "compare_archs=[convnext_tiny_small]"], ["03_landscape", "06_conclusions"],
        dict(landscape=["No plane: it goes through the minima of three methods", "!No slices: ", "!No curves"])),
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One outputs and data folder for the cases, so that a run two cases share is trained once."""
    return tmp_path_factory.mktemp("combinations")


def printed(notebook) -> str:
    """Everything an executed notebook printed."""
    return "".join(o.get("text", "") for c in nbformat.read(notebook, as_version=4).cells
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")


@pytest.mark.heavy
@pytest.mark.parametrize("case", CASES)
def test_a_study_lacking_what_a_section_needs_runs_through_and_says_what_it_skipped(case, shared, monkeypatch):
    monkeypatch.setenv("MINIMA_OUTPUTS", str(shared / "outputs"))
    monkeypatch.setenv("MINIMA_DATA", str(shared / "data"))
    overrides, notebooks, said = CASES[case]
    only = [arg for name in notebooks or [] for arg in ("--only", name)]
    assert cli.main(["run", "--preset", "tiny", *only, *SMALL, *overrides]) == 0
    folder = Study.load("tiny", **parse_overrides(SMALL + overrides)).output_dir
    for notebook, sentences in said.items():
        text = printed(next(folder.glob(f"0?_{notebook}.ipynb")))
        for sentence in sentences:
            assert (sentence[1:] not in text) if sentence.startswith("!") else (sentence in text), (notebook, sentence)


def test_a_measure_of_runs_that_are_all_skipped_is_an_empty_labelled_table(tmp_path, tiny):
    torch.manual_seed(0)
    store.save_tensors(tmp_path / "z" / "far.safetensors", models.model_for(tiny, 7).state_dict())
    store.write_text(tmp_path / "z" / "far.yaml", yaml.safe_dump(
        dict(arch=tiny.arch, width=tiny.width, source=dict(dataset="imagenet", classes=7))))
    study = Study.load("tiny", zoo=str(tmp_path / "z"), sweeps={})
    rob, flat = tables.robustness_curves(study), tables.flatness(study)
    assert rob.empty and {"run", "method", "pretrain_seed", "measure", "strength"} <= set(rob.columns)
    assert flat.empty and {"run", "method", "measure", "value"} <= set(flat.columns)


def test_two_architectures_are_measured_and_compared(shared, monkeypatch):
    """After the two-architecture case: ConvNeXt's measures (no batchnorm) and the comparison in findings.md."""
    monkeypatch.setenv("MINIMA_OUTPUTS", str(shared / "outputs"))
    monkeypatch.setenv("MINIMA_DATA", str(shared / "data"))
    overrides, notebooks, _ = CASES["two methods, two architectures"]
    # the case above ran these notebooks already, and the runner skips a notebook that is up to date
    only = [a for n in notebooks for a in ("--only", n)]
    assert cli.main(["run", "--preset", "tiny", *only, *SMALL, *overrides]) == 0
    study = Study.load("tiny", **parse_overrides(SMALL + overrides))
    _, convnext = architectures.studies(study)
    assert set(tables.slices(convnext).bn_mode) == {"recompute"}  # no batchnorm: one mode, the judging one
    assert "bn" not in set(tables.distances(convnext).group)
    assert tables.flatness(convnext).value.notna().all()  # GELU and layer norm have forward-mode AD
    assert "convnext_tiny_small has no batchnorm" in printed(convnext.output_dir / "03_landscape.ipynb")
    findings = (study.output_dir / "findings.md").read_text()
    assert "Across resnet18_small, convnext_tiny_small:" in findings
    assert "Pooled with the architecture as a block:" in findings
