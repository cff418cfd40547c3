import numpy as np
import pandas as pd
import pytest

from minima import stats


def test_correlation_recovers_a_known_correlation_and_covers_it():
    rng = np.random.default_rng(1)
    rho = 0.7
    x = rng.standard_normal(200)
    y = rho * x + np.sqrt(1 - rho ** 2) * rng.standard_normal(200)
    result = stats.correlation(x, y, "pearson", n_perm=500)
    assert result["r"] == pytest.approx(rho, abs=0.1)
    assert result["ci_low"] < rho < result["ci_high"]
    assert result["p_value"] < 0.01
    spearman = stats.correlation(x, y, "spearman", n_perm=500)
    assert spearman["ci_low"] < spearman["r"] < spearman["ci_high"] and spearman["r"] > 0.5


def test_no_correlation_gives_a_large_permutation_p_value():
    rng = np.random.default_rng(2)
    p_values = [stats.correlation(rng.standard_normal(15), rng.standard_normal(15), n_perm=400, seed=s)["p_value"]
                for s in range(20)]
    assert np.median(p_values) > 0.2
    assert np.mean(np.array(p_values) < 0.05) <= 0.15


def test_correlation_drops_nan_pairs_and_refuses_tiny_samples():
    assert stats.correlation([1, 2, np.nan, 4, 5], [2, 4, 1, 8, 10])["n"] == 4
    assert np.isnan(stats.correlation([1, 2], [3, 4])["r"])


def test_bootstrap_interval_of_the_mean_covers_the_mean():
    values = np.random.default_rng(0).normal(3.0, 1.0, 50)
    lo, hi = stats.bootstrap_ci(values)
    assert lo < values.mean() < hi and hi - lo < 1.0


def test_variance_shares_attribute_spread_to_the_right_level():
    rows = []
    for m, method_effect in enumerate([0.0, 10.0, 20.0]):
        for p in range(3):
            for f in range(4):
                rows.append(dict(method=m, pretrain_seed=p, finetune_seed=f,
                                 y=method_effect + 0.1 * p + 0.01 * (f % 2)))
    shares = stats.variance_shares(pd.DataFrame(rows), "y").set_index("level").share
    assert shares["method"] > 0.99
    assert shares.sum() == pytest.approx(1.0)
    assert shares["pretrain_seed"] > shares["finetune_seed"] > 0
