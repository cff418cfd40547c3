"""Joins the study's tables into one row per pretraining run, scores the methods and re-tests the report's claims."""
from __future__ import annotations

import numpy as np
import pandas as pd

from minima import knob_sweeps, landscape, literature, sharpness, stats, tables
from minima.finetuning import SCRATCH
from minima.config import Study

UNSEEN = ("masking", "fgsm", "energy")  # perturbations no method trained on
MIN_RUNS_FOR_RANKS = 5  # with 4 runs the smallest two-sided permutation p of a rank correlation is 1/12
OUTCOMES = ("test_accuracy", "epochs_to_threshold", "distance_all")
FLATNESS = tuple(sharpness.RUN_MEASURES)  # hessian_top, hessian_trace, adaptive_average, adaptive_worst
HIGHER_IS_BETTER = dict(pretrain_test_accuracy=True, robustness=True, gaussian_auc=True, masking_auc=True,
                        fgsm_auc=True, pgd_auc=True, energy_auc=True, mean_barrier=False,
                        **dict.fromkeys(FLATNESS, False), test_accuracy=True, epochs_to_threshold=False,
                        distance_all=False)
INPUTS = ("pretraining", "robustness_summary", "flatness", "landscape_barriers", "landscape_distances", "finetuning")
PROPERTIES = ("robustness", "pretrain_test_accuracy", "gaussian_auc", "masking_auc", "fgsm_auc", "energy_auc",
              *FLATNESS, "mean_barrier", "mean_distance")


def run_properties(study: Study) -> pd.DataFrame:
    """One row per pretraining run: its test accuracy and loss, its final train loss (clean images, eval
    mode: the control for flatness, which shrinks with it), robustness scores (normalised areas on the
    test split), flatness measures (`FLATNESS`), the mean loss barrier to every other run and the mean
    distance to them."""
    props = tables.pretrained(study)[["run", "method", "pretrain_seed", "test_accuracy", "test_loss", "train_loss"]]
    props = props.rename(columns={"test_accuracy": "pretrain_test_accuracy", "test_loss": "pretrain_test_loss",
                                  "train_loss": "pretrain_train_loss"})
    rob = tables.robustness_summary(study)
    rob = rob[rob.split == "test"].pivot_table(index=["method", "pretrain_seed"], columns="measure", values="auc")
    rob.columns = [f"{m}_auc" for m in rob.columns]
    rob["robustness"] = rob[[f"{m}_auc" for m in UNSEEN if f"{m}_auc" in rob]].mean(axis=1)
    props = props.merge(rob.reset_index(), on=["method", "pretrain_seed"], how="left")
    flat = sharpness.run_measures(tables.flatness(study)).drop(columns="run")
    props = props.merge(flat, on=["method", "pretrain_seed"], how="left")
    mode = landscape.judging_mode(study.bn_modes)
    bar = tables.barriers(study)
    bar = bar[(bar.bn_mode == mode) & (bar.split == "test")]
    ends = pd.concat([bar.rename(columns={"method_a": "method", "pretrain_seed_a": "pretrain_seed"}),
                      bar.rename(columns={"method_b": "method", "pretrain_seed_b": "pretrain_seed"})])
    props = props.merge(ends.groupby(["method", "pretrain_seed"]).barrier.mean().rename("mean_barrier").reset_index(),
                        on=["method", "pretrain_seed"], how="left")
    dist = tables.distances(study)
    other = (dist.method_a != dist.method_b) | (dist.pretrain_seed_a != dist.pretrain_seed_b)
    dist = dist[(dist.group == "non_bn") & other]
    mean_dist = dist.groupby(["method_a", "pretrain_seed_a"]).distance.mean().rename("mean_distance").reset_index()
    return props.merge(mean_dist.rename(columns={"method_a": "method", "pretrain_seed_a": "pretrain_seed"}),
                       on=["method", "pretrain_seed"], how="left")


