"""The study's prose: the sentences and verdict texts the notebooks and findings.md print, written from
the numbers and tables that the measures and conclusions return.

The measure modules compute and return numbers and tables; this module turns them into words, so a change
of wording touches one file and `tests/test_sentences.py` pins what each sentence claims. It sits above the
measures and conclusions (it reads their constants and calls their arithmetic) and below the findings page
and the notebooks. The report's own findings that a sentence compares against (the method it found most
robust under each perturbation) are data, in `report_findings.yaml` beside this module.
"""
from __future__ import annotations

import math
from functools import cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import yaml

from minima import (conclusions, family, finetuning, landscape, literature, models, pretraining, robustness, runstore,
                    sharpness, stats, transfer)
from minima.config import Study
from minima.methods import REGISTRY

REPORT_FINDINGS = Path(__file__).with_name("report_findings.yaml")
MISSED = "the setting did not produce the minimum that the method exists to find"
CURVATURES = dict(hessian_top="top Hessian eigenvalue", hessian_trace="Hessian trace")  # literature.RATIO in words
ACCURACY_POINTS = ("test_accuracy", "forgetting_head", "forgetting_probe")  # outcomes written as percentages
VERSUS = dict(distance_all="distance travelled", test_accuracy="finetuned accuracy")  # a claim's outcome, as a noun


@cache
def report_findings() -> dict:
    """The report's own findings (`report_findings.yaml`): what a sentence says the report found."""
    return yaml.safe_load(REPORT_FINDINGS.read_text())


def lead_sentence(summary: pd.DataFrame, value: str, what: str, label: str = "method", higher: bool = True,
                  fmt: str = ".1%") -> str:
    """Who is best on `value` (columns `{value}_mean`, `{value}_std` of a `summarize` table), who is next, and
    whether the lead exceeds the seed spread (the larger sd of the two; none when both ran one seed)."""
    mean, sd = f"{value}_mean", f"{value}_std"
    ranked = summary.dropna(subset=[mean]).sort_values(mean, ascending=not higher, kind="stable")
    if ranked.empty:
        return f"No {label} has a {what} to compare."
    best = ranked.iloc[0]
    if len(ranked) == 1:
        return f"Only {best[label]} has a {what}: {best[mean]:{fmt}}."
    second, spread = ranked.iloc[1], ranked[sd].iloc[:2].max()  # max skips NaN: the sd of a one-seed group
    gap = abs(best[mean] - second[mean])
    against = (f"one seed per {label}, so no seed spread to compare it with" if np.isnan(spread) else
               f"{'larger than' if gap > spread else 'within'} the seed spread ({spread:{fmt}} standard deviation)")
    return (f"{best[label]} has the {'highest' if higher else 'lowest'} {what} ({best[mean]:{fmt}}), "
            f"{second[label]} next ({second[mean]:{fmt}}): a lead of {gap:{fmt}}, {against}.")


def threshold_sentence(table: pd.DataFrame, value: str, threshold: float, what: str, by: str = "method") -> str:
    """Whether every row (a run) reaches `threshold` on `value`, the lowest run, and the mean per group of `by`."""
    verdict = "every run reaches" if (table[value] >= threshold).all() else "not every run reaches"
    means = table.groupby(by)[value].mean()
    return (f"{what.capitalize()}: {verdict} {threshold:.0%} (lowest run: {table[value].min():.1%}; mean by {by}: "
            + ", ".join(f"{g} {v:.1%}" for g, v in means.items()) + ").")


def power_statement(components: pd.DataFrame, observed: float, runs_per_method: int, n_methods: int,
                    finetune_seeds: int, unit: str = "", alpha: float = family.ALPHA) -> str:
    """One sentence: the difference this design detects with 80% power at the two-sided level `alpha` its verdict
    is decided at, and how many pretraining runs per method would resolve the observed difference there."""
    power = stats.design_power(components, observed, runs_per_method, n_methods, finetune_seeds, alpha)
    outcome, sd, smallest, needed = power["outcome"], power["sd"], power["smallest"], power["needed"]
    if np.isnan(smallest):
        return (f"{outcome}: with {runs_per_method} pretraining run(s) per method there is no test and no "
                f"power to state; at least 2 runs per method are needed.")
    need = (f"{needed} pretraining runs per method would resolve the observed difference of {observed:+.3g}{unit}"
            if needed else f"no feasible number of runs (over 1000 per method) resolves the observed "
                           f"difference of {observed:+.3g}{unit}")
    return (f"{outcome}: with {runs_per_method} pretraining runs per method x {finetune_seeds} finetuning seeds "
            f"(run-mean sd {sd:.3g}{unit}), the smallest difference detected with 80% power at two-sided alpha "
            f"{alpha:.2g} (the level its verdict is decided at) is {smallest:.3g}{unit}; {need}.")


