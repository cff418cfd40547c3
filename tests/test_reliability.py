import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from minima import prose, reliability, tables
from minima.config import Study

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges; their ICC(1,1) = .17 and ICC(1,4) = .44
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])


def simulated(runs: int, replicates: int, run_sd: float, noise_sd: float, seed: int) -> np.ndarray:
    """x_ij = a_i + e_ij with a ~ N(0, run_sd^2), e ~ N(0, noise_sd^2): the one-way model's own data."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, run_sd, (runs, 1)) + rng.normal(0, noise_sd, (runs, replicates))


def test_icc1_reproduces_shrout_and_fleiss_worked_example():
    out = reliability.icc1(SHROUT_FLEISS)
    # their table prints two decimals; the mean squares (BMS 11.24, WMS 6.26) give .166 and .443
    assert out["icc"] == pytest.approx(0.166, abs=0.0005)
    assert reliability.spearman_brown(out["icc"], 4) == pytest.approx(0.443, abs=0.0005)
    assert out["df_between"] == 5 and out["df_within"] == 18


def test_icc1_matches_the_variance_components_of_statsmodels_reml():
    x = simulated(runs=18, replicates=2, run_sd=1.0, noise_sd=0.6, seed=3)
    long = pd.DataFrame(dict(run=np.repeat(np.arange(18), 2), value=x.ravel()))
    fit = smf.mixedlm("value ~ 1", long, groups=long.run).fit(reml=True)
    run_var, noise_var = float(fit.cov_re.iloc[0, 0]), float(fit.scale)
    out = reliability.icc1(x)
    # a balanced one-way layout: REML equals the ANOVA estimates (MSW, (MSB - MSW) / k) when the run variance is
    # above 0; statsmodels reaches them by numerical optimisation, to about 1e-6 relative
    assert out["noise_sd"] ** 2 == pytest.approx(noise_var, rel=1e-4)
    assert out["run_sd"] ** 2 == pytest.approx(run_var, rel=1e-4)
    assert out["icc"] == pytest.approx(run_var / (run_var + noise_var), rel=1e-4)


def test_the_interval_covers_the_true_icc_95_percent_of_the_time():
    run_sd, noise_sd = 1.0, 0.8
    true = run_sd ** 2 / (run_sd ** 2 + noise_sd ** 2)  # 0.61
    bounds = [reliability.icc1(simulated(18, 2, run_sd, noise_sd, s)) for s in range(2000)]
    covered = [b["icc_low"] <= true <= b["icc_high"] for b in bounds]
    # exact for normal data; 2,000 studies put the observed share within 0.95 +- 0.012 (2.5 binomial sds)
    assert abs(np.mean(covered) - 0.95) < 0.012, np.mean(covered)


def test_spearman_brown_is_the_reliability_of_the_mean_of_the_replicates():
    run_sd, noise_sd, k = 1.0, 1.5, 3
    icc = run_sd ** 2 / (run_sd ** 2 + noise_sd ** 2)
    # the mean of k replicates has noise variance noise_sd^2 / k: its reliability, computed directly
    direct = run_sd ** 2 / (run_sd ** 2 + noise_sd ** 2 / k)
    assert reliability.spearman_brown(icc, k) == pytest.approx(direct, rel=1e-12)
    assert reliability.noise_share(icc, k) == pytest.approx(1 - direct, rel=1e-12)
    # and the correlation of two independent means of k, over many simulated runs, agrees
    rng = np.random.default_rng(0)
    runs = rng.normal(0, run_sd, 200_000)
    means = [runs + rng.normal(0, noise_sd, (k, runs.size)).mean(axis=0) for _ in range(2)]
    assert np.corrcoef(*means)[0, 1] == pytest.approx(direct, abs=0.01)  # sd of r at n = 200,000: ~0.001


def test_reliability_of_a_long_table_drops_incomplete_runs():
    x = simulated(runs=6, replicates=2, run_sd=1.0, noise_sd=0.5, seed=1)
    long = pd.DataFrame(dict(run=np.repeat(np.arange(6), 2), replicate=np.tile([0, 1], 6), value=x.ravel()))
    long.loc[0, "value"] = np.nan
    out = reliability.reliability(long, "value")
    assert out["runs"] == 5 and out["replicates"] == 2
    assert out["icc"] == pytest.approx(reliability.icc1(x[1:])["icc"], rel=1e-12)
    assert out["icc_low"] < out["icc"] < out["icc_high"] and out["reliability_low"] < out["reliability"]


def test_the_reliability_table_is_computed_on_tiny():
    study = Study.load("tiny")
    table = tables.reliability(study, composite=("masking", "fgsm"))
    expected = {"hessian_top", "hessian_trace", "adaptive_average", "adaptive_worst", "robustness",
                *(f"{m}_auc" for m in ("gaussian", "masking", "fgsm", "pgd", "energy"))}
    assert set(table.property) == expected
    # every run, except on the log scale, which drops a run whose estimate came out <= 0 (a few Hutchinson probes can)
    runs = len(study.methods) * len(study.pretrain_seeds)
    assert (table[table.scale == "raw"].runs == runs).all() and (table.runs >= runs - 2).all()
    assert (table.replicates == study.measure_replicates).all()
    assert set(table[table.scale == "log"].property) == {"hessian_top", "hessian_trace"}
    assert (table.icc_low <= table.icc).all() and (table.icc <= table.icc_high).all()


def test_without_run_variance_the_mean_is_not_reliable_and_all_its_spread_is_noise():
    x = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])  # three runs with one mean: MSB = 0 < MSW
    icc = reliability.icc1(x)["icc"]
    assert icc == -1.0  # the floor of ICC(1) at k = 2, -1 / (k - 1)
    assert reliability.spearman_brown(icc, 2) == 0.0 and reliability.noise_share(icc, 2) == 1.0


def test_the_reliability_sentence_names_who_reaches_the_target_and_the_noise_of_the_rest():
    table = pd.DataFrame(dict(property=["hessian_top", "gaussian_auc"], reliability=[0.93, 0.6],
                              reliability_low=[0.85, 0.2], reliability_high=[0.97, 0.8], noise_share=[0.07, 0.4],
                              runs=18, replicates=2))
    sentence = prose.reliability_sentence(table)
    assert "measured 2 times on 18 pretraining runs: 1 of 2 reach a reliability of 0.9" in sentence
    assert "hessian_top 0.93 [0.85, 0.97]" in sentence.split("Below it")[0]
    assert "Below it: gaussian_auc 0.60 [0.20, 0.80], 40% of its spread between runs is measurement noise." in sentence
