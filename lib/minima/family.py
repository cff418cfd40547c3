"""The verdicts of one findings page as one family: Holm's or Benjamini-Hochberg's adjustment, and the level of
simultaneous intervals.

Since the confirmatory question (`minima.confirmatory`) decides the preset's few primary hypotheses, the rest of
the page is exploratory: its tests get Benjamini-Hochberg q-values (`explore`) and a reading without a verdict
word, so that a reader never takes an exploratory line for an answer; under a global null BH still says
something false on at most alpha of pages (then every discovery is false). The architectures' verdicts keep
Holm (`adjust`).

Each verdict alone is calibrated at 5%, but a page of thirty of them says something false somewhere far
more often (in null studies of the default's shape, 22-52% of pages). A reader takes every verdict word on
the page as a claim, so the page controls the family-wise error (the chance of any false verdict) rather
than the false-discovery rate, which would accept a few false verdicts among many true ones. Two kinds
of verdict share the budget alpha:
- a *test* verdict (a p-value and the sign of the effect): Holm's step-down over the m_t tests at level
  alpha * m_t / m;
- an *interval* verdict (the claim is that an interval lies inside a region, as "the link is weak"): its
  interval at the simultaneous level 1 - alpha / m (Bonferroni).
By the union bound the page as a whole says something false with probability at most alpha.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

ALPHA = 0.05


def size(tests: pd.DataFrame, intervals: int) -> int:
    """m: the tests that have a p-value plus the interval verdicts (a test without one never rejects)."""
    return int(tests.p_value.notna().sum()) + intervals


def interval_level(m: int, alpha: float = ALPHA) -> float:
    """The confidence level of each interval verdict in a family of m: 1 - alpha / m."""
    return 1 - alpha / max(m, 1)


def adjusted(p_values: pd.Series, m: int, method: str = "holm") -> pd.Series:
    """Holm-adjusted p-values (or BH q-values, `method="bh"`) of the tests, scaled to their share m_t / m of the
    family's alpha (capped at 1): compare them with alpha. NaN stays NaN."""
    out = pd.Series(np.nan, index=p_values.index)
    ok = p_values.notna()
    if ok.any():
        step = holm if method == "holm" else bh
        out[ok] = np.minimum(step(p_values[ok].to_numpy(float)) * m / ok.sum(), 1.0)
    return out


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values: the k-th smallest times (n - k + 1), made monotone, capped at 1.

    Equal to statsmodels' multipletests(method="holm") (tests/test_findings.py), which runs gc.collect() on
    every call (0.25 s here): a simulation of a few hundred pages would spend a minute collecting garbage."""
    order = np.argsort(p)
    stepped = np.maximum.accumulate(p[order] * np.arange(len(p), 0, -1))
    out = np.empty_like(stepped)
    out[order] = np.minimum(stepped, 1.0)
    return out


def bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values: the k-th smallest times n / k, made monotone from the top, capped at 1 (equal
    to statsmodels' multipletests(method="fdr_bh"), tests/test_findings.py)."""
    order = np.argsort(p)
    scaled = p[order] * len(p) / np.arange(1, len(p) + 1)
    stepped = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty_like(stepped)
    out[order] = np.minimum(stepped, 1.0)
    return out


def decide(p_adjusted: float, sign: float, why_not: str, alpha: float = ALPHA) -> str:
    """Three words from an adjusted p and the sign of the effect on the claim (+1 supports it): holds, does
    not hold, or `why_not` (a "cannot tell (...)" that says why)."""
    if np.isnan(p_adjusted) or p_adjusted >= alpha or np.isnan(sign) or sign == 0:
        return why_not
    return "holds" if sign > 0 else "does not hold"


def adjust(tests: pd.DataFrame, intervals: int = 0, alpha: float = ALPHA) -> pd.DataFrame:
    """A table of test verdicts (columns p_value, sign and why_not) with p_adjusted and the verdict from it,
    in a family that also holds `intervals` interval verdicts."""
    m = size(tests, intervals)
    p_adj = adjusted(tests.p_value, m)
    verdicts = [decide(q, s, w if not p < alpha else f"cannot tell (significant alone, not within the family of {m})",
                       alpha) for p, q, s, w in zip(tests.p_value, p_adj, tests.sign, tests.why_not)]
    return tests.assign(p_adjusted=p_adj, verdict=verdicts)



def reading(q: float, sign: float, why_not: str, alpha: float = ALPHA) -> str:
    """An exploratory test in words, without a verdict word: its q-value and which way the effect points."""
    if np.isnan(q):
        return f"exploratory, not tested: {why_not}"
    side = "" if np.isnan(sign) or sign == 0 else ", the effect points with the claim" if sign > 0 else (
        ", the effect points against the claim")
    return f"exploratory: q = {q:.2g}{' < ' + format(alpha, 'g') if q < alpha else ''}{side}"


def explore(tests: pd.DataFrame, intervals: int = 0, alpha: float = ALPHA) -> pd.DataFrame:
    """A table of exploratory tests (columns p_value, sign and why_not) with their BH q-value (p_adjusted), the
    decision it would give (`decide`; for the calibration tests, never printed) and the reading the page prints
    (`reading`), in a family that also holds `intervals` interval verdicts."""
    q = adjusted(tests.p_value, size(tests, intervals), "bh")
    return tests.assign(p_adjusted=q, decision=[decide(v, s, w, alpha) for v, s, w in zip(q, tests.sign, tests.why_not)],
                        verdict=[reading(v, s, w, alpha) for v, s, w in zip(q, tests.sign, tests.why_not)])
