"""The one-knob arm: sweep points as runs, shared runs, and the statistics along a knob."""
import numpy as np
import pandas as pd
import pytest

from minima import conclusions, knob_sweeps, pretraining, prose, stats, tables
from minima.config import ConfigError, Study

SWEEP = {"noisy_adam": {"noise_sigma": [0.0, 0.1, 0.2]}}  # 0.1 is tiny's own noise_sigma


@pytest.fixture
def swept() -> Study:
    return Study.load("tiny", sweeps=SWEEP, pretrain_epochs=1)


def test_one_run_per_value_and_seed_with_the_value_in_every_table(swept):
    runs = knob_sweeps.pretrain_all(swept)
    assert sorted(zip(runs.knob_value, runs.pretrain_seed)) == [(v, s) for v in (0.0, 0.1, 0.2) for s in (0,)]
    assert runs.run.nunique() == 3
    for table in (tables.pretrained, tables.robustness_summary, tables.finetuned):
        stacked = knob_sweeps.table(swept, table)
        assert set(stacked.knob) == {"noise_sigma"} and set(stacked.knob_value) == {0.0, 0.1, 0.2}, table.__name__
        assert stacked.knob_value.notna().all()
        assert dict(zip(stacked.knob_value, stacked.knob_step)) == {0.0: 1, 0.1: 2, 0.2: 3}, table.__name__


def test_a_value_equal_to_the_study_s_own_shares_the_method_s_run(swept):
    main = pretraining.pretrain(swept, "noisy_adam", 0)
    at_own = knob_sweeps.point_study(swept, knob_sweeps.Point("noisy_adam", "noise_sigma", swept.noise_sigma))
    assert pretraining.pretrain_run(at_own, "noisy_adam", 0).path == main.path
    before = {p.name for p in main.path.parent.iterdir()}
    knob_sweeps.pretrain_all(swept)
    assert len({p.name for p in main.path.parent.iterdir()} - before) == 2  # only 0.0 and 0.2 were trained


def test_a_point_changes_one_knob_and_keeps_every_other_key(swept):
    point = knob_sweeps.point_study(swept, knob_sweeps.Point("noisy_adam", "noise_sigma", 0.2))
    assert point.noise_sigma == 0.2 and point.methods == ["noisy_adam"] and point.sweeps == {}
    assert point.fingerprint(*pretraining.DATA_KEYS, *pretraining.PRETRAIN_KEYS) == \
        swept.fingerprint(*pretraining.DATA_KEYS, *pretraining.PRETRAIN_KEYS)
    assert point.output_dir.parent.parent == swept.output_dir


@pytest.mark.parametrize("sweeps, says", [
    ({"nope": {"x": [1, 2, 3]}}, "unknown method 'nope'"),
    ({"noisy_adam": {"sam_rho": [0.1, 0.2, 0.3]}}, "'sam_rho' is not a knob of noisy_adam"),
    ({"noisy_adam": {"noise_sigma": [0.1, 0.2]}}, "at least 3 values"),
    ({"noisy_adam": {"noise_sigma": [0.1, 0.2, 0.1]}}, "repeats 0.1"),
    ({"noisy_adam": {"noise_sigma": [0.1, 0.2, -0.3]}}, "noise_sigma=-0.3 is out of range"),
    ({"sam": {"sam_adaptive": [0, 1, 2]}}, "not a number knob"),
    ({"noisy_adam": []}, "expected a mapping {knob: [values]}"),
])
def test_a_bad_sweep_is_refused_naming_the_entry(sweeps, says):
    with pytest.raises(ConfigError, match=f"sweeps.*{says}".replace("[", r"\[").replace("{", r"\{")):
        Study.load("tiny", sweeps=sweeps)


def test_noise_zero_is_the_sweep_s_zero_dose_but_not_a_second_adam():
    Study.load("tiny", sweeps={"noisy_adam": {"noise_sigma": [0.0, 0.1, 0.2]}})
    with pytest.raises(ConfigError, match="noise_sigma=0.0 makes noisy_adam train exactly like adam"):
        Study.load("tiny", noise_sigma=0.0)


# ---------------------------------------------------------------- statistics along a knob

