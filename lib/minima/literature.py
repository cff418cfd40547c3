"""Each method's signature effect as the literature states it, checked inside the study.

A method exists to find a kind of minimum: SAM one with a low top Hessian eigenvalue, SWA a wide one
with a low trace, adversarial training one that withstands PGD. Each `Signature` says which property of
a run (a column of `conclusions.run_properties`) should move which way against the baseline's runs, and
`check` measures it the way the method comparisons do (`stats.method_differences`: difference of per-run
means, the pretraining run the unit). Curvatures scale multiplicatively, so they are compared on logs and
reported as a ratio method / baseline (the ratio of geometric means), the rest as differences.

The Hessian of cross-entropy shrinks as the loss does, so a method that drove its train loss lower looks
flatter whatever its minimum is like (Liu et al. 2022 compare minima at equal loss). For curvatures
`check` also gives the ratio at equal train loss, from an ANCOVA over every run of the study.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from statsmodels.regression.linear_model import OLS

from minima import stats

RATIO = ("hessian_top", "hessian_trace")  # curvatures: compared on logs, reported as ratios
CONTROL = "pretrain_train_loss"  # the final loss on the clean train set, in nats
PER_RUN = ("method", "pretrain_seed", "run")  # a run table has one value per run: no finetuning seeds to average
SPANS_ONE = "cannot tell (interval spans a ratio of 1)"
CONFOUNDED = "cannot tell (train loss does not vary apart from the method)"


@dataclass(frozen=True)
class Signature:
    """A paper's claim about a method: its runs' `property` is `expected` (+1 higher, -1 lower) than the baseline's."""

    method: str
    claim: str
    source: str
    property: str
    expected: int
    aim: bool = True  # the minimum the method exists to find; False for a known cost of it


SIGNATURES = (
    Signature("sam", "lowers the top Hessian eigenvalue", "Foret et al. 2021", "hessian_top", -1),
    Signature("swa", "lowers the Hessian trace", "Izmailov et al. 2018", "hessian_trace", -1),
    Signature("swa", "widens the minimum (local energy: accuracy kept under relative weight noise)",
              "Izmailov et al. 2018", "energy_auc", 1),
    Signature("adversarial", "raises accuracy under PGD", "Madry et al. 2018", "pgd_auc", 1),
    Signature("adversarial", "costs clean test accuracy", "Madry et al. 2018", "pretrain_test_accuracy", -1,
              aim=False),
    Signature("noisy_adam", "raises accuracy under Gaussian noise", "the study report", "gaussian_auc", 1),
    Signature("entropy_sgd", "finds a flatter local energy (accuracy kept under relative weight noise)",
              "Chaudhari et al. 2017", "energy_auc", 1),
)


def _directed_verdict(low: float, high: float, expected: int, ratio: bool) -> str:
    """The verdict on "moved the expected way" from an interval of the effect (on logs for a ratio)."""
    low, high = (low, high) if expected > 0 else (-high, -low)
    word = stats.verdict(low, high)
    return SPANS_ONE if ratio and word == stats.SPANS_ZERO else word


def _values(properties: pd.DataFrame, column: str) -> pd.Series:
    """The column on the scale it is compared on: logs of the positive values for a curvature, else as is."""
    v = properties[column]
    return np.log(v.where(v > 0)) if column in RATIO else v


