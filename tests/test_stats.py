import warnings

import numpy as np
import pandas as pd
import pytest

from minima import prose, stats

# Calibration: every verdict procedure is run on SIMS studies simulated under the null with the study's own
# design. At a nominal 5%, the rate's binomial SD over 2,000 studies is 0.49 points, so the band 2.5-7.5% is
# +-5 SD: a calibrated procedure fails it with probability ~1e-6, while the old one (~40%) is far outside.
SIMS = 2000
NULL_BAND = (0.025, 0.075)
SEED_SDS = [(0.02, 0.01), (0.005, 0.015), (0.0, 0.01)]  # (pretraining-run SD, finetuning-seed SD) in accuracy


def _studies(rng, sims, methods, runs, seeds, run_sd, seed_sd, effect=0.0):
    """Simulated finetuning outcomes y[study, method, run, seed]; method 1 is shifted by `effect`."""
    y = run_sd * rng.standard_normal((sims, methods, runs, 1)) + seed_sd * rng.standard_normal(
        (sims, methods, runs, seeds))
    y[:, 1] += effect
    return y


def _table(y):
    """One simulated study as the long table finetuning.finetune_all returns (the columns the stats read)."""
    m, p, f = np.indices(y.shape)
    return pd.DataFrame(dict(method=m.ravel(), pretrain_seed=p.ravel(), finetune_seed=f.ravel(), y=y.ravel()))


def _old_pooled_bootstrap(y, rng, n_boot=400):
    """The old conclusions.difference_ci, vectorised: finetuning runs of method 1 and 0 resampled as if
    independent, percentile 95% interval. Kept here only to measure how wrong it was."""
    a, b = y[:, 1].reshape(len(y), -1), y[:, 0].reshape(len(y), -1)
    ia, ib = rng.integers(0, a.shape[1], (n_boot, a.shape[1])), rng.integers(0, b.shape[1], (n_boot, b.shape[1]))
    boots = a[:, ia].mean(-1) - b[:, ib].mean(-1)
    return np.quantile(boots, 0.025, axis=1), np.quantile(boots, 0.975, axis=1)


@pytest.mark.parametrize("run_sd,seed_sd", SEED_SDS)
@pytest.mark.parametrize("runs", [2, 3, 5])
def test_run_mean_contrast_excludes_zero_at_its_nominal_rate_under_the_null(run_sd, seed_sd, runs):
    y = _studies(np.random.default_rng(runs), SIMS, 3, runs, 3, run_sd, seed_sd)
    c = stats.run_mean_contrast(y, 1, 0)
    rate = np.mean((c["ci_low"] > 0) | (c["ci_high"] < 0))
    assert NULL_BAND[0] <= rate <= NULL_BAND[1], rate


def test_the_old_pooled_bootstrap_said_holds_far_too_often():
    # The default design (3 methods x 2 runs x 3 seeds), run SD 2 points, seed SD 1 point: measured 40-41%.
    y = _studies(np.random.default_rng(0), SIMS, 3, 2, 3, 0.02, 0.01)
    lo, hi = _old_pooled_bootstrap(y, np.random.default_rng(1))
    assert np.mean((lo > 0) | (hi < 0)) > 0.3
    c = stats.run_mean_contrast(y, 1, 0)
    assert np.mean((c["ci_low"] > 0) | (c["ci_high"] < 0)) < NULL_BAND[1]


@pytest.mark.parametrize("run_sd,seed_sd", SEED_SDS[:2])
def test_run_mean_contrast_finds_an_effect_of_four_run_sds_with_five_runs(run_sd, seed_sd):
    effect, runs = 4 * run_sd, 5
    y = _studies(np.random.default_rng(7), SIMS, 3, runs, 3, run_sd, seed_sd, effect)
    found = np.mean(stats.run_mean_contrast(y, 1, 0)["ci_low"] > 0)
    predicted = stats.contrast_power(effect, np.sqrt(run_sd ** 2 + seed_sd ** 2 / 3), runs, 3)
    assert found > 0.75
    assert found == pytest.approx(predicted, abs=0.03)  # the power formula is the procedure's power


def test_run_mean_contrast_refuses_fewer_than_two_runs_per_method():
    c = stats.run_mean_contrast(_studies(np.random.default_rng(0), 5, 3, 1, 3, 0.02, 0.01), 1, 0)
    assert np.isnan(c["ci_low"]).all() and np.isfinite(c["difference"]).all()
    assert stats.verdict(np.nan, np.nan) == stats.TOO_FEW


