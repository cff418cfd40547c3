import os
import subprocess
import sys

import pytest

from minima import config
from minima.config import ConfigError, Study, parse_overrides, preset_names


@pytest.mark.parametrize("preset", ["tiny", "default", "sweep", "paper"])
def test_every_preset_is_valid(preset):
    study = Study.load(preset)
    assert study.name == preset and study.preset == preset


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="nosuch.*tiny"):
        Study.load("nosuch")
    assert {"tiny", "default", "paper"} <= set(preset_names())


def test_overrides_give_the_study_its_own_folder():
    base, variant = Study.load("tiny"), Study.load("tiny", pretrain_epochs=3)
    assert variant.pretrain_epochs == 3
    assert variant.output_dir != base.output_dir
    assert Study.load("tiny", pretrain_epochs=3).name == variant.name
    assert Study.load("tiny", name="mine").name == "mine"


def test_overrides_parse_as_yaml():
    assert parse_overrides(["lr=1e-3", "methods=[adam, swa]", "allow_download=true"]) == \
        {"lr": 1e-3, "methods": ["adam", "swa"], "allow_download": True}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr"])


def test_fingerprint_depends_only_on_the_named_keys():
    a, b = Study.load("tiny"), Study.load("tiny", lr=0.01)
    assert a.fingerprint("image_size", "seed") == b.fingerprint("image_size", "seed")
    assert a.fingerprint("lr") != b.fingerprint("lr")


@pytest.mark.parametrize("args, message", [
    (["run", "--preset", "tiny", "nokey=1"], "unknown key 'nokey'"),
    (["run", "--preset", "tiny", "--only", "99_nothing"], "names no notebook"),
])
def test_cli_rejects_bad_input_at_once_and_touches_no_outputs(args, message, isolated_dirs):
    result = subprocess.run([sys.executable, "-m", "minima", *args], capture_output=True, text=True,
                            env=dict(os.environ), timeout=120)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (isolated_dirs / "outputs").exists()