def statement(groups: dict[str, int], intervals: int, alpha: float = family.ALPHA) -> str:
    """The family in one paragraph: which verdicts, how many, and how they are adjusted."""
    m = sum(groups.values()) + intervals
    parts = ", ".join(f"{n} {what}" for what, n in groups.items() if n)
    if intervals:  # a study of one method has no test to list before them
        parts += (", and " if parts else "") + f"{intervals} resting on an interval"
    return (f"**Exploratory.** Beneath the primary verdicts, this page and notebook 06 print {m} exploratory tests: "
            f"{parts}. None of them was declared before the runs, so none carries a verdict word: each shows its raw "
            f"p and its Benjamini-Hochberg q-value across the {m} (false-discovery rate; under a global null a page "
            f"still says something false at most {alpha:.0%} of the time), and intervals are shown at "
            f"{family.interval_level(m, alpha):.2%}, simultaneous across them. A q below {alpha:g} marks a lead for the "
            "next study's plan, not an answer. The tables in notebook 06 that list every property against every "
            "outcome are not adjusted at all.")


def distance_sentence(dist: pd.DataFrame) -> str:
    """The mean relative distance (to the first run's norm) between two runs of a `distances` table, per
    parameter group, across methods and within a method."""
    pairs = dist[dist.method_a + " " + dist.pretrain_seed_a.astype(str)
                 < dist.method_b + " " + dist.pretrain_seed_b.astype(str)]
    if pairs.empty:
        return "One run per architecture: no two minima to measure apart."
    kind = pairs.method_a.eq(pairs.method_b).map({True: "within", False: "across"})
    rel = pairs.assign(kind=kind).groupby(["group", "kind"]).relative_a.mean().unstack()
    return "Mean relative distance between two runs, " + "; ".join(
        f"{g}: " + ", ".join(f"{k} methods {v:.2f}" if k == "across" else f"within a method {v:.2f}"
                             for k, v in r.dropna().items()) for g, r in rel.iterrows()) + "."


def modes_sentence(study: Study) -> str:
    """Which weight spaces of the study have no batchnorm, so that their slices were computed in one mode ("" if none)."""
    specs = [pretraining.spec(study, group[0]) for group in landscape.arch_groups(study)]
    plain = sorted({spec["arch"] for spec in specs if not models.batchnorm_names(runstore.model_from_spec(spec))})
    if not plain:
        return ""
    return (f"{', '.join(plain)} has no batchnorm: its slices were computed once, in the {landscape.judging_mode(study.bn_modes)} "
            "mode, because every batchnorm mode gives the same path.")


def basin_verdict(bars: pd.DataFrame, bn_modes: Sequence[str], low: float = 0.1) -> str:
    """One basin or several: train-loss barriers across methods against those between two seeds of one
    method (a barrier under `low` nats counts as linearly connected), as a sentence."""
    mode = landscape.judging_mode(bn_modes)
    b = bars[(bars.bn_mode == mode) & (bars.split == "train")]
    acr, wit = b[b.kind == "across"].barrier, b[b.kind == "within"].barrier
    if not len(acr):
        return (f"With {mode} batchnorm, train-loss barriers within a method (two seeds): mean {wit.mean():.3g} nats "
                f"(range {wit.min():.3g} to {wit.max():.3g}). With one method there is no pair across methods to "
                "weigh them against.")
    text = (f"With {mode} batchnorm, train-loss barriers across methods: mean {acr.mean():.3g} nats "
            f"(range {acr.min():.3g} to {acr.max():.3g})")
    if not len(wit):
        return text + ". With one seed per method there is no yardstick from seeds; add a seed to compare."
    text += f"; within a method (two seeds): mean {wit.mean():.3g} nats (range {wit.min():.3g} to {wit.max():.3g}). "
    if (b.barrier < low).all():
        return text + "Every pair is linearly connected: the minima sit in one basin."
    if acr.max() < wit.min():
        return text + ("Every barrier between methods is lower than every barrier between two seeds of one method: "
                       "the methods end closer to each other than the seeds of any one method do.")
    if (wit < low).all():
        return text + "Seeds of one method are connected but methods are not: one basin per method."
    if acr.mean() > 2 * wit.mean():
        return text + (f"Every run sits behind a barrier, and those between methods are {acr.mean() / wit.mean():.1f}x "
                       "those between seeds: the methods land in different basins, further apart than seeds do.")
    return text + ("Every run sits behind a barrier, and methods are no more separated than two seeds of one "
                   "method: along straight lines there are several basins, but no sign that the method picks one.")


def no_slices_sentence(study: Study) -> str:
    """Why a study without `slice_pairs` has no slices, in one sentence."""
    runs = ", ".join(f"{m} {s}" for m, s in pretraining.keys(study))
    return (f"No slices: a slice joins two runs of one architecture, and this study has one run per architecture "
            f"({runs}); add a method or a pretraining seed.")


