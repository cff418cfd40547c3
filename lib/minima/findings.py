"""The findings page: the primary verdicts first (`minima.confirmatory`), then every exploratory test.

`page` decides the preset's primary hypotheses as their own family and gathers the exploratory tests from their
tables (the report's claims, every method against Adam on every outcome, the literature check, robustness and
flatness beyond source accuracy and LogME, the one-knob verdicts and the carrier verdicts), counts them,
recomputes the interval readings and the intervals shown at the simultaneous level, and gives every test its
Benjamini-Hochberg q-value and a reading without a verdict word (`family.explore`). `study_findings` writes
findings.md from it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from minima import architectures, conclusions, confirmatory, family, literature, planner, prose, stats, tables
from minima.config import Study

GROUPS = {"report": "report's claims", "method": "method comparisons (every method against adam on every outcome)",
          "literature": "literature signatures", "equal loss": "literature signatures at equal train loss",
          "beyond": "robustness and flatness beyond source accuracy and LogME (one each per outcome)",
          "knob": "one-knob verdicts", "carrier": "carrier verdicts (robustness beyond source accuracy, per knob)"}
COLUMNS = ["group", "claim", "verdict", "decision", "p_value", "p_adjusted", "kind", "evidence"]


@dataclass
class Page:
    """The primary verdicts (`confirmatory.primary_table`), the exploratory tests (one row each, `COLUMNS`: the
    reading in `verdict`, the BH q-value in `p_adjusted`), their count, the intervals' level and the tables that
    notebook 06 shows with q-values."""

    primary: pd.DataFrame
    verdicts: pd.DataFrame
    m: int
    level: float
    comparisons: pd.DataFrame
    literature: pd.DataFrame


def _sign(effect: pd.Series, ratio: pd.Series, expected: pd.Series) -> pd.Series:
    """+1 where an effect (a ratio or a difference) lies on the expected side, -1 on the other."""
    effect = np.asarray(effect, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sign(np.where(ratio, np.log(effect), effect)) * expected


def _why(verdict: str) -> str:
    """The "cannot tell" a test verdict falls back to when its adjusted p is not significant."""
    return verdict if verdict.startswith("cannot tell") else stats.SPANS_ZERO


def _literature_tests(check: pd.DataFrame) -> pd.DataFrame:
    """The literature table's tests: one per signature and one per curvature at equal train loss."""
    expected = np.where(check.expected == "higher", 1, -1)
    raw = pd.DataFrame(dict(group="literature", key=check.index, claim=check.method + " " + check.claim,
                            p_value=check.p_value, sign=_sign(check.effect, check.scale == "ratio", expected),
                            why_not=[_why(v) for v in check.verdict]))
    has = check.verdict_at_equal_loss != ""
    equal = pd.DataFrame(dict(group="equal loss", key=check.index[has],
                              claim=check.method[has] + " " + check.claim[has] + " at equal train loss",
                              p_value=check.p_value_at_equal_loss[has],
                              sign=_sign(check.ratio_at_equal_loss[has], True, expected[has]),
                              why_not=[_why(v) for v in check.verdict_at_equal_loss[has]]))
    return pd.concat([raw, equal], ignore_index=True)


def _knob_tests(knobs: pd.DataFrame | None) -> list[pd.DataFrame]:
    """The one-knob and carrier verdicts with their evidence (their tests do not depend on the family's level)."""
    if knobs is None or not len(knobs):
        return []
    knob = prose.with_evidence(conclusions.knob_verdicts(conclusions.knob_correlations(knobs)), prose.knob_evidence)
    carrier = prose.with_evidence(conclusions.carrier_verdicts(knobs), prose.carrier_evidence)
    return [knob.assign(group="knob", key=None), carrier.assign(group="carrier", key=None)]


