"""The zoo arm: checkpoints a user brings become runs, measured, sliced and finetuned like the study's own."""
import pickle

import pandas as pd
import pytest
import torch
import yaml
from pandas.testing import assert_frame_equal

from minima import __main__ as cli
from minima import archs, knob_sweeps, landscape, models, pretraining, protocols, store, tables, zoo, zoo_export
from minima.config import ConfigError, Study

SMALL = dict(methods=["adam", "noisy_adam"], pretrain_seeds=[0], finetune_seeds=[0])


def _sidecar(folder, name, **labels):
    store.write_text(folder / f"{name}.yaml", yaml.safe_dump(labels))


def _checkpoint(folder, name, model, **labels):
    store.save_tensors(folder / f"{name}.safetensors", model.state_dict())
    _sidecar(folder, name, **labels)


def _by_name(frame: pd.DataFrame, study: Study) -> pd.DataFrame:
    """A table's rows keyed by the zoo checkpoint (or own run) they belong to, sorted, run names dropped."""
    names = {pretraining.pretrain_run(study, *key).name: f"{key[0]}-{key[1]}" for key in pretraining.keys(study)}
    out = frame.assign(run=frame.run.map(names)) if "run" in frame else frame
    return out.sort_values(list(out.columns[:4])).reset_index(drop=True)


def test_a_study_exported_as_a_zoo_and_read_back_gives_the_same_tables(tmp_path):
    own = Study.load("tiny", sweeps={}, **SMALL)
    zoo_export.export_study(own, tmp_path / "zoo")
    back = Study.load("tiny", zoo=str(tmp_path / "zoo"), sweeps={}, **SMALL)
    assert pretraining.keys(back) == pretraining.keys(own) == [("adam", 0), ("noisy_adam", 0)]
    for table in (tables.robustness_summary, tables.transferability, tables.flatness):
        a, b = table(own), table(back)
        cols = [c for c in a.columns if c not in ("run", "seconds")]
        assert_frame_equal(_by_name(a, own)[cols], _by_name(b, back)[cols])  # same weights, data and seeds: exact
    fine = ["method", "pretrain_seed", "finetune_seed", "protocol", "test_accuracy", "distance_all"]
    assert_frame_equal(tables.finetuned(own)[fine], tables.finetuned(back)[fine])
    # the source accuracy is measured again on import: the weights are the same, the model's memory format
    # may differ (channels_last while training), so sums can round differently in the last bits
    acc = ["method", "pretrain_seed", "train_accuracy", "test_accuracy", "test_loss"]
    assert_frame_equal(tables.pretrained(own)[acc], tables.pretrained(back)[acc], rtol=1e-5)


def test_a_knob_sweep_exported_as_a_zoo_is_its_one_knob_arm(tmp_path):
    own = Study.load("tiny", methods=["noisy_adam"], pretrain_seeds=[0],
                     sweeps={"noisy_adam": {"noise_sigma": [0.0, 0.1, 0.2]}})
    written = zoo_export.export_study(own, tmp_path / "zoo")
    assert len(written) == 3, "the sweep value 0.1 is the method's own run: written once"
    back = Study.load("tiny", zoo=str(tmp_path / "zoo"), sweeps={}, methods=["noisy_adam"])
    arm = knob_sweeps.table(back, tables.pretrained)
    theirs = knob_sweeps.table(own, tables.pretrained)
    assert sorted(arm.knob_value) == sorted(theirs.knob_value) == [0.0, 0.1, 0.2]
    assert sorted(arm.test_accuracy.round(6)) == sorted(theirs.test_accuracy.round(6))