def no_plane_sentence(study: Study) -> str:
    """Why a study whose `plane_keys` are [] has no plane, in one sentence."""
    most = max(len(landscape.method_seeds(group)) for group in landscape.arch_groups(study))
    if most < 3:
        methods = ", ".join(dict.fromkeys(m for m, _ in pretraining.keys(study)))
        return (f"No plane: it goes through the minima of three methods of one architecture, and this study has at "
                f"most {most} method{'s' if most > 1 else ''} per architecture ({methods}).")
    return ("No plane: no architecture has three methods with distinct minima (a run holding the very weights of an "
            "earlier one, as a zoo's noisy Adam at noise_sigma 0 holds its Adam's, counts once).")


def plane_sentence(plane: pd.DataFrame) -> str:
    """The loss at each minimum on one split of a plane table, against its lowest and highest grid point."""
    at = plane[plane.point == "minimum"].set_index("label").loss
    grid = plane[plane.point == "grid"].loss
    return (f"{plane.split.iloc[0].capitalize()} loss at the minima on the plane ({plane.bn_mode.iloc[0]} batchnorm): "
            + ", ".join(f"{m} {v:.3g}" for m, v in at.items())
            + f"; lowest grid point {grid.min():.3g}; highest grid point {grid.max():.3g} nats.")


def composite_sentence(methods: Sequence[str]) -> str:
    """Which robustness measures the composite averages, and which it leaves out because a method trains on them."""
    kept = conclusions.composite_measures(list(methods))
    trained = [f"{m} trains on {', '.join(REGISTRY[m].trains_on)}" for m in dict.fromkeys(methods)
               if m in REGISTRY and REGISTRY[m].trains_on]
    what = f"averages {', '.join(kept)}" if kept else "is empty (every perturbation is one a method trains on)"
    return (f"The robustness composite of notebook 06 {what}; it leaves out the perturbations a method of this study "
            f"trains on, so that no method is rewarded on its own training signal"
            + (f" ({'; '.join(trained)})." if trained else "."))


def leader_sentences(auc: pd.DataFrame, titles: dict[str, tuple[str, str]]) -> list[str]:
    """Per measure of a `stats.summarize` table of `auc` by measure and method (one split): who keeps the
    most of its clean accuracy, whether the lead exceeds the seed spread, and whether the report agrees."""
    sentences = []
    for measure in [m for m in robustness.MEASURES if m in set(auc.measure)]:
        part = auc[auc.measure == measure]
        best = part.loc[part.auc_mean.idxmax(), "method"] if part.auc_mean.notna().any() else None
        expected = report_findings()["best_under"].get(measure)
        check = (" The report did not run this attack." if expected is None else
                 f" The report found {expected} best here: this run {'agrees' if best == expected else 'does not agree'}.")
        sentences.append(f"{titles[measure][0]}: "
                         + lead_sentence(part, "auc", "share of clean accuracy kept on average") + check)
    return sentences


def attack_sentence(table: pd.DataFrame) -> str:
    """PGD against FGSM at the largest eps both were run at (test split, mean over runs): PGD should be the
    stronger attack."""
    attacks = table[(table.split == "test") & table.measure.isin(["fgsm", "pgd"])]
    acc = attacks.pivot_table(index="strength", columns="measure", values="accuracy").reindex(
        columns=["fgsm", "pgd"]).dropna()
    if not (acc.index > 0).any():
        return "FGSM and PGD share no eps above 0 (fgsm_eps, pgd_eps): no comparison of the two attacks."
    top = acc.index.max()
    pgd_acc, fgsm_acc = acc.loc[top, "pgd"], acc.loc[top, "fgsm"]
    return (f"At eps {top}, PGD leaves {pgd_acc:.1%} test accuracy and FGSM {fgsm_acc:.1%} (mean over runs): "
            + ("PGD is the stronger attack, as it should be." if pgd_acc <= fgsm_acc
               else "PGD is weaker here than FGSM: try more `pgd_steps`."))


def half_strength_text(summary: pd.DataFrame, digits: int = 3) -> pd.Series:
    """`half_strength` for reading: the number, or "not reached"."""
    return pd.Series([f"{v:.{digits}g}" if ok else "not reached"
                      for v, ok in zip(summary["half_strength"], summary["half_reached"])], index=summary.index)


def difference_sentences(runs: pd.DataFrame) -> list[str]:
    """Per `RUN_MEASURES` column of a `run_measures` table: do the methods differ beyond the seed spread
    (`method_difference` at level `ALPHA`), with F, p and n, and which is flattest when they do."""
    sentences = []
    for column, name in sharpness.NAMES.items():
        d = sharpness.method_difference(runs, column)
        size = f"n = {d['n']} runs of {d['methods']} methods"
        if math.isnan(d["p_value"]):
            reason = "a single method" if d["methods"] < 2 else "one run per method, so no seed spread to compare with"
            sentences.append(f"{name}: cannot tell whether the methods differ ({reason}; {size}).")
            continue
        differ = d["p_value"] < sharpness.ALPHA
        test = (f"one-way F test on {'log' if d['log'] else 'raw'} values, F({d['df_between']}, {d['df_within']}) "
                f"= {d['f']:.2f}, p = {d['p_value']:.3g}, {size}")
        sentences.append(f"{name}: the methods differ beyond the seed spread ({test}); flattest: {d['lowest']}."
                         if differ else f"{name}: the methods are not shown to differ beyond the seed spread "
                                        f"at the {sharpness.ALPHA:.0%} level ({test}).")
    return sentences