def _tests(properties: pd.DataFrame, finetuning: pd.DataFrame, protocol: str, knob_tests: list[pd.DataFrame],
           level: float) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The test verdicts (group, key, claim, p_value, sign, why_not, evidence), the interval verdicts, and
    the method comparison and literature tables they come from, intervals at `level`."""
    outcomes = conclusions.run_outcomes(finetuning, protocol)
    claims = prose.with_evidence(conclusions.claims(properties, outcomes, finetuning, protocol, level),
                                 prose.claim_evidence)
    beyond = prose.with_evidence(conclusions.beyond_verdicts(properties.merge(outcomes, on=["method", "pretrain_seed"])),
                                 prose.beyond_evidence)
    comparisons = conclusions.method_comparisons(finetuning, protocol, level=level)
    check = literature.check(properties, level=level)
    frames = [claims[claims.kind == "test"].assign(group="report", key=None)
              .loc[lambda t: ~t.claim.isin(comparisons.claim)],
              comparisons.assign(group="method", key=comparisons.index,
                                 why_not=[stats.TOO_FEW if np.isnan(p) else stats.SPANS_ZERO
                                          for p in comparisons.p_value],
                                 evidence=[prose.comparison_evidence(c, level) for _, c in comparisons.iterrows()]),
              _literature_tests(check), beyond.assign(group="beyond", key=None), *knob_tests]
    columns = ["group", "key", "claim", "p_value", "sign", "why_not", "evidence"]
    tests = pd.concat([f.reindex(columns=columns) for f in frames], ignore_index=True)
    return tests, claims[claims.kind == "interval"], comparisons, check


def page(properties: pd.DataFrame, finetuning: pd.DataFrame, protocol: str,
         knobs: pd.DataFrame | None = None, alpha: float = family.ALPHA, primary: tuple[str, ...] = ()) -> Page:
    """The primary verdicts of `primary` (ids of `minima.hypotheses`) and every exploratory test of the page (see
    the module docstring); `knobs` is `conclusions.knob_runs`."""
    joined = properties.merge(conclusions.run_outcomes(finetuning, protocol), on=["method", "pretrain_seed"])
    primary_table = confirmatory.primary_table(joined, knobs, list(primary), alpha)
    knob_tests = _knob_tests(knobs)
    # two passes: the first only counts the family (m), which sets the level the second computes intervals at
    tests, intervals, _, _ = _tests(properties, finetuning, protocol, knob_tests, 0.95)
    m = family.size(tests, len(intervals))
    level = family.interval_level(m, alpha)
    tests, intervals, comparisons, check = _tests(properties, finetuning, protocol, knob_tests, level)
    tests = family.explore(tests, len(intervals), alpha)
    tests["evidence"] = [e if np.isnan(p) else f"{e}; raw {stats.p_text(p)}, BH q = {q:.2g}"
                         for e, p, q in zip(tests.evidence.fillna(""), tests.p_value, tests.p_adjusted)]
    method = tests[tests.group == "method"].set_index("key")
    comparisons = comparisons.assign(p_adjusted=method.p_adjusted, verdict=method.verdict, decision=method.decision)
    lit, equal = (tests[tests.group == g].set_index("key") for g in ("literature", "equal loss"))
    check = check.assign(p_adjusted=lit.p_adjusted, verdict=lit.verdict, decision=lit.decision,
                         p_adjusted_at_equal_loss=equal.p_adjusted,
                         verdict_at_equal_loss=equal.verdict.reindex(check.index).fillna(""))
    intervals = intervals.assign(group="report", p_value=np.nan, p_adjusted=np.nan, decision=intervals.verdict,
                                 verdict=[f"exploratory ({level:.2%} interval): {v}" for v in intervals.verdict])
    verdicts = pd.concat([tests.assign(kind="test"), intervals], ignore_index=True)
    return Page(primary_table, verdicts[COLUMNS], m, level, comparisons, check)


def statement(p: Page) -> str:
    """Which verdicts the family holds, how many, and how they are adjusted."""
    counts = p.verdicts[p.verdicts.kind == "test"].dropna(subset=["p_value"]).group.value_counts()
    groups = {GROUPS[g]: int(counts.get(g, 0)) for g in GROUPS}
    return prose.statement(groups, int((p.verdicts.kind == "interval").sum()))


def significant_comparisons(p: Page, alpha: float = family.ALPHA) -> str:
    """The method comparisons with a BH q-value below alpha (exploratory), in one line."""
    rows = p.comparisons[p.comparisons.p_adjusted < alpha]
    if rows.empty:
        return f"Method comparisons (exploratory, {len(p.comparisons)} tests): none has q < {alpha:g}."
    return (f"Method comparisons (exploratory, {len(p.comparisons)} tests) with q < {alpha:g}: "
            + "; ".join(f"{r.claim} ({r.outcome} {r.difference:+.3g}, q = {r.p_adjusted:.2g})"
                        for r in rows.itertuples()) + ".")


def report_claims(p: Page) -> pd.DataFrame:
    """The report's claims in the page's order: the first, the two it asks of swa and noisy Adam (test accuracy
    against adam, from the method comparisons), then the rest."""
    report = p.verdicts[p.verdicts.group == "report"]
    asked = p.verdicts[(p.verdicts.group == "method")
                       & p.verdicts.claim.isin([f"{m} finetunes to a higher test accuracy than adam"
                                                for m in ("swa", "noisy_adam")])]
    return pd.concat([report.iloc[:1], asked, report.iloc[1:]])


def study_page(study: Study) -> Page:
    """The study's primary verdicts and exploratory tests, from its tables (computed if missing)."""
    knobs = conclusions.knob_runs(study) if study.sweeps else None
    return page(conclusions.run_properties(study), tables.finetuned(study), study.protocols[0], knobs,
                primary=tuple(study.primary))


def plan_text(study: Study) -> str:
    """Which plan the primary verdicts follow: the stored plan's hash and whether the study's settings changed it."""
    return prose.plan_sentence(confirmatory.read_plan(study), confirmatory.plan_hash(confirmatory.plan(study)))


