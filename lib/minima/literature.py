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
MISSED = "the setting did not produce the minimum that the method exists to find"
NAMES = dict(hessian_top="top Hessian eigenvalue", hessian_trace="Hessian trace")


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


def _interval(effect: float, low: float, high: float, df: float, p: float, fmt: str, level: float,
              p_adjusted: float = np.nan) -> str:
    """ "effect [low, high] (level t interval, df, p, adjusted p)", or the effect alone with the reason there
    is no interval."""
    if np.isnan(low):
        return f"{effect:{fmt}} (no interval: fewer than 2 pretraining runs per side)"
    adjusted = "" if np.isnan(p_adjusted) else f", Holm-adjusted {stats.p_text(p_adjusted)}"
    return (f"{effect:{fmt}} [{low:{fmt}}, {high:{fmt}}] ({level:.2%} t interval, df {df:.0f}, "
            f"{stats.p_text(p)}{adjusted})")


def evidence(row: pd.Series, baseline: str = "adam") -> str:
    """What the study measured for one row of `check`, in words."""
    ratio = row.scale == "ratio"
    fmt, kind = (".3g", "geometric means") if ratio else (".3f", "means")
    effect = (f"ratio {row.method}/{baseline} " if ratio else f"difference {row.method} - {baseline} ") + _interval(
        row.effect, row.ci_low, row.ci_high, row.df, row.p_value, fmt if ratio else "+.3f", row.level,
        row.get("p_adjusted", np.nan))
    text = (f"{row.property}: {baseline} {row[baseline]:{fmt}}, {row.method} {row.value:{fmt}} ({kind} over "
            f"{row.baseline_runs} and {row.runs} pretraining runs); {effect}")
    if row.verdict_at_equal_loss:
        equal = ("" if np.isnan(row.ratio_at_equal_loss) else "ratio " + _interval(
            row.ratio_at_equal_loss, row.ci_low_at_equal_loss, row.ci_high_at_equal_loss, row.df_at_equal_loss,
            row.p_value_at_equal_loss, ".3g", row.level, row.get("p_adjusted_at_equal_loss", np.nan)) + ", ")
        text += (f". At equal train loss (log {row.property} on method and log train loss, every run): "
                 f"{equal}**{row.verdict_at_equal_loss}**")
    return text + "."


def missed(table: pd.DataFrame) -> list[str]:
    """One sentence per method whose aim signatures do not all hold (the verdicts say why)."""
    sentences = []
    for method, rows in table[table.aim & (table.verdict != "holds")].groupby("method", sort=False):
        why = "; ".join(f"{r.claim}: {r.verdict}" for r in rows.itertuples())
        unsure = "" if (rows.verdict == "does not hold").any() else ", or this design cannot show that it did"
        sentences.append(f"{method} misses its own signature ({why}): {MISSED}{unsure}.")
    return sentences


def lines(table: pd.DataFrame, baseline: str = "adam") -> list[str]:
    """Markdown lines of a `check` table: per signature the claim, its source, the verdict in bold and the
    evidence; then the methods that miss their signature."""
    if table.empty:
        return [f"No literature check: each signature compares its method with {baseline}, and this study lacks "
                f"{baseline} or every method with a signature."]
    claims = [f"{r.method} {r.claim} relative to {baseline} ({r.source}): **{r.verdict}**. {evidence(r, baseline)}"
              for _, r in table.iterrows()]
    return claims + (missed(table) or ["Every method shows the signature it exists for."])


def loss_sentences(properties: pd.DataFrame, control: str = CONTROL) -> list[str]:
    """Per curvature: does it move with the train loss over the study's runs (Spearman, permutation p)?"""
    sentences = []
    for column in RATIO:
        rho = stats.correlation(properties[control], properties[column], "spearman")
        if np.isnan(rho["r"]):
            sentences.append(f"The {NAMES[column]} against train loss: only {rho['n']} runs, no correlation.")
            continue
        moves = (("rises" if rho["r"] > 0 else "falls") + " as the train loss rises" if rho["p_value"] < 0.05
                 else "is not shown to move with the train loss")
        sentences.append(f"Over {rho['n']} pretraining runs the {NAMES[column]} {moves} "
                         f"(Spearman {rho['r']:+.2f}, permutation {stats.p_text(rho['p_value'])}; "
                         f"ranks, so the same on log scales).")
    return sentences