def at_equal_loss(properties: pd.DataFrame, column: str, method: str, expected: int = -1, baseline: str = "adam",
                  control: str = CONTROL, level: float = 0.95) -> dict[str, float | str]:
    """OLS of log(column) on method indicators and log(control) over every run with both positive: the
    method's ratio to the baseline at equal control, its t interval, p-value (df = runs - methods - 1) and
    verdict on the `expected` side; NaN unless both have 2 runs, the residuals a degree of freedom and
    control varies apart from the method."""
    t = properties[(properties[column] > 0) & (properties[control] > 0)]
    counts = t.method.value_counts()
    others = [m for m in counts.index if m != baseline]
    x = np.column_stack([np.ones(len(t))] + [t.method == m for m in others] + [np.log(t[control])]).astype(float)
    nan = dict(ratio=np.nan, ci_low=np.nan, ci_high=np.nan, p_value=np.nan, df=np.nan)
    if min(counts.get(method, 0), counts.get(baseline, 0)) < 2 or len(t) <= x.shape[1]:
        return nan | dict(verdict=stats.TOO_FEW)
    if np.linalg.matrix_rank(x) < x.shape[1]:
        return nan | dict(verdict=CONFOUNDED)
    fit = OLS(np.log(t[column].to_numpy(float)), x).fit()
    i = 1 + others.index(method)
    low, high = fit.conf_int(1 - level)[i]
    return dict(ratio=float(np.exp(fit.params[i])), ci_low=float(np.exp(low)), ci_high=float(np.exp(high)),
                p_value=float(fit.pvalues[i]), df=float(fit.df_resid),
                verdict=_directed_verdict(low, high, expected, ratio=True))


def _row(properties: pd.DataFrame, s: Signature, baseline: str, level: float) -> dict:
    """One signature measured: both sides' means, the effect with its interval and verdict, and for a
    curvature the same at equal train loss."""
    ratio = s.property in RATIO
    table = properties[list(PER_RUN)].assign(value=_values(properties, s.property))
    d = stats.method_differences(table, "value", baseline, PER_RUN, level).set_index("method")
    c = d.loc[s.method] if s.method in d.index else pd.Series(np.nan, index=d.columns)
    means = table.groupby("method").value.mean()
    back = np.exp if ratio else (lambda v: v)
    row = dict(method=s.method, claim=s.claim, source=s.source, property=s.property,
               expected="higher" if s.expected > 0 else "lower", **{baseline: back(means.get(baseline, np.nan))},
               value=back(means.get(s.method, np.nan)), effect=back(c.difference), ci_low=back(c.ci_low),
               ci_high=back(c.ci_high), scale="ratio" if ratio else "difference", p_value=c.p_value,
               runs=int(table[table.method == s.method].value.notna().sum()),
               baseline_runs=int(table[table.method == baseline].value.notna().sum()), df=c.df,
               verdict=_directed_verdict(c.ci_low, c.ci_high, s.expected, ratio), aim=s.aim)
    equal = (at_equal_loss(properties, s.property, s.method, s.expected, baseline, level=level)
             if ratio and CONTROL in properties
             else dict(ratio=np.nan, ci_low=np.nan, ci_high=np.nan, p_value=np.nan, df=np.nan, verdict=""))
    return row | {f"{k}_at_equal_loss": v for k, v in equal.items()}


def check(properties: pd.DataFrame, baseline: str = "adam", signatures: tuple[Signature, ...] = SIGNATURES,
          level: float = 0.95) -> pd.DataFrame:
    """One row per signature whose method, baseline and property are in the run table (`run_properties`):
    both sides' means (geometric for a ratio), the effect (method / baseline, or method - baseline) with
    its t interval at `level`, p-value, runs and verdict on the expected direction; `*_at_equal_loss` for
    curvatures (`at_equal_loss`; empty verdict where it does not apply); `level` in every row."""
    methods = set(properties.method)
    rows = [_row(properties, s, baseline, level) for s in signatures
            if baseline in methods and s.method in methods and s.property in properties]
    columns = ["method", "claim", "source", "property", "expected", baseline, "value", "effect", "ci_low", "ci_high",
               "scale", "p_value", "runs", "baseline_runs", "df", "verdict", "aim"]
    equal = [f"{k}_at_equal_loss" for k in ("ratio", "ci_low", "ci_high", "p_value", "df", "verdict")]
    return pd.DataFrame(rows, columns=columns + equal).assign(level=level)


def loss_correlations(properties: pd.DataFrame, control: str = CONTROL) -> dict[str, dict]:
    """Per curvature of `RATIO`: its Spearman correlation (permutation p) with the train loss over the runs."""
    return {column: stats.correlation(properties[control], properties[column], "spearman") for column in RATIO}
