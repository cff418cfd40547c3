"""Every table the study produces: one function each, naming the config keys it depends on, cached in one place.

A notebook, the runner's scoreboard, a test and a user's script all read a table through the
function here; the first call computes it (training whatever runs it needs) and stores it as
`outputs/<study>/tables/<name>.csv` beside a `.key` file, the hash of the keys' values; a later
call with the same values reads the file. A key missed here would serve a stale table, so each
function lists its keys next to what it computes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from minima import finetuning, landscape, pretraining, robustness, sharpness, store, transfer, transfer_scores
from minima.config import Study

ROBUSTNESS_KEYS = robustness.KEYS
SLICE_KEYS = ("eval_subset_per_class", "slice_steps", "slice_margin", "bn_modes")
PLANE_KEYS = ("eval_subset_per_class", "plane_steps", "plane_margin", "bn_modes")
FLATNESS_KEYS = sharpness.KEYS
TRANSFERABILITY_KEYS = transfer_scores.KEYS


def path(study: Study, name: str) -> Path:
    """Where the study's table `name` is stored (CSV)."""
    return study.output_dir / "tables" / f"{name}.csv"


def is_cached(study: Study, name: str, keys: tuple[str, ...]) -> bool:
    """Whether the table `name` is stored for the current values of `keys`."""
    stamp = path(study, name).with_suffix(".key")
    return path(study, name).is_file() and stamp.is_file() and stamp.read_text() == study.fingerprint(*keys)


def cached(study: Study, name: str, keys: tuple[str, ...], compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """The study's table `name`: read when stored for the current values of `keys`, else computed and stored."""
    if is_cached(study, name, keys):
        return store.read_table(path(study, name))
    table = compute()
    store.write_table(path(study, name), table)
    store.write_text(path(study, name).with_suffix(".key"), study.fingerprint(*keys))
    return table


# ---------------------------------------------------------------- runs

def pretraining_keys(study: Study) -> tuple[str, ...]:
    return pretraining.pretraining_keys(study)


def finetuning_keys(study: Study) -> tuple[str, ...]:
    """What the finetuning runs depend on: their starts, the target task and the finetuning settings."""
    return (pretraining.pretraining_keys(study) + finetuning.TARGET_KEYS + finetuning.FINETUNE_KEYS
            + ("protocols", "finetune_seeds", "partial_frozen_stages", "finetune_threshold"))


def pretrained(study: Study) -> pd.DataFrame:
    """One row per pretraining run (method x seed) with its final train and test metrics."""
    return cached(study, "pretraining", pretraining_keys(study), lambda: pretraining.pretrain_all(study))


def pretraining_histories(study: Study) -> pd.DataFrame:
    """Per-epoch metrics of every pretraining run."""
    pretrained(study)
    return cached(study, "pretraining_histories", pretraining_keys(study),
                  lambda: pretraining.pretrain_histories(study))


def finetuned(study: Study) -> pd.DataFrame:
    """One row per finetuning run (protocol x start x finetuning seed) with its outcomes."""
    def compute() -> pd.DataFrame:
        pretrained(study)
        return finetuning.finetune_all(study)
    return cached(study, "finetuning", finetuning_keys(study), compute)


def finetuning_histories(study: Study) -> pd.DataFrame:
    """Per-epoch metrics of every finetuning run, with its labels."""
    finetuned(study)
    return cached(study, "finetuning_histories", finetuning_keys(study),
                  lambda: finetuning.finetune_tables(study, "history"))


def finetuning_distances(study: Study) -> pd.DataFrame:
    """Distance from the starting weights over every finetuning run's steps, with its labels."""
    finetuned(study)
    return cached(study, "finetuning_distances", finetuning_keys(study),
                  lambda: finetuning.finetune_tables(study, "distances"))


# ---------------------------------------------------------------- landscape

def distances(study: Study) -> pd.DataFrame:
    """Distances between every two pretraining runs' weights, per parameter group."""
    def compute() -> pd.DataFrame:
        m = landscape.load_minima(study)
        return landscape.distances(m.states, m.model)
    return cached(study, "landscape_distances", pretraining_keys(study), compute)


def layer_distances(study: Study) -> pd.DataFrame:
    """Per-layer distances between every two pretraining runs."""
    def compute() -> pd.DataFrame:
        m = landscape.load_minima(study)
        return landscape.layer_distances(m.states, m.model)
    return cached(study, "landscape_layer_distances", pretraining_keys(study), compute)


def slices(study: Study) -> pd.DataFrame:
    """Loss and accuracy along the line between pairs of minima, per batchnorm mode."""
    return cached(study, "landscape_slices", pretraining_keys(study) + SLICE_KEYS,
                  lambda: landscape.study_slices(study))


def barriers(study: Study) -> pd.DataFrame:
    """The loss barrier of every slice."""
    return cached(study, "landscape_barriers", pretraining_keys(study) + SLICE_KEYS,
                  lambda: landscape.barriers(slices(study)))


def plane(study: Study) -> pd.DataFrame:
    """Loss and accuracy on the plane through three minima."""
    return cached(study, "landscape_plane", pretraining_keys(study) + PLANE_KEYS,
                  lambda: landscape.study_plane(study))


# ---------------------------------------------------------------- robustness

def robustness_curves(study: Study) -> pd.DataFrame:
    """Every robustness measure of every pretraining run at every strength and repeat, train and test subsets."""
    return cached(study, "robustness", pretraining_keys(study) + ROBUSTNESS_KEYS,
                  lambda: robustness.evaluate_study(study))


def robustness_summary(study: Study) -> pd.DataFrame:
    """One-number summaries (normalised area, half-strength) of every robustness curve."""
    return cached(study, "robustness_summary", pretraining_keys(study) + ROBUSTNESS_KEYS,
                  lambda: robustness.summaries(robustness_curves(study)))


def flatness(study: Study) -> pd.DataFrame:
    """Every flatness measure (Hessian eigenvalues and trace, adaptive sharpness) of every pretraining run."""
    return cached(study, "flatness", pretraining_keys(study) + FLATNESS_KEYS, lambda: sharpness.evaluate_study(study))


def transferability(study: Study) -> pd.DataFrame:
    """The transferability scores (LogME, LEEP, NCE, H-score, SFDA) of every pretraining run on the target task."""
    return cached(study, "transferability", pretraining_keys(study) + TRANSFERABILITY_KEYS,
                  lambda: transfer_scores.evaluate_study(study))


def finetuned_robustness(study: Study) -> pd.DataFrame:
    """Robustness summaries of the finetuned models on the target test subset."""
    return cached(study, "finetuned_robustness", finetuning_keys(study) + ROBUSTNESS_KEYS,
                  lambda: transfer.finetuned_robustness(study))


def robustness_before_and_after(study: Study) -> pd.DataFrame:
    """Per pretraining run and measure: the normalised area before and after finetuning, side by side."""
    before = robustness_summary(study)
    return transfer.before_and_after(before, finetuned_robustness(study))