def synthetic_runs(rng: np.random.Generator, outcome_follows: bool, seeds: int = 3,
                   values: tuple = (0.0, 0.05, 0.1, 0.15, 0.2)) -> pd.DataFrame:
    """Runs of two knobs: robustness rises with the first knob's value and falls with the second's; the
    outcome (test accuracy) is a monotone function of robustness alone, or pure noise."""
    rows = []
    for knob, sign in (("noise_sigma", 1), ("sam_rho", -1)):
        for seed in range(seeds):
            for v in values:
                robustness = 0.5 + sign * v + 0.01 * rng.standard_normal()
                accuracy = 0.6 + 0.5 * robustness ** 3 if outcome_follows else 0.8 + 0.05 * rng.standard_normal()
                rows.append(dict(method="m", knob=knob, knob_value=v, pretrain_seed=seed, robustness=robustness,
                                 test_accuracy=accuracy, epochs_to_threshold=np.nan, distance_all=np.nan,
                                 forgetting_head=np.nan, forgetting_probe=np.nan))
    return pd.DataFrame(rows)


def test_an_outcome_that_follows_the_knob_through_a_property_gives_tau_and_granulated_score_one():
    runs = synthetic_runs(np.random.default_rng(0), outcome_follows=True)
    corr = conclusions.knob_correlations(runs).set_index(["knob", "x", "y"])
    assert corr.loc[("noise_sigma", "knob_value", "test_accuracy"), "tau"] > 0.8
    assert corr.loc[("sam_rho", "knob_value", "test_accuracy"), "tau"] < -0.8
    # accuracy is an increasing function of robustness: within each seed the two orders agree exactly
    psi = stats.granulated_kendall(runs, "robustness", "test_accuracy").set_index("knob").psi
    assert psi.to_dict() == {"noise_sigma": 1.0, "sam_rho": 1.0, "all": 1.0}
    # the knob itself orders accuracy up on one knob and down on the other: Psi averages them to 0
    assert stats.granulated_kendall(runs, "knob_value", "test_accuracy").set_index("knob").psi["all"] == 0.0
    verdicts = conclusions.knob_verdicts(conclusions.knob_correlations(runs))
    assert set(verdicts[verdicts.outcome == "test_accuracy"].verdict) == {"holds"}


def test_along_a_knob_the_partial_tells_robustness_from_pretraining_accuracy():
    """The knob raises robustness and source accuracy together; the outcome follows one of them. The knob
    verdict holds either way (it is about the knob), the partial Spearman in its evidence tells which."""
    rng = np.random.default_rng(2)
    runs = synthetic_runs(rng, outcome_follows=True)
    runs = runs[runs.knob == "noise_sigma"].assign(pretrain_test_accuracy=0.3 + runs.knob_value
                                                   + 0.01 * rng.standard_normal(len(runs)))
    via_accuracy = runs.assign(test_accuracy=0.6 + runs.pretrain_test_accuracy + 0.001 * rng.standard_normal(len(runs)))
    for table, linked in ((runs, True), (via_accuracy, False)):
        corr = conclusions.knob_correlations(table)
        link = corr.set_index(["x", "y"]).loc[("robustness", "test_accuracy")]
        verdicts = conclusions.knob_verdicts(corr)
        verdict = verdicts[verdicts.outcome == "test_accuracy"].iloc[0]
        assert verdict.verdict == "holds" and "partial Spearman" in prose.knob_evidence(verdict)
        assert (link.partial_p < 0.001) if linked else (link.partial_p > 0.05), (linked, link.partial_r)
    alike = conclusions.knob_verdicts(conclusions.knob_correlations(runs.assign(
        pretrain_test_accuracy=runs.robustness / 2)))
    alike = prose.knob_evidence(alike[alike.outcome == "test_accuracy"].iloc[0])
    assert "order these runs alike, so no partial correlation can tell them apart" in alike


def test_the_one_knob_verdict_says_holds_under_the_null_no_more_often_than_its_level():
    """Robustness moves with the knob, the outcome is noise: "holds" needs the outcome to move significantly
    (two-sided 5%) in the one predicted direction, so it should come out at most ~2.5% of the time."""
    rng = np.random.default_rng(1)
    sims = 200
    said = []
    for _ in range(sims):
        runs = synthetic_runs(rng, outcome_follows=False)
        runs = runs[runs.knob == "noise_sigma"]
        verdicts = conclusions.knob_verdicts(conclusions.knob_correlations(runs))
        said.append(verdicts.set_index("outcome").verdict["test_accuracy"])
    rate = np.mean([v == "holds" for v in said])
    # binomial: with p = 0.025 and 200 studies, the rate exceeds 0.025 + 3 sd = 0.058 with probability < 0.2%
    assert rate <= 0.025 + 3 * np.sqrt(0.025 * 0.975 / sims), rate
    assert np.mean([v.startswith("cannot tell (the outcome") for v in said]) > 0.9
