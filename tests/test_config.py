import os
import subprocess
import sys

import pytest

from minima.config import ConfigError, Study, parse_overrides, preset_names


@pytest.mark.parametrize("preset", ["tiny", "default", "paper"])
def test_every_preset_is_valid(preset):
    study = Study.load(preset)
    assert study.name == preset and study.preset == preset


@pytest.mark.parametrize("override, words", [
    ({"pretrain_epoch": 3}, ["pretrain_epoch", "valid keys"]),
    ({"pretrain_epochs": "three"}, ["pretrain_epochs", "'three'", "integer"]),
    ({"pretrain_epochs": 0}, ["pretrain_epochs", "0", "> 0"]),
    ({"lr": -1.0}, ["lr", "-1.0", "> 0"]),
    ({"methods": ["adam", "sgd"]}, ["methods", "'sgd'", "noisy_adam"]),
    ({"source": "mnist"}, ["source", "mnist", "synthetic"]),
    ({"allow_download": "yes"}, ["allow_download", "true or false"]),
    ({"pretrain_seeds": [0, -1]}, ["pretrain_seeds", "integers >= 0"]),
])
def test_bad_override_names_key_value_and_what_is_valid(override, words):
    with pytest.raises(ConfigError) as err:
        Study.load("tiny", **override)
    for word in words:
        assert word in str(err.value)


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


def test_cached_table_recomputes_only_when_its_keys_change():
    import pandas as pd

    calls = []

    def compute():
        calls.append(1)
        return pd.DataFrame({"a": [1, 2]})

    study = Study.load("tiny")
    study.cached("t", compute, keys=("lr",))
    study.cached("t", compute, keys=("lr",))
    assert len(calls) == 1
    Study.load("tiny", name="tiny", lr=0.5).cached("t", compute, keys=("lr",))
    assert len(calls) == 2


@pytest.mark.parametrize("args, message", [
    (["run", "--preset", "nosuch"], "unknown preset 'nosuch'"),
    (["run", "--preset", "tiny", "lr=-3"], "lr=-3.0 is out of range"),
    (["run", "--preset", "tiny", "nokey=1"], "unknown key 'nokey'"),
    (["run", "--preset", "tiny", "--only", "99_nothing"], "names no notebook"),
])
def test_cli_rejects_bad_input_at_once_and_touches_no_outputs(args, message, isolated_dirs):
    result = subprocess.run([sys.executable, "-m", "minima", *args], capture_output=True, text=True,
                            env=dict(os.environ), timeout=120)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (isolated_dirs / "outputs").exists()
