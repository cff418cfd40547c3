"""Joins the study's tables into one row per pretraining run, scores the methods and re-tests the report's claims."""
from __future__ import annotations

import numpy as np
import pandas as pd

from minima import knob_sweeps, landscape, sharpness, stats, tables, transfer_scores
from minima.finetuning import SCRATCH
from minima.config import Study
from minima.methods import REGISTRY

ROBUSTNESS_MEASURES = ("gaussian", "masking", "fgsm", "pgd", "energy")  # the robustness areas of notebook 04
MIN_RUNS_FOR_RANKS = 5  # with 4 runs the smallest two-sided permutation p of a rank correlation is 1/12
# forgetting (minima.forgetting): source test accuracy lost in finetuning, with the source head and a refitted probe
OUTCOMES = ("test_accuracy", "epochs_to_threshold", "distance_all", "forgetting_head", "forgetting_probe")
BETTER = dict(test_accuracy=1, epochs_to_threshold=-1, distance_all=-1, forgetting_head=-1,
              forgetting_probe=-1)  # the sign of a better outcome
OUTCOME_WORDS = dict(test_accuracy="finetunes to a higher test accuracy",
                     epochs_to_threshold="reaches the finetuning threshold in fewer epochs",
                     distance_all="travels less in weight space while finetuning",
                     forgetting_head="forgets less of the source task (its source head on the finetuned backbone)",
                     forgetting_probe="forgets less of the source task (a source probe refitted on its features)")
FLATNESS = tuple(sharpness.RUN_MEASURES)  # hessian_top, hessian_trace, adaptive_average, adaptive_worst
TRANSFERABILITY = transfer_scores.SCORES  # logme, leep, nce, h_score, sfda: the field's baseline predictors
HIGHER_IS_BETTER = dict(pretrain_test_accuracy=True, robustness=True, gaussian_auc=True, masking_auc=True,
                        fgsm_auc=True, pgd_auc=True, energy_auc=True, mean_barrier=False,
                        **dict.fromkeys(FLATNESS, False), test_accuracy=True, epochs_to_threshold=False,
                        distance_all=False, forgetting_head=False, forgetting_probe=False, reached=True,
                        **dict.fromkeys(TRANSFERABILITY, True))
INPUTS = ("pretraining", "robustness_summary", "flatness", "transferability", "landscape_barriers",
          "landscape_distances", "finetuning")
PROPERTIES = ("robustness", "pretrain_test_accuracy", "gaussian_auc", "masking_auc", "fgsm_auc", "energy_auc",
              *FLATNESS, "mean_barrier", "mean_distance", *TRANSFERABILITY)


