"""Statistics over seeds: summaries, nested comparisons, variance components, power, correlations.

The unit of a method comparison is the pretraining run: the finetuning seeds of one run share it, so
every interval about methods is computed from per-run means (method > pretraining run > finetuning seed).
The closed-form procedures below take arrays with leading study axes, so the tests can check their
calibration on thousands of simulated studies at once.
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps
from scipy.optimize import brentq
from scipy.stats import rankdata

LEVELS = ("method", "pretrain_seed", "finetune_seed")
MIN_UNITS = 3  # no interval over fewer units: it could not mean anything
TOO_FEW = "cannot tell (too few pretraining runs)"
SPANS_ZERO = "cannot tell (interval spans zero)"


def p_text(p: float) -> str:
    """A p-value as written in a sentence: three decimals near the 5% level ("p = 0.012"), two above 0.1,
    and "p < 0.001" below (a p of 2,000 permutations is at least 1/2001: three decimals would print 0)."""
    if np.isnan(p):
        return "p = nan"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"


def summarize(table: pd.DataFrame, by: str | Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Mean, standard deviation and count of each metric per group: one row per group."""
    grouped = table.groupby(by)[list(metrics)].agg(["mean", "std", "count"])
    grouped.columns = [f"{m}_{s}" for m, s in grouped.columns]
    return grouped.reset_index()


def mean_pm_std(table: pd.DataFrame, by: str | Sequence[str], metrics: Sequence[str],
                digits: int = 3) -> pd.DataFrame:
    """The same summary as text, "mean +- sd (n)", for a readable table."""
    s = summarize(table, by, metrics)
    out = s[[by] if isinstance(by, str) else list(by)].copy()
    for m in metrics:
        out[m] = [f"{a:.{digits}f} +- {b:.{digits}f} (n={n})" if n > 1 else f"{a:.{digits}f} (n=1)"
                  for a, b, n in zip(s[f"{m}_mean"], s[f"{m}_std"].fillna(0), s[f"{m}_count"])]
    return out


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student t interval of the mean of independent units (NaNs dropped); NaN with fewer than 3 units."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) < MIN_UNITS:
        return (np.nan, np.nan)
    half = sps.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean() - half), float(v.mean() + half)


def summarize_ci(table: pd.DataFrame, by: str | Sequence[str], metrics: Sequence[str],
                 unit: str | None = None, level: float = 0.95) -> pd.DataFrame:
    """Mean, sd, number of units and a t interval of the mean of each metric per group, one row per
    group and metric. With `unit`, rows are first averaged within each unit (e.g. a pretraining run),
    so the interval is over units; no interval with fewer than 3 units."""
    keys = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, part in table.groupby(keys):
        for m in metrics:
            v = (part.groupby(unit)[m].mean() if unit else part[m]).dropna()
            lo, hi = t_interval(v, level)
            rows.append(dict(zip(keys, key), metric=m, mean=v.mean(), std=v.std(), n=len(v), ci_low=lo, ci_high=hi))
    return pd.DataFrame(rows)


def nested_cells(table: pd.DataFrame, outcome: str,
                 levels: Sequence[str] = LEVELS) -> tuple[np.ndarray, list]:
    """The outcome as a NaN-padded array (group, run, seed) for a nested design, and the group labels."""
    t = table.dropna(subset=[outcome])
    if t.empty:
        return np.full((0, 0, 0), np.nan), []
    group, run, _ = levels
    g_codes, labels = pd.factorize(t[group], sort=True)
    r_codes = t.groupby(group)[run].transform(lambda s: pd.factorize(s, sort=True)[0]).to_numpy()
    f_codes = t.groupby([group, run]).cumcount().to_numpy()
    cells = np.full((len(labels), r_codes.max() + 1, f_codes.max() + 1), np.nan)
    cells[g_codes, r_codes, f_codes] = t[outcome].to_numpy(float)
    return cells, list(labels)