def connection_sentence(bars: pd.DataFrame, split: str = "train") -> str:
    """How many pairs the line connects, how many each curve does, and how many a curve connects but the line
    does not (barrier under the threshold on `split`, batchnorm recomputed)."""
    part = bars[bars.split == split]
    connected = part.pivot_table(index="pair", columns="path", values="connected", sort=False).astype(bool)
    n, threshold = len(connected), part.threshold.iloc[0]
    curves = [p for p in connected.columns if p != "line"]
    any_curve = connected[curves].any(axis=1)
    text = (f"Of {n} pairs, {connected.line.sum()} are linearly connected ({split} barrier under {threshold:g} nats, "
            f"batchnorm recomputed at every point); "
            + "; ".join(f"the {p} path connects {connected[p].sum()}" for p in curves)
            + f". {(any_curve & ~connected.line).sum()} of the {n} are connected by a low-loss curve but not by "
              "the straight line")
    mean = part.groupby("path", sort=False).barrier.mean()
    return text + ". Mean barrier: " + ", ".join(f"{p} {v:.3g}" for p, v in mean.items()) + " nats."


def baseline_sentence(summary: pd.DataFrame) -> str:
    """For one protocol's `stats.summarize` of final finetuning metrics by method (with `reached` and `runs`
    counts): how many pretraining methods beat the from-scratch baseline (higher test accuracy, more runs
    reaching the threshold, or fewer epochs to it), who is most accurate and who travelled least."""
    base = summary[summary.method == finetuning.SCRATCH].iloc[0]
    pre = summary[summary.method != finetuning.SCRATCH]
    beats = ((pre.test_accuracy_mean > base.test_accuracy_mean) | (pre.reached > base.reached)
             | (pre.epochs_to_threshold_mean < base.epochs_to_threshold_mean))
    return (f"{beats.sum()} of {len(pre)} pretraining methods beat the from-scratch baseline (test accuracy "
            f"{base.test_accuracy_mean:.1%}, threshold reached in {int(base.reached)} of {int(base.runs)} runs). "
            + lead_sentence(pre, "test_accuracy", "test accuracy after finetuning") + " "
            + lead_sentence(pre, "distance_all", "distance travelled (weight units)", higher=False, fmt=".2f"))


def before_after_sentences(before_after: pd.DataFrame) -> list[str]:
    """Per measure of `before_and_after`: the rank correlation over runs of robustness before and after
    finetuning, and the most robust method (mean over its runs) before and after."""
    return [f"{r.measure}: Spearman(before, after) = {r.r:.2f} (permutation {stats.p_text(r.p_value)}, "
            f"n = {r.n}); most robust before: {r.best_before}, after: {r.best_after}."
            for r in transfer.before_after_ranks(before_after).itertuples()]


def _interval(effect: float, low: float, high: float, df: float, p: float, fmt: str, level: float,
              p_adjusted: float = np.nan) -> str:
    """ "effect [low, high] (level t interval, df, p, adjusted p)", or the effect alone with the reason there
    is no interval."""
    if np.isnan(low):
        return f"{effect:{fmt}} (no interval: fewer than 2 pretraining runs per side)"
    adjusted = "" if np.isnan(p_adjusted) else f", BH q = {p_adjusted:.2g}"
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
                 f"{equal}{emphasis(row.verdict_at_equal_loss)}")
    return text + "."


def missed(table: pd.DataFrame) -> list[str]:
    """One sentence per method whose aim signatures do not all hold (the verdicts say why)."""
    sentences = []
    decided = table.decision if "decision" in table else table.verdict  # the page's readings keep their decision
    for method, rows in table[table.aim & (decided != "holds")].groupby("method", sort=False):
        why = "; ".join(f"{r.claim}: {r.verdict}" for r in rows.itertuples())
        unsure = "" if (decided[rows.index] == "does not hold").any() else ", or this design cannot show that it did"
        sentences.append(f"{method} misses its own signature ({why}): {MISSED}{unsure}.")
    return sentences


def lines(table: pd.DataFrame, baseline: str = "adam") -> list[str]:
    """Markdown lines of a `check` table: per signature the claim, its source, the verdict in bold and the
    evidence; then the methods that miss their signature."""
    if table.empty:
        return [f"No literature check: each signature compares its method with {baseline}, and this study lacks "
                f"{baseline} or every method with a signature."]
    claims = [f"{r.method} {r.claim} relative to {baseline} ({r.source}): {emphasis(r.verdict)}. {evidence(r, baseline)}"
              for _, r in table.iterrows()]
    return claims + (missed(table) or ["Every method shows the signature it exists for."])