def run_properties(study: Study) -> pd.DataFrame:
    """One row per pretraining run: its test accuracy and loss, its final train loss (clean images, eval
    mode: the control for flatness, which shrinks with it), robustness scores (normalised areas on the
    test split), flatness measures (`FLATNESS`), transferability scores (`TRANSFERABILITY`), the mean
    loss barrier to every other run and the mean distance to them."""
    props = tables.pretrained(study)[["run", "method", "pretrain_seed", "test_accuracy", "test_loss", "train_loss"]]
    props = props.rename(columns={"test_accuracy": "pretrain_test_accuracy", "test_loss": "pretrain_test_loss",
                                  "train_loss": "pretrain_train_loss"})
    rob = tables.robustness_summary(study)
    rob = rob[rob.split == "test"].pivot_table(index=["method", "pretrain_seed"], columns="measure", values="auc")
    rob.columns = [f"{m}_auc" for m in rob.columns]
    rob["robustness"] = rob[[f"{m}_auc" for m in composite_measures(study.methods) if f"{m}_auc" in rob]].mean(axis=1)
    props = props.merge(rob.reset_index(), on=["method", "pretrain_seed"], how="left")
    flat = sharpness.run_measures(tables.flatness(study)).drop(columns="run")
    props = props.merge(flat, on=["method", "pretrain_seed"], how="left")
    scores = tables.transferability(study)[["method", "pretrain_seed", *TRANSFERABILITY]]
    props = props.merge(scores, on=["method", "pretrain_seed"], how="left")
    mode = landscape.judging_mode(study.bn_modes)
    bar = tables.barriers(study)
    bar = bar[(bar.bn_mode == mode) & (bar.split == "test")]
    ends = pd.concat([bar.rename(columns={"method_a": "method", "pretrain_seed_a": "pretrain_seed"}),
                      bar.rename(columns={"method_b": "method", "pretrain_seed_b": "pretrain_seed"})])
    props = props.merge(ends.groupby(["method", "pretrain_seed"]).barrier.mean().rename("mean_barrier").reset_index(),
                        on=["method", "pretrain_seed"], how="left")
    if props.duplicated(["method", "pretrain_seed"]).any():  # every run-level statistic would count a run twice
        raise RuntimeError(f"run_properties has {len(props)} rows for {props.run.nunique()} runs; a merge repeated runs")
    dist = tables.distances(study)
    other = (dist.method_a != dist.method_b) | (dist.pretrain_seed_a != dist.pretrain_seed_b)
    dist = dist[(dist.group == "non_bn") & other]
    mean_dist = dist.groupby(["method_a", "pretrain_seed_a"]).distance.mean().rename("mean_distance").reset_index()
    return props.merge(mean_dist.rename(columns={"method_a": "method", "pretrain_seed_a": "pretrain_seed"}),
                       on=["method", "pretrain_seed"], how="left")


def composite_measures(methods: list[str]) -> tuple[str, ...]:
    """The robustness measures the composite `robustness` averages: those no method of the study trains on
    (`Method.trains_on`), the same for every run, so that no method is rewarded on its own training signal."""
    trained = {m for name in methods if name in REGISTRY for m in REGISTRY[name].trains_on}
    return tuple(m for m in ROBUSTNESS_MEASURES if m not in trained)


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
                transferability=tables.pretraining_keys(study) + tables.TRANSFERABILITY_KEYS,
                landscape_barriers=tables.pretraining_keys(study) + tables.SLICE_KEYS,
                landscape_distances=tables.pretraining_keys(study),
                finetuning=tables.finetuning_keys(study) + tables.FORGETTING_KEYS)
    return [name for name in INPUTS if not tables.is_cached(study, name, keys[name])]


def censored(finetuning: pd.DataFrame) -> pd.DataFrame:
    """Finetuning runs with `reached` (1 when the run reached the threshold) and a censored epochs_to_threshold:
    a run that never reached it counts as its epochs + 1, slower than every run that did and tied with every
    other that did not. Means of it are restricted mean epochs (capped at epochs + 1), ranks put it last;
    dropping it instead would remove the slowest runs from every answer about speed."""
    reached = finetuning.epochs_to_threshold.notna()
    return finetuning.assign(reached=reached.astype(float),
                             epochs_to_threshold=finetuning.epochs_to_threshold.fillna(finetuning.epochs + 1))