def _nested_sums(y: np.ndarray) -> dict[str, np.ndarray]:
    """Counts, means and mean squares of a nested one-way design y[..., group, run, seed] (NaN = missing)."""
    obs = ~np.isnan(y)
    y0 = np.where(obs, y, 0.0)
    n_ij = obs.sum(-1)
    n_i = n_ij.sum(-1)
    N = n_i.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        m_ij = y0.sum(-1) / n_ij
        m_i = y0.sum((-1, -2)) / n_i
        grand = y0.sum((-1, -2, -3)) / N
        ss_e = (np.where(obs, y0 - np.nan_to_num(m_ij)[..., None], 0.0) ** 2).sum((-1, -2, -3))
        ss_r = (n_ij * np.nan_to_num(m_ij - m_i[..., None]) ** 2).sum((-1, -2))
        ss_m = (n_i * np.nan_to_num(m_i - grand[..., None]) ** 2).sum(-1)
        runs, k = (n_ij > 0).sum((-1, -2)), (n_i > 0).sum(-1)
        df_e, df_r, df_m = N - runs, runs - k, k - 1
        a = ((n_ij ** 2).sum(-1) / np.where(n_i > 0, n_i, 1)).sum(-1)
        return dict(run_means=np.where(n_ij > 0, m_ij, np.nan), n_runs=(n_ij > 0).sum(-1),
                    ms_e=ss_e / df_e, ms_r=ss_r / df_r, ms_m=ss_m / df_m, df_e=df_e, df_r=df_r, df_m=df_m,
                    n0_r=(N - a) / df_r, n0_mr=(a - (n_ij ** 2).sum((-1, -2)) / N) / df_m,
                    n0_m=(N - (n_i ** 2).sum(-1) / N) / df_m)


