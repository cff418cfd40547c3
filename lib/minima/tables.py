"""Every table the study produces: one function each, naming the config keys it depends on, cached in one place.

A notebook, the runner's scoreboard, a test and a user's script all read a table through the
function here; the first call computes it (training whatever runs it needs) and stores it as
`outputs/<study>/tables/<name>.csv` beside a `.key` file, the hash of the keys' values; a later
call with the same values reads the file. A key missed here would serve a stale table, so each
function lists its keys next to what it computes, from module-level `*_KEYS` tuples (here and in the
measures' modules): tests/test_cache_keys.py checks that every config key is in one of them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from minima import curves, finetuning, landscape, pretraining, robustness, sharpness, store, transfer, transfer_scores
from minima import forgetting as forgetting_measure
from minima import reliability as retest
from minima.config import Study

ROBUSTNESS_KEYS = robustness.KEYS
SLICE_KEYS = ("eval_subset_per_class", "slice_steps", "slice_margin", "bn_modes")
PLANE_KEYS = ("eval_subset_per_class", "plane_steps", "plane_margin", "bn_modes")
CURVE_KEYS = curves.KEYS
FLATNESS_KEYS = sharpness.KEYS
TRANSFERABILITY_KEYS = transfer_scores.KEYS
FORGETTING_KEYS = forgetting_measure.KEYS
FINETUNED_KEYS = ("protocols", "finetune_seeds", "partial_frozen_stages", "finetune_threshold")  # which runs, read how
CURVE_BARRIER_KEYS = ("curve_threshold",)


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
            + FINETUNED_KEYS)


def pretrained(study: Study) -> pd.DataFrame:
    """One row per pretraining run (method x seed) with its final train and test metrics."""
    return cached(study, "pretraining", pretraining_keys(study), lambda: pretraining.pretrain_all(study))


def pretraining_histories(study: Study) -> pd.DataFrame:
    """Per-epoch metrics of every pretraining run."""
    pretrained(study)
    return cached(study, "pretraining_histories", pretraining_keys(study),
                  lambda: pretraining.pretrain_histories(study))


def finetuned(study: Study) -> pd.DataFrame:
    """One row per finetuning run (protocol x start x finetuning seed) with its outcomes, the forgetting of the
    source task among them (`forgetting`; NaN for the from-scratch baseline, which has no source head)."""
    def compute() -> pd.DataFrame:
        pretrained(study)
        lost = forgetting(study)[["run", *(f"forgetting_{m}" for m in forgetting_measure.MEASURES)]]
        return finetuning.finetune_all(study).merge(lost, on="run", how="left")
    return cached(study, "finetuning", finetuning_keys(study) + FORGETTING_KEYS, compute)


def forgetting(study: Study) -> pd.DataFrame:
    """Source test accuracy before and after finetuning, with the source head and with a refitted source probe,
    and the forgetting (before minus after) of every finetuning run from a pretraining run."""
    def compute() -> pd.DataFrame:
        pretrained(study)
        return forgetting_measure.evaluate_study(study)
    return cached(study, "forgetting", finetuning_keys(study) + FORGETTING_KEYS, compute)


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
    """Distances between every two pretraining runs' weights of one architecture, per parameter group."""
    return cached(study, "landscape_distances", pretraining_keys(study),
                  lambda: landscape.study_distances(study, landscape.distances))


def layer_distances(study: Study) -> pd.DataFrame:
    """Per-layer distances between every two pretraining runs of one architecture."""
    return cached(study, "landscape_layer_distances", pretraining_keys(study),
                  lambda: landscape.study_distances(study, landscape.layer_distances))


def slices(study: Study) -> pd.DataFrame:
    """Loss and accuracy along the line between pairs of minima, per batchnorm mode."""
    return cached(study, "landscape_slices", pretraining_keys(study) + SLICE_KEYS,
                  lambda: landscape.study_slices(study))


def barriers(study: Study) -> pd.DataFrame:
    """The loss barrier of every slice."""
    return cached(study, "landscape_barriers", pretraining_keys(study) + SLICE_KEYS,
                  lambda: landscape.barriers(slices(study)))


def curve_paths(study: Study) -> pd.DataFrame:
    """Loss and accuracy along the line and the trained curves (or the report's path) between pairs of minima,
    batchnorm recomputed at every point, with where each point lies in the plane of the pair."""
    return cached(study, "landscape_curves", pretraining_keys(study) + CURVE_KEYS, lambda: curves.study_curves(study))