def test_method_differences_on_a_table_equal_the_array_procedure_and_say_three_words():
    y = _studies(np.random.default_rng(4), 1, 3, 3, 3, 0.02, 0.01, effect=0.2)
    table = _table(y[0]).sample(frac=1, random_state=0)  # row order must not matter
    diffs = stats.method_differences(table, "y", baseline=0).set_index("method")
    c = stats.run_mean_contrast(y, 1, 0)
    assert diffs.loc[1, "ci_low"] == pytest.approx(c["ci_low"][0]) and diffs.loc[1, "df"] == 6
    assert diffs.loc[1, "verdict"] == "holds"
    assert diffs.loc[2, "verdict"] in ("holds", "does not hold", stats.SPANS_ZERO)


def test_variance_components_equal_statsmodels_reml_on_a_balanced_design():
    from statsmodels.regression.mixed_linear_model import MixedLM

    rng = np.random.default_rng(3)
    y = (0.5 * rng.standard_normal((5, 1, 1)) + 0.3 * rng.standard_normal((5, 4, 1))
         + 0.2 * rng.standard_normal((5, 4, 3)))
    table = _table(y)
    comp = stats.variance_components(table, "y").set_index("level")
    exog_vc = {"run": {m: pd.get_dummies(g.pretrain_seed).to_numpy(float) for m, g in table.groupby("method")}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = MixedLM(table.y, np.ones((len(table), 1)), groups=table.method, exog_re=np.ones((len(table), 1)),
                      exog_vc=exog_vc).fit(reml=True)
    assert comp.loc["method", "variance"] == pytest.approx(float(fit.cov_re.iloc[0, 0]), rel=1e-3)
    assert comp.loc["pretrain_seed", "variance"] == pytest.approx(float(fit.vcomp[0]), rel=1e-3)
    assert comp.loc["finetune_seed", "variance"] == pytest.approx(fit.scale, rel=1e-3)
    assert (comp.ci_low <= comp.variance).all() and (comp.variance <= comp.ci_high).all()


@pytest.mark.parametrize("run_sd,seed_sd", SEED_SDS)
def test_variance_components_are_unbiased_cover_and_the_method_f_test_is_calibrated(run_sd, seed_sd):
    y = _studies(np.random.default_rng(5), SIMS, 3, 2, 3, run_sd, seed_sd)
    comp = stats.nested_components(y)
    assert comp["finetune_seed"].mean() == pytest.approx(seed_sd ** 2, rel=0.03)
    assert comp["pretrain_seed"].mean() == pytest.approx(run_sd ** 2, abs=0.05 * (run_sd ** 2 + seed_sd ** 2))
    assert comp["method"].mean() == pytest.approx(0, abs=0.1 * (run_sd ** 2 + seed_sd ** 2))
    lo, hi = comp["pretrain_seed_ci"]
    assert 0.93 <= np.mean((lo <= run_sd ** 2) & (run_sd ** 2 <= hi)) <= 0.99
    assert NULL_BAND[0] <= np.mean(comp["method_p"] < 0.05) <= NULL_BAND[1]


def test_variance_components_of_an_unbalanced_design_stay_unbiased():
    y = _studies(np.random.default_rng(6), SIMS, 3, 3, 4, 0.02, 0.01)
    y[:, 0, 2] = np.nan  # a lost run
    y[:, 1, 0, 3] = np.nan  # a lost finetuning seed
    comp = stats.nested_components(y)
    assert comp["pretrain_seed"].mean() == pytest.approx(0.02 ** 2, rel=0.05)
    assert comp["method"].mean() == pytest.approx(0, abs=0.1 * 0.02 ** 2)


def test_detectable_difference_has_the_stated_power_and_runs_needed_is_the_smallest():
    d = stats.detectable_difference(0.02, 5, 3)
    assert stats.contrast_power(d, 0.02, 5, 3) == pytest.approx(0.8, abs=1e-6)
    n = stats.runs_needed(0.02, 0.02, 3)
    assert stats.contrast_power(0.02, 0.02, n, 3) >= 0.8 > stats.contrast_power(0.02, 0.02, n - 1, 3)
    assert np.isnan(stats.detectable_difference(0.02, 1, 3)) and stats.runs_needed(1e-9, 0.02, 3) is None


def test_power_statement_states_the_numbers_or_says_why_not():
    comp = stats.variance_components(_table(_studies(np.random.default_rng(8), 1, 3, 3, 3, 0.02, 0.01)[0]), "y")
    text = prose.power_statement(comp, 0.01, 3, 3, 3)
    d = stats.detectable_difference(stats.run_sd(comp, 3), 3, 3)
    assert f"{d:.3g}" in text and f"{stats.runs_needed(0.01, stats.run_sd(comp, 3), 3)} pretraining runs" in text
    one = stats.variance_components(_table(_studies(np.random.default_rng(8), 1, 3, 1, 3, 0.02, 0.01)[0]), "y")
    assert "no test" in prose.power_statement(one, 0.01, 1, 3, 3)


@pytest.mark.parametrize("method", ["spearman", "kendall", "pearson"])
def test_correlation_permutation_p_value_is_calibrated_over_six_runs(method):
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((2, 1000, 6))
    p = stats.permutation_p(x, y, method, n_perm=200, seed=1)
    assert NULL_BAND[0] <= np.mean(p < 0.05) <= NULL_BAND[1]


@pytest.mark.parametrize("noise", [0.5, 1.0])
def test_partial_correlation_is_calibrated_over_six_runs_when_both_only_track_the_control(noise):
    rng = np.random.default_rng(10)
    z = rng.standard_normal((SIMS, 6))
    x = z + noise * rng.standard_normal(z.shape)
    y = z + noise * rng.standard_normal(z.shape)
    assert np.mean(stats.permutation_p(x, y, "spearman", n_perm=100) < 0.05) > 0.1  # the raw link is there
    r, p = stats.partial_rows(x, y, z)
    assert NULL_BAND[0] <= np.mean(p < 0.05) <= NULL_BAND[1]


def test_partial_correlation_keeps_a_link_beyond_the_control():
    rng = np.random.default_rng(11)
    z, x = rng.standard_normal((2, 30))
    result = stats.partial_correlation(x, z + x + 0.3 * rng.standard_normal(30), z)
    assert result["r"] > 0.7 and result["p_value"] < 0.01
    assert np.isnan(stats.partial_correlation([1, 2, 3], [1, 2, 3], [3, 1, 2])["r"])


def test_correlation_recovers_a_known_correlation_and_covers_it():
    rng = np.random.default_rng(1)
    rho = 0.7
    x = rng.standard_normal(200)
    y = rho * x + np.sqrt(1 - rho ** 2) * rng.standard_normal(200)
    result = stats.correlation(x, y, "pearson", n_perm=500)
    assert result["r"] == pytest.approx(rho, abs=0.1)
    assert result["ci_low"] < rho < result["ci_high"]
    assert result["p_value"] < 0.01
    for method in ("spearman", "kendall"):
        r = stats.correlation(x, y, method, n_perm=500)
        assert r["ci_low"] < r["r"] < r["ci_high"] and r["r"] > 0.45


def test_kendall_matches_scipy_with_ties():
    from scipy.stats import kendalltau

    x, y = [1, 2, 2, 3, 5, 4], [2, 1, 3, 3, 6, 6]
    assert stats.correlation(x, y, "kendall")["r"] == pytest.approx(kendalltau(x, y).statistic)


def test_a_perfect_rank_link_prints_as_below_a_thousandth_never_as_zero():
    p = stats.correlation(np.arange(15.0), np.arange(15.0) ** 2, "kendall")["p_value"]
    assert p == 1 / 2001  # the add-one floor of 2,000 permutations: no permutation reaches tau = 1
    assert [stats.p_text(v) for v in (p, 0.0123, 0.23, np.nan)] == ["p < 0.001", "p = 0.012", "p = 0.23", "p = nan"]


def test_correlation_drops_nan_pairs_and_refuses_tiny_samples():
    assert stats.correlation([1, 2, np.nan, 4, 5], [2, 4, 1, 8, 10])["n"] == 4
    assert np.isnan(stats.correlation([1, 2], [3, 4])["r"])
    with pytest.raises(ValueError):
        stats.correlation([1, 2], [3, 4], "cosine")


def test_summarize_ci_averages_within_units_and_gives_no_interval_under_three():
    table = _table(_studies(np.random.default_rng(12), 1, 2, 4, 3, 0.02, 0.01)[0])
    two = table[table.pretrain_seed < 2]
    out = stats.summarize_ci(two, "method", ["y"], unit="pretrain_seed")
    assert (out.n == 2).all() and out.ci_low.isna().all()
    out = stats.summarize_ci(table, "method", ["y"], unit="pretrain_seed").set_index("method")
    run_means = table[table.method == 0].groupby("pretrain_seed").y.mean()
    assert out.loc[0, "ci_low"] == pytest.approx(stats.t_interval(run_means)[0])
    assert out.loc[0, "ci_low"] < out.loc[0, "mean"] < out.loc[0, "ci_high"]