# (preset, overrides, words): the first override's key is the one under test; the error names it
BAD_INPUTS = [
    ("nosuch", [], ["unknown preset 'nosuch'", "tiny"]),
    ("tiny", ["preset=paper"], ["preset=paper", "--preset"]),
    ("tiny", ["name=my/study"], ["name='my/study'", "letters, digits"]),
    ("tiny", ["seed=-1"], ["seed=-1", ">= 0"]),
    ("tiny", ["device=tpu"], ["device='tpu'", "cuda"]),
    ("tiny", ["executor=ray"], ["executor='ray'", "dask"]),
    ("tiny", ["scheduler=nowhere"], ["scheduler='nowhere'", "tcp://"]),
    ("tiny", ["scheduler=slurm"], ["scheduler='slurm'", "executor=dask"]),
    ("tiny", ["workers=0"], ["workers=0", "> 0"]),
    ("tiny", ["threads=-1"], ["threads=-1", ">= 0"]),
    ("tiny", ["lease_timeout=0"], ["lease_timeout=0.0", "> 0"]),
    ("tiny", ["compile=maybe"], ["compile='maybe'", "true or false"]),
    ("tiny", ["source=emnist"], ["source='emnist'", "synthetic", "fashion_mnist"]),
    ("tiny", ["target=imagenet"], ["target='imagenet'", "cifar100"]),
    ("tiny", ["source_labels=[0, 12]", "source=mnist", "source_classes=2"], ["source_labels: class 12", "0 to 9"]),
    ("tiny", ["source_labels=[1, 1]", "source=mnist", "source_classes=2"], ["source_labels=[1, 1] repeats 1", "unique"]),
    ("tiny", ["source_labels=[-1]"], ["source_labels=[-1]", "class indices >= 0"]),
    ("tiny", ["source_labels=[0, 1]"], ["source_labels=[0, 1]", "torchvision", "source_labels=[]"]),
    ("tiny", ["source_classes=3", "source=kmnist", "source_labels=[0, 1]"],
     ["source_classes=3", "2 classes", "source_classes=2"]),
    ("tiny", ["target_labels=[3, 4]", "source=mnist", "target=mnist", "source_labels=[0, 1, 2, 3, 4]"],
     ["both mnist", "share class 3", "disjoint"]),
    ("tiny", ["target_test_per_class=900", "target=mnist"], ["target_test_per_class=900", "MNIST", "at most 892"]),
    ("tiny", ["image_size=4"], ["image_size=4", "[8, 512]"]),
    ("tiny", ["source_classes=1"], ["source_classes=1", "[2, 1000]"]),
    ("tiny", ["source_classes=250"], ["source_classes=250", "at most 246"]),
    ("tiny", ["source_train_per_class=3"], ["eval_subset_per_class=4", "source_train_per_class=3", "at most 3"]),
    ("tiny", ["source_test_per_class=0"], ["source_test_per_class=0", "> 0"]),
    ("tiny", ["target_train_per_class=6000", "target=cifar10"], ["target_train_per_class=6000", "at most 5000"]),
    ("tiny", ["target_test_per_class=1001", "target=cifar10"], ["target_test_per_class=1001", "at most 1000"]),
    ("tiny", ["imagenet_dir=3"], ["imagenet_dir=3", "a string"]),
    ("tiny", ["datasets_dir="], ["datasets_dir=''", "torchvision's layout"]),
    ("tiny", ["cifar_dir=x"], ["cifar_dir was renamed datasets_dir", "torchvision's layout"]),
    ("tiny", ["allow_download=3"], ["allow_download=3", "true or false"]),
    ("tiny", ["arch=vgg"], ["arch='vgg'", "resnet18_small"]),
    ("tiny", ["width=4"], ["width=4", "[8, 256]"]),
    ("tiny", ["arch=convnext_tiny"], ["arch='convnext_tiny'", "16 px", "convnext_tiny_small"]),
    ("tiny", ["compare_archs=[resnet18_small]"], ["compare_archs=['resnet18_small']", "repeats arch"]),
    ("tiny", ["methods=[adam, sgd]"], ["methods='sgd'", "noisy_adam"]),
    ("tiny", ["methods=[adam, swa, adam]"], ["methods=['adam', 'swa', 'adam'] repeats 'adam'", "unique"]),
    ("tiny", ["pretrain_seeds=[0, 0]"], ["pretrain_seeds=[0, 0] repeats 0; every seed must be unique"]),
    ("tiny", ["pretrain_seeds=[0, -1]"], ["pretrain_seeds=[0, -1]", "integers >= 0"]),
    ("tiny", ["pretrain_epochs=three"], ["pretrain_epochs='three'", "an integer"]),
    ("tiny", ["batch_size=0"], ["batch_size=0", "> 0"]),
    ("tiny", ["lr=-1"], ["lr=-1.0", "> 0"]),
    ("tiny", ["weight_decay=-0.1"], ["weight_decay=-0.1", ">= 0"]),
    ("tiny", ["lr_schedule=step"], ["lr_schedule='step'", "cosine"]),
    ("tiny", ["noise_sigma=0"], ["noise_sigma=0.0", "noisy_adam", "> 0"]),
    ("tiny", ["sweeps={noisy_adam: {noise_sigma: [0.1, -1, 0.2]}}"],
     ["sweeps.noisy_adam.noise_sigma", "noise_sigma=-1.0 is out of range"]),
    ("tiny", ["sweeps={swa: {swa_every: [1, 3, 99]}}"], ["sweeps.swa.swa_every: value 99", "no weights"]),
    ("tiny", ["primary=[sam_flatter, nosuch]"], ["primary=['sam_flatter', 'nosuch']", "sam_flatter, swa_lower_trace"]),
    ("tiny", ["swa_threshold=1.5"], ["swa_threshold=1.5", "(0, 1]"]),
    ("tiny", ["sam_rho=0"], ["sam_rho=0.0", "> 0"]),
    ("tiny", ["sam_adaptive=2"], ["sam_adaptive=2", "wrong type", "true or false"]),
    ("tiny", ["adv_eps=1.5"], ["adv_eps=1.5", "(0, 1]"]),
    ("tiny", ["adv_steps=0"], ["adv_steps=0", ">= 1"]),
    ("tiny", ["entropy_gamma=0"], ["entropy_gamma=0.0", "> 0"]),
    ("tiny", ["entropy_steps=0"], ["entropy_steps=0", ">= 1"]),
    ("tiny", ["entropy_noise=-1"], ["entropy_noise=-1.0", ">= 0"]),
    ("tiny", ["swa_lr=0"], ["swa_lr=0.0", "> 0"]),
    ("tiny", ["swa_anneal_epochs=2"], ["swa_epochs=2", "swa_anneal_epochs=2", "no weights"]),
    ("tiny", ["swa_epochs=1"], ["swa_epochs=1", "swa_anneal_epochs=1"]),
    ("tiny", ["swa_every=7"], ["swa_every=7", "no weights", "steps 4 to 6"]),
    ("tiny", ["eval_subset_per_class=7"], ["eval_subset_per_class=7", "source_test_per_class=6", "at most 6"]),
    ("tiny", ["eval_subset_per_class=0"], ["eval_subset_per_class=0", "> 0"]),
    ("tiny", ["slice_steps=2"], ["slice_steps=2", ">= 3"]),
    ("tiny", ["slice_margin=2"], ["slice_margin=2.0", "[0, 1]"]),
    ("tiny", ["bn_modes=[keep, keep]"], ["bn_modes=['keep', 'keep'] repeats 'keep'", "unique"]),
    ("tiny", ["plane_steps=1"], ["plane_steps=1", ">= 3"]),
    ("tiny", ["plane_margin=-0.1"], ["plane_margin=-0.1", "[0, 1]"]),
    ("tiny", ["curve_kinds=[spline]"], ["curve_kinds='spline'", "bezier, chain, report"]),
    ("tiny", ["curve_kinds=[bezier, bezier]"], ["curve_kinds=['bezier', 'bezier'] repeats 'bezier'", "unique"]),
    ("tiny", ["curve_epochs=0"], ["curve_epochs=0", "> 0"]),
    ("tiny", ["curve_lr=0"], ["curve_lr=0.0", "> 0", "Adam"]),
    ("tiny", ["curve_points=2"], ["curve_points=2", ">= 3"]),
    ("tiny", ["curve_points=30", "curve_epochs=1"], ["curve_points=30 needs 28 optimisation steps",
                                                    "curve_epochs=1 gives 3", "at most 5"]),
    ("tiny", ["curve_distance_weight=0"], ["curve_distance_weight=0.0", "> 0", "nats per weight unit"]),
    ("tiny", ["curve_threshold=-1"], ["curve_threshold=-1.0", ">= 0", "nats"]),
    ("tiny", ["robustness_repeats=0"], ["robustness_repeats=0", "> 0"]),
    ("tiny", ["noise_sigmas=[0.1, 0.2]"], ["noise_sigmas=[0.1, 0.2] lacks 0", "clean reference"]),
    ("tiny", ["mask_sizes=[0, 100]"], ["mask_sizes=[0, 100]: 100 is larger than image_size=16"]),
    ("tiny", ["fgsm_eps=[0, 0.01, 0.01]"], ["fgsm_eps=[0, 0.01, 0.01] repeats 0.01", "unique"]),
    ("tiny", ["pgd_eps=[0.01, 0.03]"], ["pgd_eps=[0.01, 0.03] lacks 0", "clean reference"]),
    ("tiny", ["pgd_eps=[0]"], ["pgd_eps=[0] has no strength above 0"]),
    ("tiny", ["pgd_eps=[0, 0.01, 0.01]"], ["pgd_eps=[0, 0.01, 0.01] repeats 0.01", "unique"]),
    ("tiny", ["pgd_eps=[0, -0.01]"], ["pgd_eps=[0, -0.01]", "PGD's L-infinity radius"]),
    ("tiny", ["pgd_steps=0"], ["pgd_steps=0", "> 0"]),
    ("tiny", ["pgd_step_fraction=0"], ["pgd_step_fraction=0.0", "> 0"]),
    ("tiny", ["energy_sigmas=[0]"], ["energy_sigmas=[0] has no strength above 0"]),
    ("tiny", ["energy_repeats=0"], ["energy_repeats=0", "> 0"]),
    ("tiny", ["energy_include_bn=1"], ["energy_include_bn=1", "true or false"]),
    ("tiny", ["robustness_per_class=4"], ["robustness_per_class=4 x measure_replicates=2", "source_test_per_class=6",
                                          "at most 3"]),
    ("tiny", ["robustness_per_class=0"], ["robustness_per_class=0", "> 0"]),
    ("tiny", ["flatness_per_class=7"], ["flatness_per_class=7 x measure_replicates=2", "source_train_per_class=12",
                                        "at most 6"]),
    ("tiny", ["flatness_per_class=0"], ["flatness_per_class=0", "> 0"]),
    ("tiny", ["hessian_top_k=0"], ["hessian_top_k=0", "> 0", "Lanczos"]),
    ("tiny", ["hutchinson_probes=1"], ["hutchinson_probes=1", ">= 2"]),
    ("tiny", ["sharpness_rho_average=0"], ["sharpness_rho_average=0.0", "> 0", "relative to |w|"]),
    ("tiny", ["sharpness_rho_worst=-0.1"], ["sharpness_rho_worst=-0.1", "> 0", "L-infinity"]),
    ("tiny", ["sharpness_samples=1"], ["sharpness_samples=1", ">= 2"]),
    ("tiny", ["sharpness_steps=0.5"], ["sharpness_steps=0.5", "an integer"]),
    ("tiny", ["measure_replicates=1"], ["measure_replicates=1", ">= 2", "reliability"]),
    ("tiny", ["protocols=[full, full]"], ["protocols=['full', 'full'] repeats 'full'", "unique"]),
    ("tiny", ["finetune_seeds=[1, 1]"], ["finetune_seeds=[1, 1] repeats 1; every seed must be unique"]),
    ("tiny", ["finetune_epochs=0"], ["finetune_epochs=0", "> 0"]),
    ("tiny", ["finetune_batch_size=0"], ["finetune_batch_size=0", "> 0"]),
    ("tiny", ["finetune_lr=0"], ["finetune_lr=0.0", "> 0"]),
    ("tiny", ["finetune_weight_decay=-1"], ["finetune_weight_decay=-1.0", ">= 0"]),
    ("tiny", ["finetune_threshold=0"], ["finetune_threshold=0.0", "(0, 1]"]),
    ("tiny", ["partial_frozen_stages=0", "protocols=[partial]"], ["partial_frozen_stages=0", "repeat 'full'"]),
    ("tiny", ["partial_frozen_stages=5"], ["partial_frozen_stages=5", "[0, 4]"]),
    ("tiny", ["distance_every=11"], ["distance_every=11", "10 optimizer steps", "at most 10"]),
    ("tiny", ["probe_per_class=13"], ["probe_per_class=13", "source_train_per_class=12", "at most 12"]),
    ("tiny", ["probe_per_class=0"], ["probe_per_class=0", "> 0"]),
    ("tiny", ["zoo=no-such-zoo"], ["zoo='no-such-zoo'", "no folder", "'' for the study's own runs"]),
    ("tiny", ["zoo=/tmp"], ["zoo='/tmp' with sweeps=", "set sweeps={}"]),
    ("default", ["mask_sizes=[0, 17]"], ["mask_sizes=[0, 17]: 17 is larger than image_size=16"]),
    ("paper", ["pretrain_seeds=[1, 2, 1]"], ["pretrain_seeds=[1, 2, 1] repeats 1"]),
    # renamed keys (config.RENAMED): the old name is refused with the new one and what it sets
    ("tiny", ["eval_train_per_class=6"], ["eval_train_per_class was renamed eval_subset_per_class",
                                          "train and test subsets", "use eval_subset_per_class=6"]),
    ("tiny", ["claim_timeout=60"], ["claim_timeout was renamed lease_timeout", "run's lease is broken",
                                    "use lease_timeout=60"]),
]