def loss_sentences(properties: pd.DataFrame, control: str = literature.CONTROL) -> list[str]:
    """Per curvature: does it move with the train loss over the study's runs (Spearman, permutation p)?"""
    sentences = []
    for column, rho in literature.loss_correlations(properties, control).items():
        if np.isnan(rho["r"]):
            sentences.append(f"The {CURVATURES[column]} against train loss: only {rho['n']} runs, no correlation.")
            continue
        moves = (("rises" if rho["r"] > 0 else "falls") + " as the train loss rises" if rho["p_value"] < 0.05
                 else "is not shown to move with the train loss")
        sentences.append(f"Over {rho['n']} pretraining runs the {CURVATURES[column]} {moves} "
                         f"(Spearman {rho['r']:+.2f}, permutation {stats.p_text(rho['p_value'])}; "
                         f"ranks, so the same on log scales).")
    return sentences


def power_sentences(finetuning: pd.DataFrame, protocol: str, baseline: str = "adam",
                    alpha: float = family.ALPHA) -> list[str]:
    """Per outcome: the smallest method difference this design detects with 80% power at the two-sided level
    `alpha` the method comparisons are decided at (the caller's: a family's alpha / m) and the pretraining runs
    per method needed to resolve the largest observed difference from the baseline there."""
    part = conclusions.from_checkpoints(finetuning, protocol)
    runs_per_method = int(part.groupby("method").pretrain_seed.nunique().min())
    seeds = int(part.groupby(["method", "pretrain_seed"]).finetune_seed.nunique().min())
    comparisons, components = conclusions.method_comparisons(finetuning, protocol, baseline), conclusions.variance_table(finetuning, protocol)
    sentences = []
    for outcome in conclusions.OUTCOMES:
        diffs = comparisons[comparisons.outcome == outcome].difference.dropna()
        observed = float(diffs.iloc[diffs.abs().argmax()]) if len(diffs) else np.nan
        sentences.append(power_statement(components[components.outcome == outcome], observed,
                                               runs_per_method, part.method.nunique(), seeds, alpha=alpha))
    return sentences


def no_comparison_sentence(methods: Sequence[str], baseline: str = "adam") -> str:
    """Why a study of `methods` has no method comparison, in one sentence ("" when it has some): each compares a
    method with the baseline, so it needs the baseline and another method."""
    methods = list(dict.fromkeys(methods))
    if baseline in methods and len(methods) > 1:
        return ""
    has = f"{baseline} alone" if baseline in methods else f"no {baseline} (methods: {', '.join(methods)})"
    return f"No method comparison: each compares a method with {baseline}, and this study has {has}."


def agreement_sentences(agreement: pd.DataFrame) -> list[str]:
    """Per outcome of a `rank_agreement` table: the property whose weighted tau is highest, and where source
    accuracy, LogME and the `BEYOND` properties stand."""
    sentences = []
    for o, part in agreement.dropna(subset=["weighted_tau"]).groupby("outcome", sort=False):
        part = part.set_index("property")
        shown = dict.fromkeys(p for p in (part.weighted_tau.idxmax(), conclusions.ACCURACY, conclusions.LOGME, *conclusions.BEYOND) if p in part.index)
        sentences.append(f"{o}, over {part.n.max():.0f} pretraining runs: " + "; ".join(
            f"{p}{' (the highest)' if i == 0 else ''} weighted tau {part.weighted_tau[p]:+.2f}, Kendall tau "
            f"{part.tau[p]:+.2f} ({stats.p_text(part.p_value[p])})" for i, p in enumerate(shown)) + ".")
    return sentences


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


# ---------------------------------------------------------------- the verdicts' evidence, from their numbers

def comparison_evidence(c: pd.Series, level: float = 0.95) -> str:
    """One row of `method_comparisons` in words: the difference of run means, its seed-blocked t interval, what
    blocking was worth and the runs."""
    fmt = "+.1%" if c.outcome in ACCURACY_POINTS else "+.3g"
    blocked = ("" if np.isnan(c.get("efficiency", np.nan)) else
               f"; blocked by seed, the seeds explain {c.block_share:.0%} of the within-method variance, worth "
               f"{c.efficiency:.2g}x the runs")
    interval = (f"{level:.2%} t interval over pretraining runs [{c.ci_low:{fmt}}, {c.ci_high:{fmt}}] (df {c.df:.0f}"
                f"{blocked})" if not np.isnan(c.ci_low) else
                "no interval (fewer than 2 pretraining runs per method, or no residual degree of freedom)")
    p = "" if np.isnan(c.p_value) else f", {stats.p_text(c.p_value)}"
    return (f"{c.outcome}: difference of run means {c.difference:{fmt}}, {interval}{p}; "
            f"{c.runs_a:.0f} vs {c.runs_b:.0f} pretraining runs" + (" (speed censored: a finetune that never "
            "reached the threshold counts as finetune_epochs + 1)" if c.outcome == "epochs_to_threshold" else ""))