@pytest.fixture
def mixed_zoo(tmp_path, tiny):
    """Two resnet18_small widths (8, and 16) and a torchvision MobileNetV3, all on the tiny source task."""
    folder = tmp_path / "mixed"
    source = zoo.study_source(tiny)
    for name, width, seed in (("narrow-a", 8, 0), ("narrow-b", 8, 1), ("wide", 16, 0)):
        torch.manual_seed(seed)
        _checkpoint(folder, name, archs.build_model("resnet18_small", 5, width), arch="resnet18_small",
                    width=width, source=source, group=name.split("-")[0])
    torch.manual_seed(0)
    torch.save(archs.build_model("mobilenet_v3_small", 5).state_dict(), folder / "mobile.pt")
    _sidecar(folder, "mobile", arch="mobilenet_v3_small", source=source,
             preprocessing=dict(size=32, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]))
    return folder


def test_a_mixed_zoo_slices_only_within_one_architecture(mixed_zoo):
    study = Study.load("tiny", zoo=str(mixed_zoo), sweeps={})
    assert pretraining.keys(study) == [("mobile", 0), ("narrow", 0), ("narrow", 1), ("wide", 0)]
    assert landscape.slice_pairs(study) == [(("narrow", 0), ("narrow", 1))]
    assert landscape.plane_keys(study) == [], "no architecture has three methods"
    dist = tables.distances(study)
    assert set(zip(dist.method_a, dist.method_b)) == {("narrow", "narrow"), ("wide", "wide"), ("mobile", "mobile")}


def test_a_mixed_zoo_finetunes_every_checkpoint_with_its_own_head_swapped(mixed_zoo):
    study = Study.load("tiny", zoo=str(mixed_zoo), sweeps={})
    final = tables.finetuned(study)
    assert sorted(set(final.method)) == ["mobile", "narrow", "scratch", "wide"]
    assert final.distance_all.gt(0).all() and final.test_accuracy.between(0, 1).all()
    with pytest.raises(ValueError, match="'partial' freezes ResNet stages.*mobile 0 \\(mobilenet_v3_small\\)"):
        tables.finetuned(Study.load("tiny", zoo=str(mixed_zoo), sweeps={}, protocols=["partial"]))


def test_preprocessing_resizes_and_normalises_inside_the_model_without_changing_its_keys(tiny):
    torch.manual_seed(0)
    bare = archs.build_model("mobilenet_v3_small", 5)
    wrapped = models.preprocess(archs.build_model("mobilenet_v3_small", 5), 32, [0.5] * 3, [0.25] * 3)
    wrapped.load_state_dict(bare.state_dict())
    x = torch.rand(2, 3, 16, 16)
    expected = (torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False) - 0.5) / 0.25
    with torch.no_grad():
        assert torch.equal(wrapped.eval()(x), bare.eval()(expected))
    assert wrapped.state_dict().keys() == bare.state_dict().keys()


def test_the_head_is_found_and_swapped_in_any_architecture():
    for arch, head in (("resnet18_small", "fc"), ("mobilenet_v3_small", "classifier.3"),
                       ("efficientnet_b0", "classifier.1")):
        model = models.replace_head(archs.build_model(arch, 5, 8), 3)
        assert models.head_name(model) == head and models.head(model).out_features == 3, arch
        protocols.apply_protocol(model, "linear_probe")
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable == [f"{head}.weight", f"{head}.bias"], arch


def test_a_foreign_source_task_skips_the_source_measures_with_one_line(tmp_path, tiny, capsys):
    torch.manual_seed(0)
    _checkpoint(tmp_path / "z", "imagenet-like", archs.build_model("resnet18_small", 7, 8), arch="resnet18_small",
                width=8, source=dict(dataset="imagenet", classes=7))
    torch.manual_seed(1)
    _checkpoint(tmp_path / "z", "own", archs.build_model("resnet18_small", 5, 8), arch="resnet18_small", width=8,
                source=zoo.study_source(tiny))
    study = Study.load("tiny", zoo=str(tmp_path / "z"), sweeps={})
    rob = tables.robustness_curves(study)
    assert set(rob.method) == {"own"}
    assert "robustness of imagenet-like 0 skipped: imagenet-like was trained on" in capsys.readouterr().out
    assert tables.pretrained(study).set_index("method").test_accuracy.isna().to_dict() == {
        "imagenet-like": True, "own": False}
    assert set(tables.transferability(study).method) == {"imagenet-like", "own"}, "scores need no source task"