def joined_runs(study: Study) -> pd.DataFrame:
    """One row per pretraining run: its properties beside its finetuning outcomes (first protocol)."""
    outcomes = run_outcomes(tables.finetuned(study), study.protocols[0])
    return run_properties(study).merge(outcomes, on=["method", "pretrain_seed"])


def study_scoreboard(study: Study) -> pd.DataFrame:
    """The scoreboard of the study's first protocol, from its tables (computed if missing)."""
    return scoreboard(run_properties(study), tables.finetuned(study), study.protocols[0], HIGHER_IS_BETTER)


def missing_inputs(study: Study) -> list[str]:
    """The tables the scoreboard needs that are not stored yet for the study's current config."""
    keys = dict(pretraining=tables.pretraining_keys(study),
                robustness_summary=tables.pretraining_keys(study) + tables.ROBUSTNESS_KEYS,
                flatness=tables.pretraining_keys(study) + tables.FLATNESS_KEYS,
                landscape_barriers=tables.pretraining_keys(study) + tables.SLICE_KEYS,
                landscape_distances=tables.pretraining_keys(study), finetuning=tables.finetuning_keys(study))
    return [name for name in INPUTS if not tables.is_cached(study, name, keys[name])]


def run_outcomes(finetuning: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Finetuning outcomes per pretraining run (mean and sd over finetuning seeds) for one protocol."""
    part = finetuning[(finetuning.protocol == protocol) & (finetuning.method != SCRATCH)]
    out = part.groupby(["method", "pretrain_seed"])[list(OUTCOMES)].agg(["mean", "std"])
    out.columns = [f"{o}_{s}" if s == "std" else o for o, s in out.columns]
    return out.reset_index()


def property_outcome_pairs(joined: pd.DataFrame) -> pd.DataFrame:
    """Long form of a run table (`run_properties` joined with `run_outcomes`): one row per run, property and
    outcome, with the property's value and the outcome's mean and sd over finetuning seeds."""
    ids = joined[["run", "method", "pretrain_seed"]]
    return pd.concat([ids.assign(property=p, value=joined[p], outcome=o, outcome_value=joined[o],
                                 outcome_std=joined[f"{o}_std"])
                      for p in PROPERTIES if p in joined for o in OUTCOMES], ignore_index=True)


def pretrained(finetuning: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Finetuning runs of one protocol that started from a pretrained checkpoint (the scratch baseline left out)."""
    return finetuning[(finetuning.protocol == protocol) & (finetuning.method != SCRATCH)]


def scoreboard(properties: pd.DataFrame, finetuning: pd.DataFrame, protocol: str,
               higher_is_better: dict[str, bool]) -> pd.DataFrame:
    """Method x metric: mean over pretraining runs (finetuning seeds averaged within a run first; the
    from-scratch baseline's runs are its finetuning seeds), a t 95% interval over runs (none with fewer
    than 3) and whether the method is the best (the baseline is shown but not ranked)."""
    part = finetuning[finetuning.protocol == protocol]
    part = part.assign(unit=np.where(part.method == SCRATCH, part.finetune_seed, part.pretrain_seed))
    metrics = [m for m in higher_is_better if m in properties]
    table = pd.concat([stats.summarize_ci(properties, "method", metrics),
                       stats.summarize_ci(part, "method", [o for o in OUTCOMES if o in higher_is_better], "unit")])
    ranked = table[table.method != SCRATCH]
    best = {m: (g["mean"].max() if higher_is_better[m] else g["mean"].min()) for m, g in ranked.groupby("metric")}
    is_best = np.isclose(table["mean"], table.metric.map(best)) & (table.method != SCRATCH)
    return table.assign(best=is_best).reset_index(drop=True)


def method_comparisons(finetuning: pd.DataFrame, protocol: str, baseline: str = "adam") -> pd.DataFrame:
    """Every method minus the baseline on every finetuning outcome, from per-run means (stats.method_differences)."""
    part = pretrained(finetuning, protocol)
    return pd.concat([stats.method_differences(part, o, baseline) for o in OUTCOMES], ignore_index=True)


def variance_table(finetuning: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Variance components (method, pretraining run, finetuning seed) of every finetuning outcome."""
    part = pretrained(finetuning, protocol)
    return pd.concat([stats.variance_components(part, o) for o in OUTCOMES], ignore_index=True)


def power_sentences(finetuning: pd.DataFrame, protocol: str, baseline: str = "adam") -> list[str]:
    """Per outcome: the smallest method difference this design detects with 80% power and the pretraining
    runs per method needed to resolve the largest observed difference from the baseline."""
    part = pretrained(finetuning, protocol)
    runs_per_method = int(part.groupby("method").pretrain_seed.nunique().min())
    seeds = int(part.groupby(["method", "pretrain_seed"]).finetune_seed.nunique().min())
    comparisons, components = method_comparisons(finetuning, protocol, baseline), variance_table(finetuning, protocol)
    sentences = []
    for outcome in OUTCOMES:
        diffs = comparisons[comparisons.outcome == outcome].difference
        observed = float(diffs.iloc[diffs.abs().argmax()]) if len(diffs) else np.nan
        sentences.append(stats.power_statement(components[components.outcome == outcome], observed,
                                               runs_per_method, part.method.nunique(), seeds))
    return sentences


def _rank_evidence(x: pd.Series, y: pd.Series, z: pd.Series, names: str) -> tuple[dict, str]:
    """Spearman (Fisher-z interval, permutation p), Kendall and the partial Spearman controlling for
    pretraining accuracy, as one evidence string; interval left out where it cannot mean anything."""
    rho, tau = stats.correlation(x, y, "spearman"), stats.correlation(x, y, "kendall")
    part = stats.partial_correlation(x, y, z)
    if rho["n"] < stats.MIN_UNITS:
        return rho, f"{names}: only {rho['n']} pretraining run(s), no correlation can be computed"
    interval = (f" [{rho['ci_low']:.2f}, {rho['ci_high']:.2f}]" if not np.isnan(rho["ci_low"])
                else " (too few runs for an interval)")
    partial = (f"; controlling for pretraining test accuracy, partial Spearman = {part['r']:.2f} "
               f"({stats.p_text(part['p_value'])})" if not np.isnan(part["r"]) else "")
    return rho, (f"{names}: Spearman = {rho['r']:.2f}{interval}, permutation {stats.p_text(rho['p_value'])}, "
                 f"Kendall tau = {tau['r']:.2f} ({stats.p_text(tau['p_value'])}), "
                 f"n = {rho['n']} pretraining runs{partial}")


def _correlation_verdict(rho: dict, sign: int) -> str:
    """Three words for "the correlation has this sign", from the permutation p-value at 5%."""
    if rho["n"] < MIN_RUNS_FOR_RANKS or np.isnan(rho["r"]):
        return stats.TOO_FEW
    if rho["p_value"] < 0.05:
        return "holds" if np.sign(rho["r"]) == sign else "does not hold"
    return "cannot tell (no significant correlation)"


def claims(properties: pd.DataFrame, outcomes: pd.DataFrame, finetuning: pd.DataFrame,
           protocol: str) -> pd.DataFrame:
    """The report's claims, each re-tested at the level of the pretraining run: a verdict in three words
    (holds, does not hold, cannot tell and why) and the evidence behind it."""
    joined = properties.merge(outcomes, on=["method", "pretrain_seed"])
    control = joined.get("pretrain_test_accuracy", pd.Series(np.nan, index=joined.index))
    rows = []

    rho, evidence = _rank_evidence(joined.robustness, joined.distance_all, control, "robustness vs distance travelled")
    if len(joined):
        most, least = joined.loc[joined.robustness.idxmax()], joined.loc[joined.distance_all.idxmin()]
        evidence = (f"most robust run: {most.run} ({most.robustness:.3f}, distance {most.distance_all:.2f}); least "
                    f"travelled: {least.run} ({least.distance_all:.2f}). " + evidence)
    rows.append(dict(claim="the most robust checkpoint travels least in weight space",
                     verdict=_correlation_verdict(rho, -1), evidence=evidence))

    comparisons = method_comparisons(finetuning, protocol)
    for other in ("swa", "noisy_adam"):
        c = comparisons[(comparisons.outcome == "test_accuracy") & (comparisons.method == other)]
        if len(c):
            c = c.iloc[0]
            interval = (f"95% t interval over pretraining runs [{c.ci_low:+.1%}, {c.ci_high:+.1%}] (df {c.df:.0f})"
                        if not np.isnan(c.ci_low) else "no interval (fewer than 2 pretraining runs per method)")
            rows.append(dict(claim=f"{other} finetunes to a higher test accuracy than adam", verdict=c.verdict,
                             evidence=f"difference of run means {c.difference:+.1%}, {interval}; "
                                      f"{c.runs_a:.0f} vs {c.runs_b:.0f} pretraining runs"))

    rho, evidence = _rank_evidence(joined.robustness, joined.test_accuracy, control, "robustness vs finetuned accuracy")
    if rho["n"] < MIN_RUNS_FOR_RANKS or np.isnan(rho["r"]):
        weak = stats.TOO_FEW
    elif rho["p_value"] < 0.05 and abs(rho["r"]) >= 0.5:
        weak = "does not hold"
    elif -0.5 < rho["ci_low"] and rho["ci_high"] < 0.5:
        weak = "holds"
    else:
        weak = "cannot tell (interval spans weak and strong)"
    rows.append(dict(claim="the link between robustness and finetuned accuracy is weak or noisy", verdict=weak,
                     evidence=evidence + "; weak means |Spearman| < 0.5"))

    comp = stats.variance_components(pretrained(finetuning, protocol), "test_accuracy").set_index("level")
    seeds = comp.variance.drop("method").sum()
    m = comp.loc["method"]
    if np.isnan(m.p_value):
        seeds_verdict = stats.TOO_FEW
    elif m.p_value < 0.05:
        seeds_verdict = "does not hold"
    else:
        seeds_verdict = "holds" if m.ci_high < seeds else "cannot tell (method variance interval reaches the seeds')"
    rows.append(dict(claim="the spread in finetuned accuracy comes from seeds rather than methods",
                     verdict=seeds_verdict,
                     evidence=", ".join(f"{lv}: sd {r.sd:.1%} ({r.share:.0%})" for lv, r in comp.iterrows())
                              + f"; method variance 95% interval [{m.ci_low:.2g}, {m.ci_high:.2g}] vs seeds "
                                f"{seeds:.2g}; F test of a method effect {stats.p_text(m.p_value)} (moment estimates)"))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the one-knob arm

ACCURACY = "pretrain_test_accuracy"  # the control: source accuracy predicts transfer (Kornblith et al. 2019)
BETTER = dict(test_accuracy=1, epochs_to_threshold=-1, distance_all=-1)  # the sign of a better outcome
OUTCOME_WORDS = dict(test_accuracy="finetunes to a higher test accuracy",
                     epochs_to_threshold="reaches the finetuning threshold in fewer epochs",
                     distance_all="travels less in weight space while finetuning")


def knob_runs(study: Study) -> pd.DataFrame:
    """One row per pretraining run of the knob arm: its method, knob and value beside its properties and
    finetuning outcomes (each sweep point's `joined_runs`)."""
    return knob_sweeps.table(study, joined_runs)


def knob_outcomes(study: Study) -> pd.DataFrame:
    """One row per pretraining run of the knob arm: its finetuning outcomes (first protocol), mean and sd
    over finetuning seeds."""
    return knob_sweeps.table(study, lambda point: run_outcomes(tables.finetuned(point), point.protocols[0]))


def knob_correlations(runs: pd.DataFrame) -> pd.DataFrame:
    """Per swept knob, over its runs alone: Kendall's tau (with a permutation p over pretraining runs) of the
    knob's value with every property and outcome, and of every property with every outcome; the latter
    also as a partial Spearman controlling for pretraining test accuracy (NaN where there is none)."""
    rows = []
    for (method, knob), part in runs.groupby(["method", "knob"], sort=False):
        props = [p for p in PROPERTIES if p in part and part[p].notna().any()]
        pairs = [("knob_value", y) for y in props + list(OUTCOMES)] + [(p, o) for p in props for o in OUTCOMES]
        for x, y in pairs:
            t = stats.correlation(part[x], part[y], "kendall")
            part_r = (stats.partial_correlation(part[x], part[y], part[ACCURACY])
                      if x not in ("knob_value", ACCURACY) and ACCURACY in part
                      else dict(r=np.nan, p_value=np.nan, n=0))
            rows.append(dict(method=method, knob=knob, x=x, y=y, tau=t["r"], p_value=t["p_value"], n=t["n"],
                             partial_r=part_r["r"], partial_p=part_r["p_value"], partial_n=part_r["n"]))
    return pd.DataFrame(rows)


def granulated_scores(runs: pd.DataFrame) -> pd.DataFrame:
    """Every property x outcome: Jiang et al.'s granulated Kendall coefficient over the swept knobs (psi per
    knob, seeds held fixed; knob "all" is the average over knobs, Psi)."""
    props = [p for p in PROPERTIES if p in runs and runs[p].notna().any()]
    return pd.concat([stats.granulated_kendall(runs, p, o).assign(property=p, outcome=o)
                      for p in props for o in OUTCOMES], ignore_index=True)


def _knob_verdict(moved: pd.Series, outcome: pd.Series, expected: int) -> str:
    """Three words: the knob moves robustness, and the outcome moves the way more robustness predicts."""
    if moved.n < MIN_RUNS_FOR_RANKS or np.isnan(moved.tau) or np.isnan(outcome.tau):
        return stats.TOO_FEW
    if moved.p_value >= 0.05:
        return "cannot tell (the knob does not move robustness)"
    if outcome.p_value >= 0.05:
        return "cannot tell (the outcome does not move with the knob)"
    return "holds" if np.sign(outcome.tau) == np.sign(moved.tau) * expected else "does not hold"


def _partial_text(link: pd.Series) -> str:
    """The robustness-outcome link along a knob with pretraining test accuracy held fixed, or nothing."""
    if link.partial_n < stats.MIN_UNITS + 1:
        return ""
    if np.isnan(link.partial_r):
        return ("; robustness and pretraining test accuracy order these runs alike, so no partial correlation "
                "can tell them apart")
    return (f"; controlling for pretraining test accuracy, partial Spearman {link.partial_r:+.2f} "
            f"({stats.p_text(link.partial_p)})")


def knob_verdicts(correlations: pd.DataFrame) -> pd.DataFrame:
    """The report's question answered by each knob alone: turning it, does the outcome move the way the
    robustness it buys predicts? Holds when the knob moves robustness and the outcome, both significantly
    (permutation p < 0.05 over runs) and in the predicted direction; the robustness-outcome tau along the
    knob is in the evidence. The knob is the intervention: a mediator other than robustness stays possible."""
    rows = []
    for (method, knob), part in correlations.groupby(["method", "knob"], sort=False):
        pick = part.set_index(["x", "y"])
        if ("knob_value", "robustness") not in pick.index:
            continue
        moved = pick.loc[("knob_value", "robustness")]
        for o in OUTCOMES:
            along, link = pick.loc[("knob_value", o)], pick.loc[("robustness", o)]
            rows.append(dict(method=method, knob=knob, outcome=o,
                             claim=f"turning {method}'s {knob} towards more robustness, the model {OUTCOME_WORDS[o]}",
                             verdict=_knob_verdict(moved, along, BETTER[o]),
                             evidence=f"n = {moved.n:.0f} pretraining runs; Kendall tau of {knob} with robustness "
                                      f"{moved.tau:+.2f} ({stats.p_text(moved.p_value)}), with {o} "
                                      f"{along.tau:+.2f} ({stats.p_text(along.p_value)}); robustness with {o} "
                                      f"along the knob {link.tau:+.2f} ({stats.p_text(link.p_value)})"
                                      + _partial_text(link)))
    return pd.DataFrame(rows)


def scoreboard_text(board: pd.DataFrame) -> pd.DataFrame:
    """The scoreboard as a metric x method grid of "mean [low, high]" (or "mean (n runs, no interval)"
    where there are fewer than 3 runs), the best marked with *."""
    def cell(r: pd.Series) -> str:
        spread = (f"[{r.ci_low:.3g}, {r.ci_high:.3g}]" if not np.isnan(r.ci_low)
                  else f"(n={r.n:.0f}, no interval)")
        return f"{r['mean']:.3g} {spread}" + (" *" if r.best else "")

    return board.assign(text=board.apply(cell, axis=1)).pivot(index="metric", columns="method",
                                                               values="text").fillna("")


def best_sentence(board: pd.DataFrame) -> str:
    """The best method per measured metric of a `scoreboard`, and the metrics no run measured."""
    measured = board.dropna(subset=["mean"])
    missing = sorted(set(board.metric) - set(measured.metric))
    return ("Best per metric: " + "; ".join(f"{m}: {g[g.best].method.iloc[0]}" for m, g in measured.groupby("metric"))
            + (f". Not measured on this preset (no run got there): {', '.join(missing)}" if missing else ""))


def fit_sentence(pretrained: pd.DataFrame) -> str:
    """How well each method fits the source task: its range of final train and test accuracy over runs."""
    ranges = pretrained.groupby("method").agg(train_lo=("train_accuracy", "min"), train_hi=("train_accuracy", "max"),
                                              test_lo=("test_accuracy", "min"), test_hi=("test_accuracy", "max"))
    return "Source task, final accuracy over pretraining runs: " + "; ".join(
        f"{m} train {r.train_lo:.0%}-{r.train_hi:.0%}, test {r.test_lo:.0%}-{r.test_hi:.0%}"
        for m, r in ranges.iterrows()) + "."


def findings(study: Study) -> str:
    """What the study finds, as markdown bullets written from its tables: fit, best per metric, the
    report's claims with their verdicts, each method's signature from the literature, and the power of
    the design (the README quotes this)."""
    properties, finetuned = run_properties(study), tables.finetuned(study)
    protocol = study.protocols[0]
    verdicts = claims(properties, run_outcomes(finetuned, protocol), finetuned, protocol)
    lines = [fit_sentence(tables.pretrained(study)), best_sentence(study_scoreboard(study))]
    lines += [f"{row.claim}: **{row.verdict}**. {row.evidence}" for row in verdicts.itertuples()]
    lines += [f"Literature check: {line}" for line in literature.lines(literature.check(properties))]
    lines += power_sentences(finetuned, protocol)
    if study.sweeps:
        verdicts = knob_verdicts(knob_correlations(knob_runs(study)))
        lines += [f"One knob: {row.claim}: **{row.verdict}**. {row.evidence}" for row in verdicts.itertuples()]
    header = (f"From study `{study.name}` (preset {study.preset}): {len(study.methods)} methods x "
              f"{len(study.pretrain_seeds)} pretraining seeds, {len(study.finetune_seeds)} finetuning seeds each, "
              f"protocol {protocol}.")
    return "\n".join([header, ""] + [f"- {line}" for line in lines]) + "\n"