def _rank_evidence(row: pd.Series) -> str:
    """A claim's Spearman (its interval where it can mean anything), Kendall and partial Spearman, in words."""
    names = f"{row.property} vs {VERSUS[row.outcome]}"
    if row.n < stats.MIN_UNITS:
        return f"{names}: only {row.n:.0f} pretraining run(s), no correlation can be computed"
    interval = (f" [{row.ci_low:.2f}, {row.ci_high:.2f}] ({row.level:.2%} Fisher-z interval)"
                if not np.isnan(row.ci_low) else " (too few runs for an interval)")
    partial = (f"; controlling for pretraining test accuracy, partial Spearman = {row.partial_r:.2f} "
               f"({stats.p_text(row.partial_p)})" if not np.isnan(row.partial_r) else "")
    return (f"{names}: Spearman = {row.r:.2f}{interval}, permutation {stats.p_text(row.p)}, "
            f"Kendall tau = {row.tau:.2f} ({stats.p_text(row.tau_p)}), n = {row.n:.0f} pretraining runs{partial}")


def _extremes_evidence(row: pd.Series) -> str:
    """The most robust and the least travelled run, as the rank test's preamble ("" without runs)."""
    if pd.isna(row.most_run):
        return ""
    return (f"most robust run: {row.most_run} ({row.most_robustness:.3f}, distance {row.most_distance:.2f}); least "
            f"travelled: {row.least_run} ({row.least_distance:.2f}). ")


def _variance_evidence(row: pd.Series) -> str:
    """The variance components' sds and shares, the method variance's interval against the seeds' and the F test."""
    return (", ".join(f"{lv}: sd {row[f'sd_{lv}']:.1%} ({row[f'share_{lv}']:.0%})" for lv in stats.LEVELS)
            + f"; method variance {row.level:.2%} interval [{row.ci_low:.2g}, {row.ci_high:.2g}] vs seeds "
              f"{row.seed_variance:.2g}; F test of a method effect {stats.p_text(row.p)} against "
              f"{1 - row.level:.2g} (moment estimates)")


CLAIM_EVIDENCE: dict[str, Callable[[pd.Series], str]] = {
    "rank test": lambda row: _extremes_evidence(row) + _rank_evidence(row),
    "method comparison": lambda row: comparison_evidence(row, row.level),
    "rank interval": lambda row: _rank_evidence(row) + (f"; weak means |Spearman| < {conclusions.WEAK:g}, decided "
                                                        f"on the {row.level:.2%} interval"),
    "variance components": _variance_evidence,
}


def claim_evidence(row: pd.Series) -> str:
    """One row of `conclusions.claims` in words, as its `form` states it."""
    return CLAIM_EVIDENCE[row.form](row)


def _knob_partial(row: pd.Series) -> str:
    """The robustness-outcome link along a knob with pretraining test accuracy held fixed, or nothing."""
    if row.partial_n < stats.MIN_UNITS + 1:
        return ""
    if np.isnan(row.partial_r):
        return ("; robustness and pretraining test accuracy order these runs alike, so no partial correlation "
                "can tell them apart")
    return (f"; controlling for pretraining test accuracy, partial Spearman {row.partial_r:+.2f} "
            f"({stats.p_text(row.partial_p)})")


def knob_evidence(row: pd.Series) -> str:
    """One row of `conclusions.knob_verdicts` in words: the knob's taus with robustness and the outcome, the link."""
    return (f"n = {row.n:.0f} pretraining runs; Kendall tau of {row.knob} with robustness {row.robustness_tau:+.2f} "
            f"({stats.p_text(row.robustness_p)}), with {row.outcome} {row.outcome_tau:+.2f} "
            f"({stats.p_text(row.outcome_p)}); robustness with {row.outcome} along the knob {row.link_tau:+.2f} "
            f"({stats.p_text(row.link_p)})" + _knob_partial(row))


def _partial_spearman(row: pd.Series) -> str:
    """A partial Spearman with its t test's p and df, or "undefined"."""
    return (f" {row.partial_r:+.2f} ({stats.p_text(row.partial_p)}, df {row.df:.0f})"
            if not np.isnan(row.partial_r) else " undefined")


def carrier_evidence(row: pd.Series) -> str:
    """One row of `conclusions.carrier_verdicts` in words: the partial Spearman and the knob's taus."""
    partial = _partial_spearman(row)
    return (f"n = {row.n:.0f} pretraining runs; partial Spearman of robustness with {row.outcome} given pretraining "
            f"test accuracy" + (" and the seed" if row.blocked else "") + partial
            + f"; Kendall tau of {row.knob} with robustness {row.robustness_tau:+.2f}, with {row.outcome} "
              f"{row.outcome_tau:+.2f}")


def beyond_evidence(row: pd.Series) -> str:
    """One row of `conclusions.beyond_verdicts` in words: the partial Spearman and how much the controls explain."""
    partial = _partial_spearman(row)
    mostly = row.explained >= conclusions.MOSTLY_CONTROLS
    explained = ("" if np.isnan(row.explained) else f"; the controls explain {row.explained:.0%} of its rank "
                 "variance" + (f" (from {conclusions.MOSTLY_CONTROLS:.0%} on, not tested)" if mostly else ""))
    return (f"n = {row.n:.0f} pretraining runs; partial Spearman of {row.property} with {row.outcome} given "
            f"pretraining test accuracy and LogME{partial}{explained}")