def _mls_interval(s1, s2, df1, df2, c, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Modified large-sample interval for (s1 - s2) / c from two independent mean squares (Ting, Burdick &
    Graybill 1990), truncated at zero."""
    a = 1 - level
    with np.errstate(invalid="ignore", divide="ignore"):
        g1 = 1 - df1 / sps.chi2.ppf(1 - a / 2, df1)
        h1 = df1 / sps.chi2.ppf(a / 2, df1) - 1
        g2 = 1 - df2 / sps.chi2.ppf(1 - a / 2, df2)
        h2 = df2 / sps.chi2.ppf(a / 2, df2) - 1
        f1, f2 = sps.f.ppf(1 - a / 2, df1, df2), sps.f.ppf(a / 2, df1, df2)
        g12 = ((f1 - 1) ** 2 - g1 ** 2 * f1 ** 2 - h2 ** 2) / f1
        h12 = ((1 - f2) ** 2 - h1 ** 2 * f2 ** 2 - g2 ** 2) / f2
        low = (s1 - s2 - np.sqrt(np.maximum(g1 ** 2 * s1 ** 2 + h2 ** 2 * s2 ** 2 + g12 * s1 * s2, 0))) / c
        high = (s1 - s2 + np.sqrt(np.maximum(h1 ** 2 * s1 ** 2 + g2 ** 2 * s2 ** 2 + h12 * s1 * s2, 0))) / c
    return np.maximum(low, 0.0), np.maximum(high, 0.0)


def nested_components(y: np.ndarray, level: float = 0.95) -> dict[str, np.ndarray]:
    """Moment (expected-mean-squares) estimates of the method, run and seed variance components of
    y[..., group, run, seed], unbiased for nested designs (Searle's coefficients when unbalanced; equal
    to REML in the balanced case when all are positive), with intervals and the F test of the method."""
    s = _nested_sums(y)
    with np.errstate(invalid="ignore", divide="ignore"):
        v_e = s["ms_e"]
        v_r = (s["ms_r"] - s["ms_e"]) / s["n0_r"]
        w = s["n0_mr"] / s["n0_r"]  # the method row's error term: MS_run when balanced (w = 1)
        denom = (1 - w) * s["ms_e"] + w * s["ms_r"]
        df_den = denom ** 2 / (((1 - w) * s["ms_e"]) ** 2 / s["df_e"] + (w * s["ms_r"]) ** 2 / s["df_r"])
        v_m = (s["ms_m"] - denom) / s["n0_m"]
        e_ci = (s["df_e"] * v_e / sps.chi2.ppf(0.5 + level / 2, s["df_e"]),
                s["df_e"] * v_e / sps.chi2.ppf(0.5 - level / 2, s["df_e"]))
        p_method = sps.f.sf(s["ms_m"] / denom, s["df_m"], df_den)
    return dict(method=v_m, pretrain_seed=v_r, finetune_seed=v_e,
                method_ci=_mls_interval(s["ms_m"], denom, s["df_m"], df_den, s["n0_m"], level),
                pretrain_seed_ci=_mls_interval(s["ms_r"], s["ms_e"], s["df_r"], s["df_e"], s["n0_r"], level),
                finetune_seed_ci=e_ci, method_p=p_method, df_method=s["df_m"], df_pretrain_seed=s["df_r"],
                df_finetune_seed=s["df_e"])


def variance_components(table: pd.DataFrame, outcome: str, levels: Sequence[str] = LEVELS,
                        level: float = 0.95) -> pd.DataFrame:
    """Variance of `outcome` due to the method, the pretraining run within a method and the finetuning seed
    within a run: moment estimates (negative ones reported as 0), share of the total, 95% intervals (exact
    chi-square for seeds, modified large-sample for the others) and, on the method row, the F test of a
    method effect. NaN where the design has no degrees of freedom for a level."""
    comp = nested_components(nested_cells(table, outcome, levels)[0][None], level)
    names = dict(zip(LEVELS, levels))
    est = {lv: max(float(comp[lv][0]), 0.0) for lv in LEVELS}
    total = sum(est.values())  # NaN (no shares) when a level cannot be estimated
    rows = [dict(outcome=outcome, level=names[lv], variance=est[lv], sd=np.sqrt(est[lv]),
                 ci_low=float(comp[f"{lv}_ci"][0][0]), ci_high=float(comp[f"{lv}_ci"][1][0]),
                 share=est[lv] / total if total > 0 else np.nan, df=max(float(comp[f"df_{lv}"][0]), 0.0),
                 p_value=float(comp["method_p"][0]) if lv == "method" else np.nan) for lv in LEVELS]
    return pd.DataFrame(rows)


def run_mean_contrast(y: np.ndarray, a: int, b: int, level: float = 0.95) -> dict[str, np.ndarray]:
    """Group a minus group b of y[..., group, run, seed]: difference of run means, Student t interval
    with the within-group variance of run means pooled over all groups (df = runs - groups) and its
    two-sided p-value; NaN unless both groups have at least 2 runs.

    Why this procedure: it is the balanced nested-ANOVA contrast (what a REML mixed model with method
    fixed and run random gives, with exact df, when designs are balanced), exact under normal errors
    whatever the run and seed variances, and it needs no resampling. A bootstrap of runs cannot be
    calibrated with 2 runs per method (two values have three distinct resamples and no t quantile), and
    resampling finetuning seeds as independent excluded zero in ~40% of null studies (tests/test_stats)."""
    s = _nested_sums(y)
    m, n = s["run_means"], s["n_runs"]
    with np.errstate(invalid="ignore", divide="ignore"):
        group_means = np.nansum(m, -1) / n
        ss = np.nansum((m - group_means[..., None]) ** 2, (-1, -2))
        df = n.sum(-1) - (n > 0).sum(-1)
        na, nb = n[..., a], n[..., b]
        se = np.sqrt(ss / df * (1 / na + 1 / nb))
        diff = group_means[..., a] - group_means[..., b]
        ok = (na >= 2) & (nb >= 2) & (df >= 1)
        half = sps.t.ppf(0.5 + level / 2, df) * se
        p = 2 * sps.t.sf(np.abs(diff / se), df)
    nan = np.full(np.shape(diff), np.nan)
    return dict(difference=diff, ci_low=np.where(ok, diff - half, nan), ci_high=np.where(ok, diff + half, nan),
                se=np.where(ok, se, nan), df=np.where(ok, df, nan), p_value=np.where(ok, p, nan), runs_a=na,
                runs_b=nb)


def verdict(ci_low: float, ci_high: float) -> str:
    """Three words for "the difference is positive": holds, does not hold (interval below zero), or
    cannot tell (why)."""
    if np.isnan(ci_low) or np.isnan(ci_high):
        return TOO_FEW
    return "holds" if ci_low > 0 else "does not hold" if ci_high < 0 else SPANS_ZERO


def method_differences(table: pd.DataFrame, outcome: str, baseline: str, levels: Sequence[str] = LEVELS,
                       level: float = 0.95) -> pd.DataFrame:
    """Every group minus the baseline group on `outcome`, from per-run means (see `run_mean_contrast`):
    difference, t interval, df, p-value, runs per side and the verdict on "higher than the baseline"."""
    cells, labels = nested_cells(table, outcome, levels)
    rows = []
    for i, label in enumerate(labels):
        if label == baseline or baseline not in labels:
            continue
        c = {k: float(v[0]) for k, v in run_mean_contrast(cells[None], i, labels.index(baseline), level).items()}
        rows.append(dict(outcome=outcome, method=label, baseline=baseline, **c,
                         verdict=verdict(c["ci_low"], c["ci_high"])))
    return pd.DataFrame(rows, columns=["outcome", "method", "baseline", "difference", "ci_low", "ci_high", "se", "df",
                                       "p_value", "runs_a", "runs_b", "verdict"])


def blocked_differences(table: pd.DataFrame, value: str, baseline: str, group: str = "method",
                        block: str = "pretrain_seed", level: float = 0.95) -> pd.DataFrame:
    """Every group minus the baseline on `value` (one row per pretraining run), blocked by `block`: the least-squares
    contrast of the additive model value ~ group + block, a Student t interval and two-sided p on its residual df.

    Why blocked: every method trains from each seed's initialisation and batch order, so a seed's runs share
    whatever that start does to them; the seed effect leaves the contrast and its error. `block_share` is the
    share of the unblocked within-method variance the seeds explain (the within-seed correlation of two methods'
    runs) and `efficiency` the unblocked error variance over the blocked one: how many runs blocking is worth.
    NaN unless both sides have 2 runs and a residual degree of freedom is left."""
    t = table[[group, block, value]].dropna()
    labels = [baseline] + [g for g in dict.fromkeys(t[group]) if g != baseline]
    blocks = sorted(t[block].unique())
    x = np.column_stack([np.ones(len(t))] + [(t[group] == g).to_numpy(float) for g in labels[1:]]
                        + [(t[block] == b).to_numpy(float) for b in blocks[1:]])
    y = t[value].to_numpy(float)
    rank = np.linalg.matrix_rank(x) if len(t) else 0
    df = len(t) - rank
    columns = ["outcome", "method", "baseline", "difference", "ci_low", "ci_high", "se", "df", "p_value", "runs_a",
               "runs_b", "blocks", "block_share", "efficiency"]
    if baseline not in set(t[group]):  # nothing to compare with, as method_differences
        return pd.DataFrame(columns=columns)
    if rank < x.shape[1]:
        rows = [dict(outcome=value, method=g, baseline=baseline, runs_a=int((t[group] == g).sum()),
                     runs_b=int((t[group] == baseline).sum()), blocks=len(blocks)) for g in labels[1:]]
        return pd.DataFrame(rows, columns=columns)
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    s2 = float(((y - x @ beta) ** 2).sum() / df) if df >= 1 else np.nan
    cov = s2 * np.linalg.inv(x.T @ x)
    within = t.groupby(group)[value].transform("mean")
    df_unblocked = len(t) - len(labels)
    s2_unblocked = float(((y - within) ** 2).sum() / df_unblocked) if df_unblocked > 0 else np.nan
    share = max(0.0, 1 - s2 / s2_unblocked) if s2_unblocked > 0 and s2 >= 0 else np.nan
    q = sps.t.ppf(0.5 + level / 2, df) if df >= 1 else np.nan
    rows = []
    for i, g in enumerate(labels[1:], start=1):
        na, nb = int((t[group] == g).sum()), int((t[group] == baseline).sum())
        d, se = float(beta[i]), float(np.sqrt(cov[i, i]))
        ok = na >= 2 and nb >= 2 and df >= 1
        rows.append(dict(outcome=value, method=g, baseline=baseline, difference=d,
                         ci_low=d - q * se if ok else np.nan, ci_high=d + q * se if ok else np.nan,
                         se=se if ok else np.nan, df=float(df) if ok else np.nan,
                         p_value=float(2 * sps.t.sf(abs(d / se), df)) if ok and se > 0 else np.nan, runs_a=na,
                         runs_b=nb, blocks=len(blocks), block_share=share,
                         efficiency=s2_unblocked / s2 if s2 > 0 else np.nan))
    return pd.DataFrame(rows, columns=columns)


def contrast_power(difference: float | np.ndarray, run_sd: float, runs_per_method: int | np.ndarray,
                   n_methods: int, alpha: float = 0.05) -> np.ndarray:
    """Power of the two-sided run-mean t contrast (noncentral t, df = methods x (runs - 1)) to detect a
    difference between two methods whose run means have standard deviation `run_sd`."""
    r = np.asarray(runs_per_method, dtype=float)
    df = n_methods * (r - 1)
    nc = np.abs(difference) / (run_sd * np.sqrt(2 / r))
    crit = sps.t.ppf(1 - alpha / 2, df)
    return sps.nct.sf(crit, df, nc) + np.nan_to_num(sps.nct.cdf(-crit, df, nc))  # the far tail underflows to NaN


def detectable_difference(run_sd: float, runs_per_method: int, n_methods: int, power: float = 0.8,
                          alpha: float = 0.05) -> float:
    """The smallest difference between two methods the design detects with the given power; NaN when
    there are too few runs for a test."""
    if runs_per_method < 2 or not run_sd > 0:
        return np.nan
    def gap(d: float) -> float:
        return float(contrast_power(d, run_sd, runs_per_method, n_methods, alpha)) - power

    high = 20 * run_sd * np.sqrt(2 / runs_per_method)
    while gap(high) < 0:  # a family's alpha / m on few df needs more than 20 standard errors
        high *= 2
    return float(brentq(gap, 0.0, high))


def runs_needed(difference: float, run_sd: float, n_methods: int, power: float = 0.8, alpha: float = 0.05,
                most: int = 1000) -> int | None:
    """Pretraining runs per method needed to detect `difference` with the given power (None: more than `most`)."""
    r = np.arange(2, most + 1)
    ok = contrast_power(difference, run_sd, r, n_methods, alpha) >= power
    return int(r[ok.argmax()]) if ok.any() else None


def design_power(components: pd.DataFrame, observed: float, runs_per_method: int, n_methods: int,
                 finetune_seeds: int, alpha: float = 0.05) -> dict:
    """The power of the design for one outcome's variance `components` at the two-sided level `alpha` its verdict
    is decided at (a family's alpha / m, not 5%): the run-mean sd, the smallest difference detected with 80%
    power (NaN without a test) and the pretraining runs per method that would resolve the `observed` difference
    (`runs_needed`)."""
    sd = run_sd(components, finetune_seeds)
    smallest = detectable_difference(sd, runs_per_method, n_methods, alpha=alpha)
    needed = runs_needed(observed, sd, n_methods, alpha=alpha) if not np.isnan(smallest) else None
    return dict(outcome=components.outcome.iloc[0], sd=sd, smallest=smallest, needed=needed)


def run_sd(components: pd.DataFrame, finetune_seeds: int) -> float:
    """Standard deviation of one run's mean over its finetuning seeds, from a `variance_components` table."""
    v = components.set_index("level").variance
    return float(np.sqrt(v.iloc[1] + v.iloc[2] / finetune_seeds))


def _ranks(a: np.ndarray) -> np.ndarray:
    """Mid-ranks along the last axis."""
    return rankdata(a, axis=-1)


def _corr_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of x with the same row of y."""
    x = x - x.mean(-1, keepdims=True)
    y = y - y.mean(-1, keepdims=True)
    den = np.sqrt((x * x).sum(-1) * (y * y).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (x * y).sum(-1) / den, np.nan)


def _kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row of x with the same row of y."""
    sx = np.sign(x[..., :, None] - x[..., None, :]).astype(np.int8)
    sy = np.sign(y[..., :, None] - y[..., None, :]).astype(np.int8)
    num = (sx * sy).sum((-1, -2), dtype=np.int64)
    den = np.sqrt((sx * sx).sum((-1, -2), dtype=np.int64) * (sy * sy).sum((-1, -2), dtype=np.int64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def correlation_rows(x: np.ndarray, y: np.ndarray, method: str) -> np.ndarray:
    """Spearman, Kendall (tau-b) or Pearson correlation of each row of x with the same row of y."""
    if method == "spearman":
        return _corr_rows(_ranks(x), _ranks(y))
    if method == "kendall":
        return _kendall_rows(x, y)
    if method == "pearson":
        return _corr_rows(x, y)
    raise ValueError(f"method={method!r}; expected 'spearman', 'kendall' or 'pearson'")


def permutation_p(x: np.ndarray, y: np.ndarray, method: str, n_perm: int = 2000, seed: int = 0) -> np.ndarray:
    """Two-sided permutation p-value of the correlation of each row of x with y (y permuted within rows)."""
    rng = np.random.default_rng(seed)
    r = correlation_rows(x, y, method)
    shape = x.shape[:-1] + (n_perm, x.shape[-1])
    perms = correlation_rows(np.broadcast_to(x[..., None, :], shape),
                             rng.permuted(np.broadcast_to(y[..., None, :], shape), axis=-1), method)
    return (1 + np.sum(np.abs(perms) >= np.abs(r)[..., None] - 1e-12, -1)) / (1 + n_perm)


def fisher_interval(r: float, n: int, method: str, level: float) -> tuple[float, float]:
    """Fisher-z interval of a correlation (standard errors: Pearson 1/sqrt(n-3); Spearman Bonett & Wright
    2000; Kendall Fieller et al. 1957); NaN when n is too small for the approximation."""
    se = {"pearson": 1 / np.sqrt(n - 3) if n > 3 else np.nan,
          "spearman": np.sqrt((1 + r * r / 2) / (n - 3)) if n > 3 else np.nan,
          "kendall": np.sqrt(0.437 / (n - 4)) if n > 4 else np.nan}[method]
    z, q = np.arctanh(np.clip(r, -0.999999, 0.999999)), sps.norm.ppf(0.5 + level / 2)
    return float(np.tanh(z - q * se)), float(np.tanh(z + q * se))


def correlation(x: Sequence[float], y: Sequence[float], method: str = "spearman", n_perm: int = 2000,
                level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Correlation of paired values (one pair per independent unit, e.g. a pretraining run) with a Fisher-z
    interval and a two-sided permutation p-value; NaN pairs dropped, nothing with fewer than 3 pairs."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    n = len(x)
    if method not in ("spearman", "kendall", "pearson"):
        raise ValueError(f"method={method!r}; expected 'spearman', 'kendall' or 'pearson'")
    if n < MIN_UNITS:
        return dict(r=np.nan, ci_low=np.nan, ci_high=np.nan, p_value=np.nan, n=n)
    r = float(correlation_rows(x[None], y[None], method)[0])
    lo, hi = fisher_interval(r, n, method, level) if not np.isnan(r) else (np.nan, np.nan)
    p = float(permutation_p(x[None], y[None], method, n_perm, seed)[0]) if not np.isnan(r) else np.nan
    return dict(r=r, ci_low=lo, ci_high=hi, p_value=p, n=n)


def rank_agreement(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Kendall's tau-b of paired values with scipy's two-sided p-value (exact without ties, else asymptotic), and
    the weighted tau the transferability literature reports (Vigna 2015; You et al. 2021 rank checkpoints with
    it): scipy.stats.weightedtau's default, the hyperbolic weight 1 / (r + 1) of each element's rank r (0 = the
    largest value), added over the pair, averaged over the ranking by x and the ranking by y. A swap among the
    largest values costs more than one among the smallest: orient both so that larger is better. NaN pairs
    dropped, nothing with fewer than 3."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if len(x) < MIN_UNITS:
        return dict(tau=np.nan, p_value=np.nan, weighted_tau=np.nan, n=len(x))
    tau = sps.kendalltau(x, y)
    return dict(tau=float(tau.statistic), p_value=float(tau.pvalue),
                weighted_tau=float(sps.weightedtau(x, y).statistic), n=len(x))


def correlations(table: pd.DataFrame, properties: Sequence[str], outcomes: Sequence[str],
                 methods: Sequence[str] = ("spearman", "kendall", "pearson"), **kwargs) -> pd.DataFrame:
    """Every property against every outcome (columns of `table`, one row per unit): tidy rows of
    property, outcome, method, r, ci_low, ci_high, p_value, n."""
    rows = [dict(property=p, outcome=o, method=m, **correlation(table[p], table[o], m, **kwargs))
            for p in properties for o in outcomes for m in methods]
    return pd.DataFrame(rows)


def _residuals(a: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Residuals of each row of a after least squares on an intercept and the same row of z."""
    zc = z - z.mean(-1, keepdims=True)
    ac = a - a.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (ac * zc).sum(-1, keepdims=True) / (zc * zc).sum(-1, keepdims=True)
    return ac - np.nan_to_num(slope) * zc


def partial_rows(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Partial Spearman correlation of x and y given z, row by row: the Pearson correlation of the residuals
    of rank(x) and rank(y) after regressing each on rank(z), with the two-sided t test of a partial
    correlation (df = n - 3).

    Why not permutations: Freedman-Lane (residuals of rank(y) permuted) said "p < 0.05" in 29% of null
    studies with 6 runs when the property tracked the control closely; the t reference stays near its
    nominal rate there (tests/test_stats), at most ~7% when property and control correlate at ~0.9."""
    ex, ey = _residuals(_ranks(x), _ranks(z)), _residuals(_ranks(y), _ranks(z))
    r = _corr_rows(ex, ey)
    df = x.shape[-1] - 3
    with np.errstate(invalid="ignore", divide="ignore"):
        t = r * np.sqrt(df / np.maximum(1 - r * r, 1e-300))
    return r, 2 * sps.t.sf(np.abs(t), df)


def partial_correlation(x: Sequence[float], y: Sequence[float], z: Sequence[float]) -> dict[str, float]:
    """Partial Spearman correlation of x and y controlling for z (see `partial_rows`); NaN triples dropped,
    nothing with fewer than 4 (one degree of freedom goes to z)."""
    x, y, z = (np.asarray(v, dtype=float) for v in (x, y, z))
    keep = ~(np.isnan(x) | np.isnan(y) | np.isnan(z))
    if keep.sum() < MIN_UNITS + 1:
        return dict(r=np.nan, p_value=np.nan, n=int(keep.sum()))
    r, p = partial_rows(x[keep][None], y[keep][None], z[keep][None])
    return dict(r=float(r[0]), p_value=float(p[0]), n=int(keep.sum()))


def partial_given(x: Sequence[float], y: Sequence[float], controls: pd.DataFrame,
                  blocks: Sequence | None = None) -> dict[str, float]:
    """Partial Spearman correlation of x and y given several controls (each by its ranks) and, where given,
    fixed effects of `blocks` (e.g. the pretraining seed, shared by runs of every knob value): the Pearson
    correlation of the residuals of rank(x) and rank(y) after least squares on all of them, with the t test
    of a partial correlation (df = n - 2 - controls), and `explained`, the share of rank(x)'s variance the
    controls explain. NaN rows dropped; NaN where no degree of freedom is left or a residual vanishes (x or y
    determined by the controls)."""
    frame = pd.DataFrame(dict(x=np.asarray(x, float), y=np.asarray(y, float))).reset_index(drop=True)
    frame = pd.concat([frame, controls.reset_index(drop=True).astype(float)], axis=1)
    if blocks is not None:
        frame["block"] = np.asarray(blocks)
    frame = frame.dropna()
    design = [np.ones(len(frame))] + [rankdata(frame[c]) for c in controls.columns]
    if blocks is not None:
        design += [(frame.block == b).to_numpy(float) for b in sorted(frame.block.unique())[1:]]
    z = np.column_stack(design)
    k = np.linalg.matrix_rank(z) if len(frame) else 0
    df = int(len(frame) - k - 1)
    if df < 1:
        return dict(r=np.nan, p_value=np.nan, n=len(frame), df=df, explained=np.nan)
    rx = rankdata(frame.x)
    ex, ey = (v - z @ np.linalg.lstsq(z, v, rcond=None)[0] for v in (rx, rankdata(frame.y)))
    spread = (rx - rx.mean()) @ (rx - rx.mean())
    explained = float(1 - ex @ ex / spread) if spread > 0 else np.nan
    scale = np.sqrt((ex @ ex) * (ey @ ey))
    if scale < 1e-9 * len(frame) ** 2:  # ranks are integers: a residual this small is an exact fit
        return dict(r=np.nan, p_value=np.nan, n=len(frame), df=df, explained=explained)
    r = float(np.clip(ex @ ey / scale, -1, 1))
    t = r * np.sqrt(df / max(1 - r * r, 1e-300))
    return dict(r=r, p_value=float(2 * sps.t.sf(abs(t), df)), n=len(frame), df=df, explained=explained)


def block_rank_correlation(x: Sequence[float], y: Sequence[float], blocks: Sequence | None = None,
                           n_perm: int = 2000, seed: int = 0) -> dict[str, float]:
    """Rank correlation of x and y within blocks (e.g. architectures): ranks taken within each block and centred
    on the block's mean, then correlated (Pearson), with a two-sided permutation p that permutes y within blocks.
    One block (None) is Spearman's rho and its permutation test. A t test of the same r is liberal in the tail
    with a few runs per block (six runs, a binary x: p 0.0004 where the exact p is 0.005). Exact (every
    permutation) when there are at most n_perm of them. NaN rows dropped; NaN where a ranking is constant in every
    block."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    b = np.zeros(len(x), int) if blocks is None else pd.factorize(np.asarray(blocks, dtype=object))[0]
    keep = ~(np.isnan(x) | np.isnan(y))
    order = np.argsort(b[keep], kind="stable")
    x, y, b = x[keep][order], y[keep][order], b[keep][order]
    ex, ey = np.empty(len(x)), np.empty(len(x))
    for label in np.unique(b):
        at = b == label
        for v, e in ((x, ex), (y, ey)):
            ranks = rankdata(v[at])
            e[at] = ranks - ranks.mean()
    scale = np.sqrt((ex @ ex) * (ey @ ey))
    if len(x) < MIN_UNITS or scale == 0:
        return dict(r=np.nan, p_value=np.nan, n=len(x))
    r = float(np.clip(ex @ ey / scale, -1, 1))
    sizes = tuple(int(c) for c in np.bincount(b))
    perms = ey[_within_block_permutations(sizes, n_perm, seed)] @ ex / scale
    return dict(r=r, p_value=_permutation_p(r, perms, permutation_count(sizes) <= n_perm), n=len(x))


@functools.lru_cache(maxsize=64)
def _within_block_permutations(sizes: tuple[int, ...], n_perm: int, seed: int) -> np.ndarray:
    """Index rows, each a permutation within consecutive blocks of these sizes: every one of them (identity
    first) when there are at most n_perm (an exact test), else n_perm random ones (cached: every test of a page
    shares its blocks)."""
    if permutation_count(sizes) <= n_perm:
        starts = np.cumsum((0,) + sizes[:-1])
        per_block = [[start + np.array(q) for q in itertools.permutations(range(n))] for start, n in zip(starts, sizes)]
        return np.array([np.concatenate(rows) for rows in itertools.product(*per_block)])
    b = np.repeat(np.arange(len(sizes)), sizes)
    rng = np.random.default_rng(seed)
    return np.argsort(b + rng.random((n_perm, len(b))), axis=1)


def permutation_count(sizes: Sequence[int]) -> int:
    """How many distinct within-block permutations blocks of these sizes have: the product of their factorials."""
    return math.prod(math.factorial(n) for n in sizes)


def smallest_p(sizes: Sequence[int], n_perm: int = 2000) -> float:
    """The smallest two-sided permutation p a within-block rank test can reach at these block sizes (untied):
    2 / count when it enumerates every permutation (the identity and the reversal of every block are the two
    extremes), else 1 / (n_perm + 1), the floor of a Monte Carlo p. A test whose floor lies above its share of
    the family's alpha can never reject: it does not belong in the family (Tarone 1990)."""
    count = permutation_count(tuple(sizes))
    return 2 / count if count <= n_perm else 1 / (n_perm + 1)


def _permutation_p(r: float, perms: np.ndarray, exact: bool) -> float:
    """Two-sided p of r among its permutation values: exact when `perms` holds every permutation (the identity
    among them), else the Monte Carlo (1 + count) / (1 + len(perms))."""
    hits = np.sum(np.abs(perms) >= abs(r) - 1e-12)
    return float(hits / len(perms)) if exact else float((1 + hits) / (1 + len(perms)))


def partial_correlations(table: pd.DataFrame, properties: Sequence[str], outcomes: Sequence[str],
                         control: str) -> pd.DataFrame:
    """Every property against every outcome, controlling for `control` (one row per unit): tidy rows of
    property, outcome, control, r, p_value, n."""
    rows = [dict(property=p, outcome=o, control=control,
                 **partial_correlation(table[p], table[o], table[control]))
            for p in properties if p != control for o in outcomes]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- along one knob (dose-response)

def granulated_kendall(table: pd.DataFrame, x: str, y: str, knob: str = "knob", within: str = "pretrain_seed",
                       along: str = "knob_value") -> pd.DataFrame:
    """Jiang et al. (2019)'s granulated Kendall coefficient of columns x and y: per knob, Kendall's tau of
    x with y over the knob's values with everything else fixed (each `within` group, i.e. each seed),
    averaged over those groups (psi); the last row, knob "all", averages psi over knobs (Psi)."""
    rows = []
    for name, part in table.groupby(knob, sort=False):
        groups = [g for _, g in part.dropna(subset=[x, y]).groupby(within)]
        taus = [float(_kendall_rows(g[x].to_numpy(float)[None], g[y].to_numpy(float)[None])[0])
                for g in groups if g[along].nunique() > 1]
        taus = [t for t in taus if not np.isnan(t)]  # a group whose x or y is constant has no tau
        rows.append({knob: name, "psi": float(np.mean(taus)) if taus else np.nan, "groups": len(taus)})
    out = pd.DataFrame(rows)
    total = pd.DataFrame([{knob: "all", "psi": out.psi.mean(), "groups": int(out.groups.sum())}])
    return pd.concat([out, total], ignore_index=True)