def run_outcomes(finetuning: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Finetuning outcomes per pretraining run (mean and sd over finetuning seeds) for one protocol, speed
    censored (`censored`), with the share of its finetunes that reached the threshold."""
    part = from_checkpoints(finetuning, protocol)
    out = part.groupby(["method", "pretrain_seed"])[list(OUTCOMES)].agg(["mean", "std"])
    out.columns = [f"{o}_{s}" if s == "std" else o for o, s in out.columns]
    share = part.groupby(["method", "pretrain_seed"]).reached.mean()
    return out.join(share).reset_index()


ANSWER_PROPERTIES = dict(robustness="robustness (mean normalised area, perturbations no method trained on)",
                         hessian_top="top Hessian eigenvalue (log scale of curvature, lower is flatter)")
ANSWER_OUTCOMES = dict(test_accuracy="finetuned test accuracy (fraction)",
                       distance_all="distance travelled while finetuning (weight-space L2)")


def answer_pairs(joined: pd.DataFrame, knobs: pd.DataFrame | None) -> pd.DataFrame:
    """Long form of the question's figure: every pretraining run (the methods' and the knob arm's) once per
    property of `ANSWER_PROPERTIES` and outcome of `ANSWER_OUTCOMES`, with the outcome's sd over finetuning seeds."""
    arms = [joined.assign(arm="methods")]
    if knobs is not None and len(knobs):
        arms.append(knobs.assign(arm="knob", run=[f"{m} {k}={v:g} seed {s}" for m, k, v, s in
                                                   zip(knobs.method, knobs.knob, knobs.knob_value, knobs.pretrain_seed)]))
    runs = pd.concat(arms, ignore_index=True)
    return pd.concat([runs[["run", "method", "arm"]].assign(property=p, value=runs[p], outcome=o, outcome_value=runs[o],
                                                            outcome_std=runs.get(f"{o}_std"))
                      for p in ANSWER_PROPERTIES if p in runs for o in ANSWER_OUTCOMES if o in runs],
                     ignore_index=True)


def property_outcome_pairs(joined: pd.DataFrame) -> pd.DataFrame:
    """Long form of a run table (`run_properties` joined with `run_outcomes`): one row per run, property and
    outcome, with the property's value and the outcome's mean and sd over finetuning seeds."""
    ids = joined[["run", "method", "pretrain_seed"]]
    return pd.concat([ids.assign(property=p, value=joined[p], outcome=o, outcome_value=joined[o],
                                 outcome_std=joined[f"{o}_std"])
                      for p in PROPERTIES if p in joined for o in OUTCOMES], ignore_index=True)


def from_checkpoints(finetuning: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Finetuning runs of one protocol that started from a pretrained checkpoint (the scratch baseline left
    out), speed censored (`censored`)."""
    return censored(finetuning[(finetuning.protocol == protocol) & (finetuning.method != SCRATCH)])


def scoreboard(properties: pd.DataFrame, finetuning: pd.DataFrame, protocol: str,
               higher_is_better: dict[str, bool]) -> pd.DataFrame:
    """Method x metric: mean over pretraining runs (finetuning seeds averaged within a run first; the
    from-scratch baseline's runs are its finetuning seeds), a t 95% interval over runs (none with fewer
    than 3) and whether the method is the best (the baseline is shown but not ranked). Speed is censored
    (`censored`: restricted mean epochs) and `reached` is the share of finetunes that reached the threshold."""
    part = censored(finetuning[finetuning.protocol == protocol])
    part = part.assign(unit=np.where(part.method == SCRATCH, part.finetune_seed, part.pretrain_seed))
    metrics = [m for m in higher_is_better if m in properties]
    finetune_metrics = [o for o in (*OUTCOMES, "reached") if o in higher_is_better]
    table = pd.concat([stats.summarize_ci(properties, "method", metrics),
                       stats.summarize_ci(part, "method", finetune_metrics, "unit")])
    ranked = table[table.method != SCRATCH]
    best = {m: (g["mean"].max() if higher_is_better[m] else g["mean"].min()) for m, g in ranked.groupby("metric")}
    is_best = np.isclose(table["mean"], table.metric.map(best)) & (table.method != SCRATCH)
    return table.assign(best=is_best).reset_index(drop=True)


def method_comparisons(finetuning: pd.DataFrame, protocol: str, baseline: str = "adam",
                       level: float = 0.95) -> pd.DataFrame:
    """Every method minus the baseline on every finetuning outcome, from per-run means (finetuning seeds averaged
    first; speed censored), blocked by pretraining seed (`stats.blocked_differences`: a seed's runs share its
    initialisation and batch order), intervals at `level`, with the claim each row tests ("<method> <is better>
    than adam"), the sign of its difference on that claim and the interval's verdict."""
    part = from_checkpoints(finetuning, protocol)
    runs = part.groupby(["method", "pretrain_seed"])[list(OUTCOMES)].mean().reset_index()
    table = pd.concat([stats.blocked_differences(runs, o, baseline, level=level) for o in OUTCOMES],
                      ignore_index=True)
    return table.assign(claim=[f"{m} {OUTCOME_WORDS[o]} than {baseline}" for m, o in zip(table.method, table.outcome)],
                        sign=np.sign(table.difference) * table.outcome.map(BETTER),
                        verdict=[stats.verdict(lo, hi) for lo, hi in zip(table.ci_low, table.ci_high)])


def variance_table(finetuning: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Variance components (method, pretraining run, finetuning seed) of every finetuning outcome."""
    part = from_checkpoints(finetuning, protocol)
    return pd.concat([stats.variance_components(part, o) for o in OUTCOMES], ignore_index=True)


WEAK = 0.5  # a link is weak when |Spearman| < WEAK
COMPARED = ("outcome", "difference", "ci_low", "ci_high", "df", "runs_a", "runs_b")  # a comparison's numbers
CLAIM_COLUMNS = ["claim", "verdict", "kind", "form", "p_value", "sign", "why_not", "level", "property", "outcome",
                 "n", "r", "ci_low", "ci_high", "p", "tau", "tau_p", "partial_r", "partial_p", "most_run",
                 "most_robustness", "most_distance", "least_run", "least_distance", "difference", "df", "runs_a",
                 "runs_b", *(f"{s}_{lv}" for lv in stats.LEVELS for s in ("sd", "share")), "seed_variance"]


def _rank_numbers(x: pd.Series, y: pd.Series, z: pd.Series, level: float = 0.95) -> dict[str, float]:
    """Spearman (n, r, Fisher-z interval at `level`, permutation p), Kendall (tau, tau_p) and the partial
    Spearman controlling for z (partial_r, partial_p)."""
    rho, tau = stats.correlation(x, y, "spearman", level=level), stats.correlation(x, y, "kendall")
    part = stats.partial_correlation(x, y, z)
    return dict(n=rho["n"], r=rho["r"], ci_low=rho["ci_low"], ci_high=rho["ci_high"], p=rho["p_value"],
                tau=tau["r"], tau_p=tau["p_value"], partial_r=part["r"], partial_p=part["p_value"])


def _too_few(rank: dict[str, float]) -> bool:
    """Whether a rank correlation rests on too few runs to say anything."""
    return rank["n"] < MIN_RUNS_FOR_RANKS or np.isnan(rank["r"])


def _correlation_verdict(rank: dict[str, float], sign: int) -> str:
    """Three words for "the correlation has this sign", from the permutation p-value at 5%."""
    if _too_few(rank):
        return stats.TOO_FEW
    if rank["p"] < 0.05:
        return "holds" if np.sign(rank["r"]) == sign else "does not hold"
    return "cannot tell (no significant correlation)"


def _weak_verdict(rank: dict[str, float]) -> str:
    """Three words for "the link is weak" (|Spearman| < `WEAK`), from its interval."""
    if _too_few(rank):
        return stats.TOO_FEW
    if rank["ci_low"] >= WEAK or rank["ci_high"] <= -WEAK:
        return "does not hold"
    if -WEAK < rank["ci_low"] and rank["ci_high"] < WEAK:
        return "holds"
    return "cannot tell (interval spans weak and strong)"


def _extremes(joined: pd.DataFrame) -> dict:
    """The most robust run (its robustness and distance travelled) and the least travelled one; {} with no runs."""
    if not len(joined):
        return {}
    most, least = joined.loc[joined.robustness.idxmax()], joined.loc[joined.distance_all.idxmin()]
    return dict(most_run=most.run, most_robustness=most.robustness, most_distance=most.distance_all,
                least_run=least.run, least_distance=least.distance_all)


def _seeds_row(finetuning: pd.DataFrame, protocol: str, level: float) -> dict:
    """The claim "the spread comes from seeds rather than methods": variance components of finetuned accuracy,
    decided on the method variance's interval at `level` and the F test of a method effect."""
    comp = stats.variance_components(from_checkpoints(finetuning, protocol), "test_accuracy", level=level).set_index("level")
    seeds = comp.variance.drop("method").sum()
    m = comp.loc["method"]
    if np.isnan(m.p_value):
        verdict = stats.TOO_FEW
    elif m.p_value < 1 - level:
        verdict = "does not hold"
    else:
        verdict = "holds" if m.ci_high < seeds else "cannot tell (method variance interval reaches the seeds')"
    return dict(claim="the spread in finetuned accuracy comes from seeds rather than methods", verdict=verdict,
                kind="interval", form="variance components", outcome="test_accuracy", ci_low=m.ci_low,
                ci_high=m.ci_high, p=m.p_value, seed_variance=seeds,
                **{f"{s}_{lv}": r[s] for lv, r in comp.iterrows() for s in ("sd", "share")})


def claims(properties: pd.DataFrame, outcomes: pd.DataFrame, finetuning: pd.DataFrame,
           protocol: str, level: float = 0.95) -> pd.DataFrame:
    """The report's claims, each re-tested at the level of the pretraining run: a verdict in three words
    (holds, does not hold, cannot tell and why) and the numbers behind it (`CLAIM_COLUMNS`; `form` names which:
    a rank test, a method comparison, a rank interval or variance components, NaN where a form has none;
    `prose.claim_evidence` words them). A test claim also gives its p-value, the sign of its effect on the claim
    and what it says when not significant (for the page's family, `findings`); an interval claim (kind
    "interval") decides on intervals at `level`."""
    joined = properties.merge(outcomes, on=["method", "pretrain_seed"])
    control = joined.get("pretrain_test_accuracy", pd.Series(np.nan, index=joined.index))
    rank = _rank_numbers(joined.robustness, joined.distance_all, control, level)
    rows = [dict(claim="the most robust checkpoint travels least in weight space",
                 verdict=_correlation_verdict(rank, -1), kind="test", form="rank test",
                 p_value=np.nan if _too_few(rank) else rank["p"], sign=-np.sign(rank["r"]),
                 why_not=stats.TOO_FEW if _too_few(rank) else "cannot tell (no significant correlation)",
                 property="robustness", outcome="distance_all", **rank, **_extremes(joined))]

    comparisons = method_comparisons(finetuning, protocol, level=level)
    for other in ("swa", "noisy_adam"):
        c = comparisons[(comparisons.outcome == "test_accuracy") & (comparisons.method == other)]
        if len(c):
            c = c.iloc[0]
            rows.append(dict(claim=c.claim, verdict=c.verdict, kind="test", form="method comparison",
                             p_value=c.p_value, sign=c.sign,
                             why_not=stats.TOO_FEW if np.isnan(c.p_value) else stats.SPANS_ZERO,
                             **c[list(COMPARED)]))

    rank = _rank_numbers(joined.robustness, joined.test_accuracy, control, level)
    rows.append(dict(claim="the link between robustness and finetuned accuracy is weak or noisy",
                     verdict=_weak_verdict(rank), kind="interval", form="rank interval", property="robustness",
                     outcome="test_accuracy", **rank))
    rows.append(_seeds_row(finetuning, protocol, level))
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS).assign(level=level)


# ---------------------------------------------------------------- the one-knob arm

ACCURACY = "pretrain_test_accuracy"  # the control: source accuracy predicts transfer (Kornblith et al. 2019)


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
    return pd.DataFrame(rows, columns=["method", "knob", "x", "y", "tau", "p_value", "n", "partial_r", "partial_p",
                                       "partial_n"])


def granulated_scores(runs: pd.DataFrame) -> pd.DataFrame:
    """Every property x outcome: Jiang et al.'s granulated Kendall coefficient over the swept knobs (psi per
    knob, seeds held fixed; knob "all" is the average over knobs, Psi)."""
    props = [p for p in PROPERTIES if p in runs and runs[p].notna().any()]
    if not props:  # no knob swept
        return pd.DataFrame(columns=["knob", "psi", "groups", "property", "outcome"])
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


def knob_verdicts(correlations: pd.DataFrame) -> pd.DataFrame:
    """The report's question answered by each knob alone: turning it, does the outcome move the way the
    robustness it buys predicts? Holds when the knob moves robustness and the outcome, both significantly
    (permutation p < 0.05 over runs) and in the predicted direction. Beside the verdict, the numbers behind it
    (`prose.knob_evidence` words them): n, the knob's Kendall tau with robustness (robustness_tau, robustness_p)
    and with the outcome (outcome_tau, outcome_p), the robustness-outcome tau along the knob (link_tau, link_p)
    and its partial Spearman given pretraining test accuracy (partial_r, partial_p, partial_n). The knob is the
    intervention: a mediator other than robustness stays possible."""
    rows = []
    for (method, knob), part in correlations.groupby(["method", "knob"], sort=False):
        pick = part.set_index(["x", "y"])
        if ("knob_value", "robustness") not in pick.index:
            continue
        moved = pick.loc[("knob_value", "robustness")]
        for o in OUTCOMES:
            along, link = pick.loc[("knob_value", o)], pick.loc[("robustness", o)]
            verdict = _knob_verdict(moved, along, BETTER[o])
            # "holds" needs both links: an intersection-union test, whose p-value is the larger of the two
            rows.append(dict(method=method, knob=knob, outcome=o,
                             claim=f"turning {method}'s {knob} towards more robustness, the model {OUTCOME_WORDS[o]}",
                             verdict=verdict, p_value=np.nan if verdict == stats.TOO_FEW else max(moved.p_value,
                                                                                                 along.p_value),
                             sign=np.sign(along.tau) * np.sign(moved.tau) * BETTER[o],
                             why_not=stats.TOO_FEW if verdict == stats.TOO_FEW else (
                                 "cannot tell (the knob does not move robustness)" if moved.p_value >= along.p_value
                                 else "cannot tell (the outcome does not move with the knob)"),
                             n=moved.n, robustness_tau=moved.tau, robustness_p=moved.p_value, outcome_tau=along.tau,
                             outcome_p=along.p_value, link_tau=link.tau, link_p=link.p_value,
                             partial_r=link.partial_r, partial_p=link.partial_p, partial_n=link.partial_n))
    return pd.DataFrame(rows)


CARRIERS = ("robustness", ACCURACY, "pretrain_train_loss", *FLATNESS)  # what could carry a knob's effect


def knob_carriers(runs: pd.DataFrame) -> pd.DataFrame:
    """Per knob, outcome and candidate carrier (`CARRIERS`): the knob's rank effect on the outcome (Spearman
    over the knob's runs, seeds held fixed as blocks) and what is left of it once the carrier is held fixed
    too (partial Spearman, t test), with `left` = partial / total. A carrier of the knob's effect leaves
    little; one that merely travels with the knob leaves it whole. Exploratory: not adjusted, no verdict."""
    rows = []
    for (method, knob), part in runs.groupby(["method", "knob"], sort=False):
        blocks = part.pretrain_seed if part.pretrain_seed.nunique() > 1 else None
        for o in OUTCOMES:
            total = stats.partial_given(part.knob_value, part[o], part[[]], blocks)
            for c in (c for c in CARRIERS if c in part and part[c].notna().any()):
                held = stats.partial_given(part.knob_value, part[o], part[[c]], blocks)
                rows.append(dict(method=method, knob=knob, outcome=o, carrier=c, total_r=total["r"],
                                 partial_r=held["r"], partial_p=held["p_value"], left=held["r"] / total["r"],
                                 n=held["n"], df=held["df"]))
    return pd.DataFrame(rows, columns=["method", "knob", "outcome", "carrier", "total_r", "partial_r", "partial_p",
                                       "left", "n", "df"])


def carrier_verdicts(runs: pd.DataFrame) -> pd.DataFrame:
    """Per knob and outcome: does robustness explain the knob's effect beyond source accuracy? The partial
    Spearman of robustness with the outcome along the knob, given pretraining test accuracy (and the seeds as
    blocks), t test; it supports the claim when its sign carries the knob's effect (knob -> robustness ->
    outcome the way the knob moves the outcome). Beside the verdict, the numbers behind it (`prose.carrier_evidence`
    words them): n, the partial Spearman (partial_r, partial_p, df; `blocked` when the seeds are blocks) and the
    knob's Kendall tau with robustness and with the outcome (robustness_tau, outcome_tau). Verdicts are single-test
    here; `findings` adjusts them as one family with the page."""
    rows = []
    for (method, knob), part in runs.groupby(["method", "knob"], sort=False):
        blocks = part.pretrain_seed if part.pretrain_seed.nunique() > 1 else None
        moved = stats.correlation(part.knob_value, part.robustness, "kendall")
        for o in OUTCOMES:
            effect = stats.correlation(part.knob_value, part[o], "kendall")
            link = stats.partial_given(part.robustness, part[o], part[[ACCURACY]], blocks)
            if link["n"] < MIN_RUNS_FOR_RANKS or link["df"] < 1:
                why = stats.TOO_FEW
            elif np.isnan(link["r"]):
                why = "cannot tell (robustness and source accuracy order these runs alike)"
            else:
                why = "cannot tell (no link of robustness with the outcome beyond source accuracy)"
            sign = np.sign(link["r"]) * np.sign(moved["r"]) * np.sign(effect["r"])
            verdict = (why if np.isnan(link["p_value"]) or link["p_value"] >= 0.05 or not sign
                       else "holds" if sign > 0 else "does not hold")
            rows.append(dict(method=method, knob=knob, outcome=o, verdict=verdict,
                             claim=f"along {method}'s {knob}, robustness explains the knob's effect on {o} beyond "
                                   "source accuracy", p_value=link["p_value"], sign=sign, why_not=why, n=link["n"],
                             partial_r=link["r"], partial_p=link["p_value"], df=link["df"],
                             blocked=blocks is not None, robustness_tau=moved["r"], outcome_tau=effect["r"]))
    return pd.DataFrame(rows, columns=["method", "knob", "outcome", "verdict", "claim", "p_value", "sign", "why_not",
                                       "n", "partial_r", "partial_p", "df", "blocked", "robustness_tau",
                                       "outcome_tau"])


# ---------------------------------------------------------------- the field's comparison: beside and beyond LogME

LOGME = "logme"  # the transferability score the verdicts control for (You et al. 2021)
KINDS = {ACCURACY: "source accuracy", "robustness": "robustness",
         **{f"{m}_auc": "robustness" for m in ("gaussian", "masking", "fgsm", "pgd", "energy")},
         **dict.fromkeys(FLATNESS, "flatness"), **dict.fromkeys(TRANSFERABILITY, "transferability")}
# one robustness and one flatness verdict per outcome keep the family small; adaptive sharpness is the flatness
# measure unchanged when layers are rescaled (Andriushchenko et al. 2023): it measures the minimum, not its scale
BEYOND = dict(robustness="a more robust pretraining run",
              adaptive_average="a flatter pretraining run (lower average-case adaptive sharpness)")
TARGET_OUTCOMES = ("test_accuracy", "epochs_to_threshold", "distance_all")  # how the target is learnt: what LogME
# predicts (forgetting is about the source task)
# from this share of the property's rank variance explained by the controls on, a control on a slightly wrong scale
# leaks into the test (18 runs, property-control correlation 0.9: 7.8-11.1% false verdicts against 5%):
# the property is mostly the controls, and the verdict says so instead of testing it (docs/statistics.md)
MOSTLY_CONTROLS = 0.8


def _better(joined: pd.DataFrame, column: str) -> pd.Series:
    """A property or outcome read in its better direction (`HIGHER_IS_BETTER`): larger is better."""
    return joined[column] if HIGHER_IS_BETTER[column] else -joined[column]


def rank_agreement(joined: pd.DataFrame) -> pd.DataFrame:
    """The field's comparison, per outcome and property (`KINDS`: source accuracy, robustness, flatness and the
    transferability scores side by side), over pretraining runs (`joined`: one row per run, outcomes averaged
    over its finetuning seeds first and speed censored, as `run_outcomes` gives them): Kendall's tau, its p-value
    and the weighted tau (`stats.rank_agreement`, hyperbolic top-weighting). Both are signed so that +1 means the
    property read in its better direction orders the runs as the outcome read in its better direction does, so
    the weighting falls on the runs that finetune best. Exploratory: unadjusted, no verdict."""
    rows = [dict(outcome=o, property=p, kind=kind, **stats.rank_agreement(_better(joined, p), _better(joined, o)))
            for o in OUTCOMES if o in joined for p, kind in KINDS.items() if p in joined and joined[p].notna().any()]
    return pd.DataFrame(rows, columns=["outcome", "property", "kind", "tau", "p_value", "weighted_tau", "n"])


def _beyond_verdict(joined: pd.DataFrame, prop: str, outcome: str) -> dict:
    """One row of `beyond_verdicts`: the partial Spearman's verdict, its p-value, sign on the claim and numbers."""
    link = stats.partial_given(joined[prop], joined[outcome], joined[[ACCURACY, LOGME]])
    mostly = link["explained"] >= MOSTLY_CONTROLS
    if link["n"] < MIN_RUNS_FOR_RANKS or link["df"] < 1:
        why = stats.TOO_FEW
    elif mostly:
        why = f"cannot tell ({prop} is mostly source accuracy and LogME here)"
    elif np.isnan(link["r"]):
        why = f"cannot tell ({outcome} does not vary beyond source accuracy and LogME)"
    else:
        why = "cannot tell (no link beyond source accuracy and LogME)"
    sign = np.sign(link["r"]) * (1 if HIGHER_IS_BETTER[prop] else -1) * BETTER[outcome]
    p_value = np.nan if mostly else link["p_value"]
    verdict = why if np.isnan(p_value) or p_value >= 0.05 or not sign else "holds" if sign > 0 else "does not hold"
    return dict(property=prop, outcome=outcome, verdict=verdict, p_value=p_value, sign=sign, why_not=why,
                claim=f"{BEYOND[prop]} {OUTCOME_WORDS[outcome]}, beyond what source accuracy and LogME predict",
                n=link["n"], partial_r=link["r"], partial_p=link["p_value"], df=link["df"],
                explained=link["explained"])


def beyond_verdicts(joined: pd.DataFrame) -> pd.DataFrame:
    """Per property of `BEYOND` and outcome of `TARGET_OUTCOMES`: does it predict the outcome beyond source accuracy
    and LogME? The partial Spearman of the property with the outcome over pretraining runs (`joined`, one row per
    run) given pretraining test accuracy and LogME (`stats.partial_given`: every rank residualised on both
    controls' ranks, t test with df = n - 4; the same p as the nested F test of adding the property's rank to a
    rank regression of the outcome on the controls). It supports the claim when the property read in its better
    direction goes with the better outcome; it is not tested (`MOSTLY_CONTROLS`) when the controls explain most
    of the property's ranks. Beside the verdict, the numbers behind it (`prose.beyond_evidence` words them): n, the
    partial Spearman (partial_r, partial_p, df) and the share of the property's rank variance the controls explain
    (`explained`). Verdicts are single-test here; `findings` adjusts them as one family with the page."""
    rows = [_beyond_verdict(joined, p, o) for p in BEYOND if {p, LOGME, ACCURACY} <= set(joined)
            for o in TARGET_OUTCOMES if o in joined]
    return pd.DataFrame(rows, columns=["property", "outcome", "claim", "verdict", "p_value", "sign", "why_not", "n",
                                       "partial_r", "partial_p", "df", "explained"])

