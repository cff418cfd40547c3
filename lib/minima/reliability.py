"""Test-retest reliability of a run-level measure: how much of its spread between runs is the runs, not the noise.

Each of n runs (the subjects) is measured k times independently (other images, probes, noise draws: the
replicates). A one-way random-effects model reads the values as x_ij = mu + a_i + e_ij, with a run effect a_i of
variance s2_run and a measurement error e_ij of variance s2_noise, independent. Its intraclass correlation

    ICC(1) = s2_run / (s2_run + s2_noise)

is the correlation between two measurements of one run: the reliability of a single replicate. Estimated from
the one-way ANOVA's mean squares (Shrout & Fleiss 1979, case 1), MSB between runs (df n - 1) and MSW within
(df n (k - 1)): ICC = (MSB - MSW) / (MSB + (k - 1) MSW), with the exact interval of normal data from
F = MSB / MSW, which is (1 + k s2_run / s2_noise) times an F(n - 1, n (k - 1)) variable. The property a study
uses is the mean of its k replicates, whose reliability is Spearman-Brown's k ICC / (1 + (k - 1) ICC); the rest,
1 minus it, is the share of the property's between-run variance that is measurement noise. Both are shares of a
variance: where the estimate of the run variance is below 0 (MSB < MSW) they are clipped to [0, 1], which says
"no run variance shown", where Spearman-Brown's formula would run to minus infinity.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

LEVEL = 0.95  # of the intervals


def icc1(values: np.ndarray, level: float = LEVEL) -> dict[str, float]:
    """ICC(1) of an (n runs, k replicates) array with its F-based interval, the F statistic, its degrees of
    freedom, and the variance components (run and noise standard deviations, the run's clipped at 0)."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2 or not np.isfinite(x).all():
        raise ValueError(f"expected finite values of at least 2 runs x 2 replicates; got shape {x.shape}"
                         + ("" if np.isfinite(x).all() else " with NaN or inf"))
    n, k = x.shape
    df1, df2 = n - 1, n * (k - 1)
    msb = k * np.sum((x.mean(axis=1) - x.mean()) ** 2) / df1
    msw = np.sum((x - x.mean(axis=1, keepdims=True)) ** 2) / df2
    f = msb / msw if msw > 0 else math.inf
    tail = 0.5 + level / 2
    f_low, f_high = f / sps.f.ppf(tail, df1, df2), f * sps.f.ppf(tail, df2, df1)
    bound = lambda v: 1.0 if math.isinf(v) else (v - 1) / (v + k - 1)  # noqa: E731 -- ICC from an F ratio
    return dict(icc=bound(f), icc_low=bound(f_low), icc_high=bound(f_high), f=float(f), df_between=df1,
                df_within=df2, run_sd=math.sqrt(max(msb - msw, 0.0) / k), noise_sd=math.sqrt(msw))


def spearman_brown(icc: float, k: int) -> float:
    """The reliability of the mean of k replicates whose single-replicate reliability is `icc` (0 for an icc <= 0)."""
    return k * icc / (1 + (k - 1) * icc) if icc > 0 else 0.0


def noise_share(icc: float, k: int) -> float:
    """The share of the between-run variance of the mean of k replicates that is measurement noise."""
    return 1 - spearman_brown(icc, k)


def reliability(table: pd.DataFrame, value: str, run: str = "run", replicate: str = "replicate",
                level: float = LEVEL) -> dict[str, float]:
    """`icc1` of a long table (one row per run and replicate; runs with a missing value dropped), with the
    reliability of the mean of the replicates (its interval mapped through Spearman-Brown, which is monotone),
    the noise share of that mean, and the runs and replicates counted."""
    wide = table.pivot(index=run, columns=replicate, values=value).dropna()
    k = wide.shape[1]
    out = icc1(wide.to_numpy(), level)
    mean = {name: spearman_brown(out[f"icc{end}"], k) for name, end in
            (("reliability", ""), ("reliability_low", "_low"), ("reliability_high", "_high"))}
    return dict(out, **mean, noise_share=noise_share(out["icc"], k), runs=len(wide), replicates=k)
