"""Joins every notebook's tables into one row per pretraining run and re-tests the report's claims."""
from __future__ import annotations

import numpy as np
import pandas as pd

from minima import landscape, robustness, runs, stats
from minima.config import Study

UNSEEN = ("masking", "fgsm", "energy")  # perturbations no method trained on
OUTCOMES = ("test_acc", "epochs_to_threshold", "distance_all")


def run_properties(study: Study) -> pd.DataFrame:
    """One row per pretraining run: its test accuracy, robustness scores (normalised areas on the
    test split), the mean loss barrier to every other run and the mean distance to them."""
    props = runs.pretrain_all(study)[["run", "method", "seed", "test_acc", "test_loss"]]
    props = props.rename(columns={"test_acc": "pretrain_test_acc", "test_loss": "pretrain_test_loss"})
    rob = robustness.summarize_study(study)
    rob = rob[rob.split == "test"].pivot_table(index=["method", "seed"], columns="measure", values="auc")
    rob.columns = [f"{m}_auc" for m in rob.columns]
    rob["robustness"] = rob[[f"{m}_auc" for m in UNSEEN if f"{m}_auc" in rob]].mean(axis=1)
    props = props.merge(rob.reset_index(), on=["method", "seed"], how="left")
    mode = "recompute" if "recompute" in study.bn_modes else study.bn_modes[0]
    bar = landscape.barrier_table(study)
    bar = bar[(bar.bn_mode == mode) & (bar.split == "test")]
    ends = pd.concat([bar.rename(columns={"method_a": "method", "seed_a": "seed"}),
                      bar.rename(columns={"method_b": "method", "seed_b": "seed"})])
    props = props.merge(ends.groupby(["method", "seed"]).barrier.mean().rename("mean_barrier").reset_index(),
                        on=["method", "seed"], how="left")
    dist = landscape.distance_table(study)
    dist = dist[(dist.group == "non_bn") & ((dist.method_a != dist.method_b) | (dist.seed_a != dist.seed_b))]
    mean_dist = dist.groupby(["method_a", "seed_a"]).distance.mean().rename("mean_distance").reset_index()
    return props.merge(mean_dist.rename(columns={"method_a": "method", "seed_a": "seed"}),
                       on=["method", "seed"], how="left")


def run_outcomes(finetuning: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Finetuning outcomes per pretraining run (mean and sd over finetuning seeds) for one protocol."""
    part = finetuning[(finetuning.protocol == protocol) & (finetuning.method != runs.SCRATCH)]
    out = part.groupby(["method", "pretrain_seed"])[list(OUTCOMES)].agg(["mean", "std"])
    out.columns = [f"{o}_{s}" if s == "std" else o for o, s in out.columns]
    return out.reset_index().rename(columns={"pretrain_seed": "seed"})


def scoreboard(properties: pd.DataFrame, finetuning: pd.DataFrame, protocol: str,
               higher_is_better: dict[str, bool]) -> pd.DataFrame:
    """Method x metric: mean, bootstrap 95% interval and whether the method is the best (marked;
    the from-scratch baseline is shown but not ranked)."""
    part = finetuning[finetuning.protocol == protocol]
    metrics = [m for m in higher_is_better if m in properties]
    table = pd.concat([stats.summarize_ci(properties, "method", metrics),
                       stats.summarize_ci(part, "method", [o for o in OUTCOMES if o in higher_is_better])])
    ranked = table[table.method != runs.SCRATCH]
    best = {m: (g["mean"].max() if higher_is_better[m] else g["mean"].min()) for m, g in ranked.groupby("metric")}
    is_best = np.isclose(table["mean"], table.metric.map(best)) & (table.method != runs.SCRATCH)
    return table.assign(best=is_best).reset_index(drop=True)


def difference_ci(a: pd.Series, b: pd.Series, n_boot: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a minus mean of b, with a bootstrap 95% interval (each sample resampled on its own)."""
    a, b = a.dropna().to_numpy(float), b.dropna().to_numpy(float)
    rng = np.random.default_rng(seed)
    boots = (a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1)
             - b[rng.integers(0, len(b), (n_boot, len(b)))].mean(1))
    return float(a.mean() - b.mean()), float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def claims(properties: pd.DataFrame, outcomes: pd.DataFrame, finetuning: pd.DataFrame,
           protocol: str) -> pd.DataFrame:
    """The report's claims, each re-tested: a verdict and the numbers behind it."""
    joined = properties.merge(outcomes, on=["method", "seed"])
    rows = []

    most_robust = joined.sort_values("robustness", ascending=False).iloc[0]
    least_travel = joined.sort_values("distance_all").iloc[0]
    rho = stats.correlation(joined.robustness, joined.distance_all, "spearman")
    same = most_robust.run == least_travel.run
    rows.append(dict(
        claim="the most robust checkpoint travels least in weight space",
        verdict="holds" if same else "does not hold",
        evidence=(f"most robust run (mean normalised area over {', '.join(UNSEEN)}): {most_robust.run} "
                  f"({most_robust.robustness:.3f}), distance {most_robust.distance_all:.2f}; least travelled: "
                  f"{least_travel.run} ({least_travel.distance_all:.2f}); Spearman(robustness, distance) = "
                  f"{rho['r']:.2f} [{rho['ci_low']:.2f}, {rho['ci_high']:.2f}], p = {rho['p_value']:.2f}, n = {rho['n']}")))

    part = finetuning[(finetuning.protocol == protocol)]
    for other in ("swa", "noisy_adam"):
        if {other, "adam"} <= set(part.method):
            d, lo, hi = difference_ci(part[part.method == other].test_acc, part[part.method == "adam"].test_acc)
            verdict = "holds" if lo > 0 else ("same direction, not significant" if d > 0 else "does not hold")
            rows.append(dict(claim=f"{other} finetunes to a higher test accuracy than adam", verdict=verdict,
                             evidence=f"difference {d:+.1%}, 95% bootstrap interval [{lo:+.1%}, {hi:+.1%}] "
                                      f"over all finetuning runs"))

    rho = stats.correlation(joined.robustness, joined.test_acc, "spearman")
    weak = np.isnan(rho["r"]) or abs(rho["r"]) < 0.5 or rho["p_value"] > 0.05
    rows.append(dict(claim="the link between robustness and finetuned accuracy is weak or noisy",
                     verdict="holds" if weak else "does not hold: the link is strong",
                     evidence=f"Spearman = {rho['r']:.2f} [{rho['ci_low']:.2f}, {rho['ci_high']:.2f}], "
                              f"p = {rho['p_value']:.2f}, n = {rho['n']} pretraining runs"))

    shares = stats.variance_shares(part[part.method != runs.SCRATCH], "test_acc").set_index("level").share
    rows.append(dict(claim="how much of the spread in finetuned accuracy comes from seeds rather than methods",
                     verdict=f"seeds {shares.drop('method').sum():.0%}, methods {shares['method']:.0%}",
                     evidence=", ".join(f"{k}: {v:.0%}" for k, v in shares.items())))
    return pd.DataFrame(rows)


def scoreboard_text(board: pd.DataFrame) -> pd.DataFrame:
    """The scoreboard as a metric x method grid of "mean [low, high]", the best marked with *."""
    text = board.apply(lambda r: f"{r['mean']:.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}]" + (" *" if r.best else ""),
                       axis=1)
    return board.assign(text=text).pivot(index="metric", columns="method", values="text").fillna("")
