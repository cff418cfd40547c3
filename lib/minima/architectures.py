"""The same study on several architectures (`compare_archs`): each architecture's study, the main verdicts per
architecture, and pooled over architectures with the architecture as a block.

The main verdicts: does robustness (or a flatness measure) go with a better finetuning outcome, and does each
method finetune better than Adam, for every outcome. Each is a rank test over pretraining runs (the unit): the
correlation of the property's ranks (or of "this run is of the method" against Adam's runs) with the outcome's,
with a permutation p (`stats.block_rank_correlation`). Pooled, the ranks are taken within each architecture and
the runs permuted only within it, so that a difference between architectures (EfficientNet's sharpness on
another scale than ResNet's, or a higher accuracy) can neither make nor hide a link. Each column (one
architecture, or pooled) is one family, Holm-adjusted: its chance of any false verdict is at most 5%.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from minima import conclusions, family, stats
from minima.config import Study

PROPERTIES = ("robustness", *conclusions.FLATNESS)
BASELINE = "adam"
POOLED = "pooled"


def studies(study: Study) -> list[Study]:
    """The study itself, then the same study on each of its `compare_archs`."""
    return [study] + [arch_study(study, arch) for arch in study.compare_archs]


def arch_study(study: Study, arch: str) -> Study:
    """`study` with another architecture, as its own study `<name>-<arch>` (every other key the same)."""
    return Study.from_dict({**study.as_dict(), "arch": arch, "compare_archs": [], "name": f"{study.name}-{arch}"})


def pooled_runs(study: Study) -> pd.DataFrame:
    """One row per pretraining run of every architecture (`conclusions.joined_runs` of each), with its `arch`."""
    return pd.concat([conclusions.joined_runs(s).assign(arch=s.arch) for s in studies(study)], ignore_index=True)


def tests(runs: pd.DataFrame, blocked: bool) -> pd.DataFrame:
    """Every main test on `runs` (claim, kind, property or method, outcome, r, p_value, sign, n, why_not), the
    architecture as a block when `blocked`."""
    rows = []
    for outcome in conclusions.OUTCOMES:
        better = conclusions.BETTER[outcome]
        for prop in PROPERTIES:
            if prop not in runs:
                continue
            res = stats.block_rank_correlation(runs[prop], runs[outcome], runs.arch if blocked else None)
            flatter = 1 if conclusions.HIGHER_IS_BETTER[prop] else -1  # flatness measures: lower is flatter
            word = "robustness" if prop == "robustness" else f"a lower {prop} (flatter)"
            rows.append(dict(claim=f"{word} goes with a run that {conclusions.OUTCOME_WORDS[outcome]}", kind="link",
                             subject=prop, outcome=outcome, **res, sign=np.sign(res["r"]) * better * flatter))
        for method in sorted(set(runs.method) - {BASELINE}):
            part = runs[runs.method.isin([BASELINE, method])]
            res = stats.block_rank_correlation(part.method == method, part[outcome], part.arch if blocked else None)
            rows.append(dict(claim=f"{method} {conclusions.OUTCOME_WORDS[outcome]} than {BASELINE}", kind="method",
                             subject=method, outcome=outcome, **res, sign=np.sign(res["r"]) * better))
    out = pd.DataFrame(rows)
    return out.assign(why_not=[stats.TOO_FEW if np.isnan(p) else "cannot tell (no significant rank correlation)"
                               for p in out.p_value])


def verdicts(runs: pd.DataFrame) -> pd.DataFrame:
    """The main tests per architecture and pooled with the architecture as a block, each column a family: one row
    per test and column (arch or "pooled"), with p_adjusted and the verdict."""
    parts = [family.adjust(tests(runs[runs.arch == arch], blocked=False)).assign(arch=arch)
             for arch in runs.arch.unique()]
    parts.append(family.adjust(tests(runs, blocked=True)).assign(arch=POOLED))
    return pd.concat(parts, ignore_index=True)


def decision(verdict: str) -> str:
    """A verdict without its reason: holds, does not hold or cannot tell."""
    return verdict.split(" (")[0]


def agreement(table: pd.DataFrame) -> pd.DataFrame:
    """One row per test: its verdict on each architecture and pooled, each architecture's rank correlation
    (`r <arch>`), whether the architectures reach the same decision (`agree`: the reasons for a "cannot tell"
    may differ) and whether their correlations share a sign (`same_sign`; False where one is undefined)."""
    by_test = table.set_index(["kind", "claim", "arch"])
    archs = [c for c in table.arch.unique() if c != POOLED]
    verdicts, r = by_test.verdict.unstack()[archs + [POOLED]], by_test.r.unstack()[archs]
    signs = np.sign(r)
    return verdicts.assign(
        **{f"r {a}": r[a] for a in archs},
        agree=verdicts[archs].map(decision).nunique(axis=1) == 1,
        same_sign=signs.notna().all(axis=1) & (signs.nunique(axis=1) == 1)).reset_index()