def _key_under_test(preset: str, overrides: list[str]) -> str:
    return overrides[0].partition("=")[0] if overrides else "preset"


def test_the_bad_inputs_cover_every_config_key():
    covered = {_key_under_test(preset, overrides) for preset, overrides, _ in BAD_INPUTS}
    assert covered >= set(config.field_names()), sorted(set(config.field_names()) - covered)


@pytest.mark.parametrize("preset, overrides, words", BAD_INPUTS,
                         ids=[" ".join([p, *o]) for p, o, _ in BAD_INPUTS])
def test_the_cli_refuses_a_bad_input_at_once_in_one_line_and_writes_nothing(preset, overrides, words,
                                                                            isolated_dirs):
    # `--only` names no notebook: should a row turn out valid, it fails at once instead of running the study
    result = subprocess.run([sys.executable, "-m", "minima", "run", "--preset", preset, "--only", "99_none",
                             *overrides], capture_output=True, text=True, env=dict(os.environ), timeout=60)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and _key_under_test(preset, overrides) in lines[0]
    for word in words:
        assert word in lines[0]
    assert result.stdout == ""
    assert not (isolated_dirs / "outputs").exists() and not (isolated_dirs / "data").exists()


def test_a_renamed_key_in_a_preset_is_refused_with_its_new_name(tmp_path, monkeypatch, capsys):
    from minima.__main__ import main

    old = (config.PRESETS_DIR / "tiny.yaml").read_text()
    (tmp_path / "mine.yaml").write_text(old.replace("eval_subset_per_class:", "eval_train_per_class:"))
    monkeypatch.setattr(config, "PRESETS_DIR", tmp_path)
    assert main(["run", "--preset", "mine", "--only", "99_none"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: eval_train_per_class in preset 'mine' was renamed "
                                                   "eval_subset_per_class"), lines
    assert "use eval_subset_per_class=4" in lines[0]


def test_every_renamed_key_names_an_existing_key_and_is_not_one():
    assert set(config.RENAMED.values()) <= set(config.field_names())
    assert not set(config.RENAMED) & set(config.field_names())


def test_the_synthetic_vocabulary_size_is_the_one_data_draws_from():
    from minima import data

    assert config.SYNTHETIC_CLASSES == len(data.SHAPES) * len(data.TEXTURES) * len(data.COLOURS)
    assert config.TARGET_CLASSES == data.TARGET_CLASSES


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_a_gpu_device_must_exist_here_unless_remote_workers_run_the_study(device, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=f"device='{device}' is not available on this machine"):
        Study.load("tiny", device=device)
    assert Study.load("tiny", device=device, executor="dask", scheduler="tcp://gpu-node:8786").device == device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert Study.load("tiny", device=device).device == device


def test_swa_every_needs_a_multiple_after_the_anneal():
    # tiny: 60 images in batches of 16 -> 3 steps per epoch; 3 SWA epochs = 9 steps, the first 6 annealing
    swa = dict(swa_epochs=3, swa_anneal_epochs=2)
    assert [Study.load("tiny", swa_every=e, **swa).swa_every for e in (1, 3, 4, 7, 9)] == [1, 3, 4, 7, 9]
    for every in (5, 6, 10):
        with pytest.raises(ConfigError, match=f"swa_every={every}: .* steps 7 to 9 .* such as 3 or 9"):
            Study.load("tiny", swa_every=every, **swa)