def answer(study: Study, p: Page) -> list[str]:
    """The answer, first: two sentences from the primary table, which plan they follow, and the table."""
    if p.primary.empty:
        return ["## The answer", "", "This preset declares no primary hypothesis (`primary: []`): every test below is "
                "exploratory, and the page gives no answer.", ""]
    return ["## The answer", "", *prose.answer_sentences(p.primary), "", plan_text(study), "",
            prose.primary_markdown(p.primary), ""]


def study_findings(study: Study) -> str:
    """findings.md: the answer first (`answer`), then fit, best per metric, the exploratory tests stated and every
    one with its evidence, the rank agreement of the properties and transferability scores with each outcome, and
    the power of the design (the README's findings come from the answer)."""
    p, finetuned, protocol = study_page(study), tables.finetuned(study), study.protocols[0]
    lines = [statement(p), prose.fit_sentence(tables.pretrained(study)),
             prose.best_sentence(conclusions.study_scoreboard(study))]
    lines += prose.verdict_lines(report_claims(p))
    lines += [prose.no_comparison_sentence(tables.pretrained(study).method) or significant_comparisons(p)]
    lines += [f"Literature check: {line}" for line in prose.lines(p.literature)]
    lines += [f"Rank agreement with the finetuning outcome (exploratory, unadjusted): {line}"
              for line in prose.agreement_sentences(conclusions.rank_agreement(conclusions.joined_runs(study)))]
    lines += prose.verdict_lines(p.verdicts[p.verdicts.group == "beyond"], "Beyond source accuracy and LogME: ")
    lines += prose.power_sentences(finetuned, protocol, alpha=family.ALPHA / p.m)
    if study.primary:
        lines += [f"Planner (the primary hypotheses' power, simulated from this study): {line}"
                  for line in prose.plan_sentences(planner.study_plan(study, pages=300))]
    lines += prose.verdict_lines(p.verdicts[p.verdicts.group == "knob"], "One knob: ")
    lines += prose.verdict_lines(p.verdicts[p.verdicts.group == "carrier"], "What carries the knob: ")
    if study.compare_archs:
        arch_tests = architectures.verdicts(architectures.pooled_runs(study))
        lines += prose.arch_sentences(architectures.agreement(arch_tests), architectures.POOLED)
    header = (f"From study `{study.name}` (preset {study.preset}): {len(study.methods)} methods x "
              f"{len(study.pretrain_seeds)} pretraining seeds, {len(study.finetune_seeds)} finetuning seeds each, "
              f"protocol {protocol}.")
    return "\n".join([header, "", *answer(study, p), "## Exploratory", ""] + [f"- {line}" for line in lines]) + "\n"


# ---------------------------------------------------------------- replication: the same plan, another rounding

def replication(studies: list[Study]) -> pd.DataFrame:
    """The primary verdicts of several runs of one plan side by side: per hypothesis the decision and effect in
    each study and whether every study reached the same decision (`same`)."""
    tables = {s.name: study_page(s).primary.set_index("id") for s in studies}
    first = next(iter(tables.values()))
    out = first[["claim", "kind"]].copy()
    for name, t in tables.items():
        out[f"decision {name}"], out[f"effect {name}"] = t.decision, t.effect
    decisions = out[[f"decision {n}" for n in tables]]
    return out.assign(same=decisions.nunique(axis=1) == 1).reset_index()


def replication_markdown(table: pd.DataFrame, studies: list[Study]) -> str:
    """What the README may quote: the plan's hash, the settings that differed, and the primary verdicts that
    reached the same decision in every study (holds or does not hold), then those that did not."""
    hashes = {confirmatory.plan_hash(confirmatory.plan(s)) for s in studies}
    if len(hashes) > 1:
        raise ValueError(f"the studies follow different plans ({', '.join(sorted(hashes))}): a replication needs one")
    names = [s.name for s in studies]
    settings = ", ".join(f"`{s.name}` (threads={s.threads}, device {s.device})" for s in studies)
    agreed = table[table.same & (table[f"decision {names[0]}"] != "cannot tell")]
    lines = [f"Plan `{hashes.pop()}`, run as {settings}: {int(table.same.sum())} of {len(table)} primary verdicts "
             "reach the same decision in every run."]
    lines += [f"- {r.claim}: **{r[f'decision {names[0]}']}** in every run (effect "
              + ", ".join(f"{r[f'effect {n}']:.3g}" for n in names) + ")" for _, r in agreed.iterrows()]
    lines += [f"- {r.claim}: differs between the runs ("
              + ", ".join(f"{r[f'decision {n}']} in {n}" for n in names) + "): not quoted"
              for _, r in table[~table.same].iterrows()]
    if agreed.empty:
        lines.append("- No primary verdict holds or fails in every run: the README quotes none.")
    return "\n".join(lines)