def with_evidence(table: pd.DataFrame, builder: Callable[[pd.Series], str]) -> pd.DataFrame:
    """A verdict table with an `evidence` column: `builder` (one of the *_evidence above) on each row."""
    return table.assign(evidence=[builder(row) for _, row in table.iterrows()])


def emphasis(verdict: str) -> str:
    """A verdict in bold; an exploratory reading (`family.reading`) as it is: it is not an answer."""
    return verdict if verdict.startswith("exploratory") else f"**{verdict}**"


def verdict_lines(table: pd.DataFrame, prefix: str = "") -> list[str]:
    """Per verdict (claim, verdict, evidence): "claim: **verdict**. evidence" (no bold for an exploratory
    reading), after `prefix`."""
    return [f"{prefix}{r.claim}: {emphasis(r.verdict)}. {r.evidence}" for r in table.itertuples()]


def verdict_list(table: pd.DataFrame, prefix: str = "") -> str:
    """The verdicts of `verdict_lines` as a Markdown bullet list."""
    return "\n".join(f"- {line}" for line in verdict_lines(table, prefix))


# ---------------------------------------------------------------- the confirmatory question

REASONS = dict(supported="significant within the family, in the claim's direction",
               against="significant within the family, and the effect points against the claim",
               not_significant="not significant within the family",
               points_against="not significant within the family, and the effect points against the claim",
               absent="not in this study (it lacks the method, the property or the knob the test needs)",
               too_few="too few pretraining runs for the test",
               cannot_reach="left out of the family: its smallest attainable p ({smallest:.2g}) lies above alpha / m "
                            "({bar:.2g}), so no data could make it hold at this size",
               gate="its instrument's positive control ({gate}) does not hold, so it cannot be read")


def reason_text(row: pd.Series, alpha: float = family.ALPHA) -> str:
    """Why a primary verdict is what it is, in words (`confirmatory.REASONS`)."""
    return REASONS[row.reason].format(smallest=row.smallest_p, bar=alpha / max(row.m, 1), gate=row.gate)


def _effect_text(row: pd.Series) -> str:
    """ "0.34 [0.20, 0.58] (ratio sam / adam)", or "-" with no effect."""
    if pd.isna(row.effect):
        return "-"
    interval = "" if pd.isna(row.ci_low) else f" [{row.ci_low:.3g}, {row.ci_high:.3g}]"
    return f"{row.effect:.3g}{interval} ({row.effect_kind})"


