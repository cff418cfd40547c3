"""Statistics over seeds: means, spreads, bootstrap intervals, correlations, variance shares."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata


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


def bootstrap_ci(values: Sequence[float], level: float = 0.95, n_boot: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (NaNs dropped; a single value gives a point)."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return (np.nan, np.nan)
    means = v[np.random.default_rng(seed).integers(0, len(v), (n_boot, len(v)))].mean(1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def summarize_ci(table: pd.DataFrame, by: str | Sequence[str], metrics: Sequence[str],
                 level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean, sd, n and a bootstrap interval of the mean of each metric per group (tidy: one row
    per group and metric)."""
    rows = []
    for key, part in table.groupby(by):
        key = key if isinstance(key, tuple) else (key,)
        for m in metrics:
            v = part[m].dropna()
            lo, hi = bootstrap_ci(v, level, n_boot, seed)
            rows.append(dict(zip([by] if isinstance(by, str) else by, key), metric=m, mean=v.mean(),
                             std=v.std(), n=len(v), ci_low=lo, ci_high=hi))
    return pd.DataFrame(rows)


def _corr_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of x with the same row of y."""
    x = x - x.mean(-1, keepdims=True)
    y = y - y.mean(-1, keepdims=True)
    den = np.sqrt((x * x).sum(-1) * (y * y).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (x * y).sum(-1) / den, np.nan)


def correlation(x: Sequence[float], y: Sequence[float], method: str = "spearman", n_boot: int = 2000,
                n_perm: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Correlation of paired values with a bootstrap interval (pairs resampled) and a two-sided
    permutation p-value; NaN pairs dropped."""
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method={method!r}; expected 'spearman' or 'pearson'")
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    n = len(x)
    if n < 3:
        return dict(r=np.nan, ci_low=np.nan, ci_high=np.nan, p_value=np.nan, n=n)

    def r_of(a, b):
        if method == "spearman":
            a, b = rankdata(a, axis=-1), rankdata(b, axis=-1)
        return _corr_rows(a, b)

    rng = np.random.default_rng(seed)
    r = float(r_of(x[None], y[None])[0])
    idx = rng.integers(0, n, (n_boot, n))
    boots = r_of(x[idx], y[idx])
    boots = boots[~np.isnan(boots)]
    tail = (1 - level) / 2
    lo, hi = (np.quantile(boots, [tail, 1 - tail]) if len(boots) else (np.nan, np.nan))
    perms = r_of(np.broadcast_to(x, (n_perm, n)), rng.permuted(np.broadcast_to(y, (n_perm, n)), axis=1))
    p = (1 + np.sum(np.abs(perms) >= abs(r) - 1e-12)) / (1 + n_perm) if not np.isnan(r) else np.nan
    return dict(r=r, ci_low=float(lo), ci_high=float(hi), p_value=float(p), n=n)


def correlations(table: pd.DataFrame, properties: Sequence[str], outcomes: Sequence[str],
                 methods: Sequence[str] = ("spearman", "pearson"), **kwargs) -> pd.DataFrame:
    """Every property against every outcome (columns of `table`, one row per unit): tidy rows of
    property, outcome, method, r, ci_low, ci_high, p_value, n."""
    rows = [dict(property=p, outcome=o, method=m, **correlation(table[p], table[o], m, **kwargs))
            for p in properties for o in outcomes for m in methods]
    return pd.DataFrame(rows)


def variance_shares(table: pd.DataFrame, outcome: str,
                    levels: Sequence[str] = ("method", "pretrain_seed", "finetune_seed")) -> pd.DataFrame:
    """Split the total sum of squares of `outcome` over nested levels: between the groups of the
    first level, between sub-groups within a group, ..., and the rest within the finest groups.
    Returns one row per level with its sum of squares and share of the total."""
    t = table.dropna(subset=[outcome])
    y = t[outcome].to_numpy(dtype=float)
    total = float(((y - y.mean()) ** 2).sum())
    rows, previous = [], np.full(len(t), y.mean())
    for depth in range(1, len(levels)):
        means = t.groupby(list(levels[:depth]))[outcome].transform("mean").to_numpy()
        rows.append(dict(level=levels[depth - 1], sum_of_squares=float(((means - previous) ** 2).sum())))
        previous = means
    rows.append(dict(level=levels[-1], sum_of_squares=float(((y - previous) ** 2).sum())))
    out = pd.DataFrame(rows)
    out["share"] = out.sum_of_squares / total if total > 0 else np.nan
    return out.assign(outcome=outcome)