def curve_barriers(study: Study) -> pd.DataFrame:
    """The barrier of every path of `curve_paths` (the line's definition) and whether it connects its pair."""
    return cached(study, "landscape_curve_barriers", pretraining_keys(study) + CURVE_KEYS + CURVE_BARRIER_KEYS,
                  lambda: curves.barriers(curve_paths(study), study.curve_threshold))


def plane(study: Study) -> pd.DataFrame:
    """Loss and accuracy on the plane through three minima."""
    return cached(study, "landscape_plane", pretraining_keys(study) + PLANE_KEYS,
                  lambda: landscape.study_plane(study))


# ---------------------------------------------------------------- robustness

def robustness_curves(study: Study) -> pd.DataFrame:
    """Every robustness measure of every pretraining run at every strength and repeat, train and test subsets."""
    return cached(study, "robustness", pretraining_keys(study) + ROBUSTNESS_KEYS,
                  lambda: robustness.evaluate_study(study))


def robustness_replicates(study: Study) -> pd.DataFrame:
    """One-number summaries (normalised area, half-strength) of every robustness curve, per replicate."""
    return cached(study, "robustness_replicates", pretraining_keys(study) + ROBUSTNESS_KEYS,
                  lambda: robustness.summaries(robustness_curves(study)))


def robustness_summary(study: Study) -> pd.DataFrame:
    """One-number summaries of every run's robustness curves per split and measure: the mean of its replicates."""
    return cached(study, "robustness_summary", pretraining_keys(study) + ROBUSTNESS_KEYS,
                  lambda: robustness.run_summaries(robustness_replicates(study)))


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


# ---------------------------------------------------------------- reliability of the run-level properties

RUN = ["run", "method", "pretrain_seed", "replicate"]


def replicate_properties(study: Study, composite: Sequence[str] = ()) -> pd.DataFrame:
    """One row per pretraining run and replicate: every run-level property that is measured in replicates, on the
    scale the study averages it on: the flatness measures (`sharpness.LOG` as logs, NaN where not above 0), the
    test-set robustness areas (`<measure>_auc`) and, when `composite` names measures, `robustness`, the mean of
    their areas."""
    flat = sharpness.replicate_measures(flatness(study)).set_index(RUN)
    flat[list(sharpness.LOG)] = np.log(flat[list(sharpness.LOG)].where(flat[list(sharpness.LOG)] > 0))
    areas = robustness_replicates(study)
    areas = areas[areas.split == "test"].pivot(index=RUN, columns="measure", values="auc")
    areas.columns = [f"{m}_auc" for m in areas.columns]
    if composite:
        areas["robustness"] = areas[[f"{m}_auc" for m in composite]].mean(axis=1)
    return flat.join(areas, how="outer").reset_index()


def reliability(study: Study, composite: Sequence[str] = ()) -> pd.DataFrame:
    """Test-retest reliability of every property of `replicate_properties` (`minima.reliability`): per property,
    ICC(1) of one replicate with its interval, the reliability of the property the study uses (the mean of
    the replicates) with its interval, the share of its between-run variance that is measurement noise, the run
    and noise standard deviations, the runs and replicates, and the scale it is computed on (log for
    `sharpness.LOG`, else raw). A property no run has (no Hessian for an architecture without forward-mode AD)
    is left out, and so is one fewer than two runs have on every replicate (a study of one run has none)."""
    per = replicate_properties(study, composite)
    rows = [dict(property=p, scale="log" if p in sharpness.LOG else "raw", **retest.reliability(per, p))
            for p in per.columns.drop(RUN) if _complete_runs(per, p) >= 2]
    return pd.DataFrame(rows, columns=RELIABILITY)


RELIABILITY = ["property", "scale", "icc", "icc_low", "icc_high", "f", "df_between", "df_within", "run_sd", "noise_sd",
               "reliability", "reliability_low", "reliability_high", "noise_share", "runs", "replicates"]


def _complete_runs(per: pd.DataFrame, column: str) -> int:
    """How many runs have `column` on every replicate: an ICC needs two."""
    wide = per.pivot(index="run", columns="replicate", values=column)
    return int(wide.notna().all(axis=1).sum())