def primary_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The primary table as a reader sees it: claim, decision and why, effect with its simultaneous interval,
    runs, raw and Holm-adjusted p."""
    return pd.DataFrame(dict(claim=table.claim, decision=table.decision, why=[reason_text(r) for _, r in table.iterrows()],
                             effect=[_effect_text(r) for _, r in table.iterrows()], runs=table.n,
                             p=[stats.p_text(p) if pd.notna(p) else "-" for p in table.p_value],
                             p_adjusted=[stats.p_text(p) if pd.notna(p) else "-" for p in table.p_adjusted]))


def primary_markdown(table: pd.DataFrame) -> str:
    """The primary table in Markdown (findings.md opens with it)."""
    rows = primary_rows(table)
    lines = ["| " + " | ".join(rows.columns) + " |", "|" + "---|" * len(rows.columns)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows.itertuples(index=False)]
    return "\n".join(lines)


def _named(table: pd.DataFrame) -> str:
    """The ids of a few verdicts, joined in words."""
    ids = list(table.id)
    return ", ".join(ids[:-1]) + (" and " if len(ids) > 1 else "") + (ids[-1] if ids else "")


def answer_sentences(table: pd.DataFrame, alpha: float = family.ALPHA) -> list[str]:
    """Two plain sentences from the primary table: what the instrument sees (the controls), and the answer to
    the question (the claims and the knob)."""
    controls, claims = table[table.kind == "control"], table[table.kind != "control"]
    seen = controls[controls.decision == "holds"]
    first = (f"The instrument sees {len(seen)} of its {len(controls)} positive controls"
             + (f" ({_named(seen)})" if len(seen) else "")
             + (f"; not {_named(controls[controls.decision != 'holds'])}" if len(seen) < len(controls) else "")
             + ".") if len(controls) else "No positive control was declared: the instrument is not checked."
    decided = claims[claims.decision != "cannot tell"]
    m = int(table.m.iloc[0]) if len(table) else 0
    second = (f"On the question itself, {len(decided)} of {len(claims)} primary claims are decided within the family "
              f"of {m} (alpha {alpha:g}, Holm)"
              + (": " + "; ".join(f"{r.claim}: {r.decision}" for r in decided.itertuples()) if len(decided) else
                 ": the data cannot tell whether robustness or flatness makes a better start at this size")
              + ".")
    return [first, second]


def plan_sentence(record: dict | None, current: str) -> str:
    """Which plan the verdicts follow: its hash, when it was written, and whether it changed since."""
    if record is None:
        return (f"No plan was stored before the runs (its hash would be {current}): these primary verdicts were not "
                "declared in advance.")
    said = f"The plan ({record['hash']}, written {record['written']}) declared these hypotheses before the runs"
    if record["hash"] != current:
        return said + f"; the study's settings now give another plan ({current}): the verdicts follow the new one."
    if record["earlier"]:
        return said + f"; it replaced {len(record['earlier'])} earlier plan(s) ({', '.join(e['hash'] for e in record['earlier'])})."
    return said + "; it has not changed since."


def plan_sentences(plan: pd.DataFrame) -> list[str]:
    """The planner's table (`planner.plan_table`) in words: per primary hypothesis its simulated power at the study's
    size and the runs per method (with their time) for 80% and 90% power, then where the times come from."""
    def took(seconds: float) -> str:
        return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"

    lines = []
    for r in plan.itertuples():
        if pd.isna(r.power):
            lines.append(f"{r.id}: the pilot cannot estimate it or the control that gates it: no power to state.")
            continue
        now = f"{r.id}: {r.power:.0%} power [{r.ci_low:.0%}, {r.ci_high:.0%}] at {r.runs_per_method} runs per method"
        if not r.in_family:
            now += " (out of the family there: its smallest p cannot reach alpha / m)"
        if r.runs_80 is None:
            reach = f"not 80% within {r.most} runs per method"
        else:
            reach = f"80% at {r.runs_80} runs per method ({took(r.seconds_80)}), " + (
                f"90% at {r.runs_90} ({took(r.seconds_90)})" if r.runs_90 is not None else f"90% not within {r.most}")
        lines.append(f"{now}; {reach}.")
    if len(plan):
        first = plan.iloc[0]
        lines.append(f"Times: {first.seconds_per_run:.0f} s per pretraining run times the design's pretraining runs "
                     f"(each method and knob value at every seed), linear in runs though the landscape's pairs grow "
                     f"faster; the {first.seconds_per_run:.0f} s are {first.time_source}.")
    return lines


def arch_sentences(agreement: pd.DataFrame, pooled: str) -> list[str]:
    """What the architecture comparison says, from its `architectures.agreement` table (one column per
    architecture, then `pooled`, the column of the verdicts pooled over them): how many verdicts agree across
    architectures, and what holds pooled or on one."""
    archs = [c[2:] for c in agreement.columns if c.startswith("r ")]
    said = lambda v: not v.startswith("cannot tell")  # noqa: E731 -- a verdict that says something
    both = agreement[[f"r {a}" for a in archs]].notna().all(axis=1)
    lines = [f"Across {', '.join(archs)}: {int(agreement.agree.sum())} of {len(agreement)} main tests reach the same "
             f"decision (holds, does not hold or cannot tell) on every architecture, each architecture's tests one "
             f"family, Holm-adjusted; the rank correlation has the same sign on every architecture in "
             f"{int(agreement.same_sign.sum())} of the {int(both.sum())} tests that each of them can compute."]
    for arch in archs + [pooled]:
        shown = agreement[agreement[arch].map(said)]
        where = "pooled with the architecture as a block" if arch == pooled else f"on {arch}"
        rs = lambda row: ", ".join(f"{row[f'r {a}']:+.2f} on {a}" for a in archs)  # noqa: E731
        lines.append(f"{where.capitalize()}: " + ("; ".join(f"{r.claim}: **{r[arch]}** (rank correlation {rs(r)})"
                                                           for _, r in shown.iterrows())
                                                 if len(shown) else "no verdict other than cannot tell") + ".")
    return lines


def reliability_sentence(table: pd.DataFrame, target: float = 0.9) -> str:
    """What a `tables.reliability` table says: which run-level properties reach `target` test-retest reliability
    as the study uses them (the mean of their replicates), and how much of the others' spread is noise."""
    def shown(r: tuple) -> str:
        return f"{r.property} {r.reliability:.2f} [{r.reliability_low:.2f}, {r.reliability_high:.2f}]"

    if table.empty:
        return "Fewer than two pretraining runs are measured on every replicate: no test-retest reliability to estimate."
    reached, below = table[table.reliability >= target], table[table.reliability < target].sort_values("reliability")
    runs, k = int(table.runs.max()), int(table.replicates.max())
    text = (f"Each property measured {k} times on {runs} pretraining runs: {len(reached)} of {len(table)} reach a "
            f"reliability of {target} as the study uses them (the mean of the {k} replicates; 95% intervals)")
    text += ": " + ", ".join(shown(r) for r in reached.itertuples()) if len(reached) else ""
    if len(below):
        text += (". Below it: " + "; ".join(f"{shown(r)}, {r.noise_share:.0%} of its spread between runs is "
                                             "measurement noise" for r in below.itertuples()))
    return text + "."