def test_bad_zoo_entries_fail_at_once_with_one_line(tmp_path, tiny, monkeypatch):
    folder = tmp_path / "bad"
    folder.mkdir()
    study = Study.load("tiny", zoo=str(folder), sweeps={})
    with pytest.raises(zoo.ZooError, match="holds no <name>.yaml sidecar"):
        zoo.entries(study)
    _sidecar(folder, "a", arch="resnet18_small", colour="red")
    with pytest.raises(zoo.ZooError, match="unknown key 'colour'; valid keys: arch"):
        zoo.entries(study)
    _sidecar(folder, "a", arch="alexnet_small")
    with pytest.raises(zoo.ZooError, match="arch=.alexnet_small. is not known; valid: resnet18_small, efficientnet_b0_small"):
        zoo.entries(study)
    _sidecar(folder, "a", arch="resnet18_small")
    with pytest.raises(zoo.ZooError, match="no a.safetensors or a.pt beside it"):
        zoo.entries(study)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    (folder / "a.yaml").unlink()
    _sidecar(folder, "tv", arch="resnet18", weights="ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(zoo.ZooError, match="ResNet18_Weights.IMAGENET1K_V1 is not on disk at .*torch-home.*nothing "
                                           "downloads"):
        zoo.entries(study)
    (folder / "tv.yaml").unlink()

    class Code:
        def __reduce__(self):
            return (print, ("this ran",))

    (folder / "p.pt").write_bytes(pickle.dumps({"w": Code()}))
    _sidecar(folder, "p", arch="resnet18_small", width=8)
    with pytest.raises(zoo.ZooError, match="not a weights-only state dict"):
        zoo.entries(study)


def test_a_missing_zoo_folder_or_a_zoo_with_sweeps_is_refused_by_the_config(tmp_path):
    with pytest.raises(ConfigError, match="zoo='nowhere': no folder"):
        Study.load("tiny", zoo="nowhere")
    with pytest.raises(ConfigError, match="a zoo's one-knob arm is its checkpoints' numbers"):
        Study.load("tiny", zoo=str(tmp_path))


def test_export_zoo_on_the_command_line_writes_a_zoo_the_study_reads(tmp_path, capsys):
    assert cli.main(["export-zoo", "--preset", "tiny", "--into", str(tmp_path / "z"), "methods=[adam]",
                     "sweeps={}"]) == 0
    assert "adam-seed0: resnet18_small, group adam" in capsys.readouterr().out
    study = Study.load("tiny", zoo=str(tmp_path / "z"), sweeps={})
    assert pretraining.keys(study) == [("adam", 0)]


@pytest.mark.heavy
def test_a_mixed_zoo_runs_through_every_notebook(tmp_path, mixed_zoo):
    """Three methods of the study exported at width 8 with noisy Adam's noise sweep (so the plane has its three
    minima and the zoo a one-knob arm), a width-16 resnet18_small and a MobileNetV3: every notebook, headless,
    on the tiny preset."""
    # noise 0 would make noisy Adam's first checkpoint Adam's, to the bit: no plane through the two
    zoo_export.export_study(Study.load("tiny", methods=["adam", "noisy_adam", "swa"],
                                       sweeps={"noisy_adam": {"noise_sigma": [0.05, 0.1, 0.2]}}), mixed_zoo)
    for stale in ("narrow-a", "narrow-b"):
        for suffix in (".yaml", ".safetensors"):
            (mixed_zoo / f"{stale}{suffix}").unlink()
    # one finetuning seed and one repeat keep it short
    assert cli.main(["run", "--preset", "tiny", f"zoo={mixed_zoo}", "sweeps={}", "finetune_seeds=[0]",
                     "robustness_repeats=1", "energy_repeats=1", "curve_kinds=[bezier]"]) == 0
