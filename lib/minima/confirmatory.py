"""The confirmatory question: the preset's primary hypotheses, declared before the runs, decided as one family.

A page of 53 adjusted verdicts on 18 runs is calibrated and blind (8% power for SAM's flatter minimum). So a
preset names a few primary hypotheses (`primary`, ids of `minima.hypotheses.HYPOTHESES`), its plan is written
with a hash before the first run trains (`write_plan`), and only they share the family-wise budget alpha:
1. each hypothesis is one test on the pretraining runs: a control is the method's contrast with Adam blocked by
   seed (`stats.blocked_differences`, logs for curvatures); a claim a Spearman correlation over runs with a
   permutation p (exact when the runs are few); a knob the intersection-union of two within-seed rank
   correlations along the knob (knob with robustness, knob with the outcome), exact permutation p;
2. a test whose smallest attainable p (`stats.smallest_p`) lies above alpha / m can never reject: it leaves m
   (Tarone 1990), repeated until none does, and the page says why; so does one the study cannot run at all;
3. Holm over the rest; intervals at the simultaneous level 1 - alpha / m;
4. a claim read through an instrument (`Hypothesis.gate`: flatness through the Hessian) is decided only where
   that instrument's positive control holds, else it cannot be read. This only removes rejections, so the
   chance of any false verdict stays at most alpha (`tests/test_confirmatory.py` simulates it).
Steps 2 and 4 depend on the design and the controls only, never on the claim's own data.
Everything else on the page is exploratory (`minima.findings`: Benjamini-Hochberg q-values, no verdict word).
"""
from __future__ import annotations

import datetime
import hashlib
import json

import numpy as np
import pandas as pd

from minima import family, stats, store
from minima.config import Study
from minima.hypotheses import HYPOTHESES, Hypothesis

N_PERM = 20000  # permutations of a Monte Carlo p: its floor 1 / 20001 leaves every claim over >= 8 runs in reach
MIN_RUNS = 5  # fewer runs than this give a rank correlation no meaning (conclusions.MIN_RUNS_FOR_RANKS)
RATIO = ("hessian_top", "hessian_trace", "adaptive_average", "adaptive_worst")  # curvatures: logs, ratios
DECISIONS = ("holds", "does not hold", "cannot tell")
# why a decision is what it is; `prose.REASONS` words them
REASONS = ("supported", "against", "not_significant", "points_against", "absent", "too_few", "cannot_reach", "gate")
COLUMNS = ["id", "kind", "claim", "source", "test", "n", "effect", "effect_kind", "ci_low", "ci_high", "level",
           "p_value", "smallest_p", "in_family", "m", "p_adjusted", "decision", "reason", "sign", "gate", "df",
           "block_share", "efficiency", "robustness_r", "robustness_p", "knob"]


def _control(runs: pd.DataFrame, h: Hypothesis, level: float) -> dict:
    """A method against Adam on one property, blocked by seed, the residual variance pooled over every method's runs
    (as the run-level contrasts are: df = runs - methods - seeds + 1); ratios (method / adam) for curvatures."""
    ratio = h.x in RATIO
    test = "seed-blocked t test" + (" on logs" if ratio else "")
    if h.method not in set(runs.method) or "adam" not in set(runs.method) or h.x not in runs:
        return dict(test=test, reason="absent")
    v = runs[h.x].astype(float)
    table = runs[["method", "pretrain_seed"]].assign(value=np.log(v.where(v > 0)) if ratio else v)
    c = stats.blocked_differences(table, "value", "adam", level=level).set_index("method").loc[h.method]
    back = np.exp if ratio else (lambda a: a)
    row = dict(test=test, n=int(c.runs_a + c.runs_b), effect=back(c.difference),
               effect_kind=f"ratio {h.method} / adam" if ratio else f"{h.method} - adam", ci_low=back(c.ci_low),
               ci_high=back(c.ci_high), p_value=c.p_value, sign=np.sign(c.difference) * h.expected, df=c.df,
               block_share=c.block_share, efficiency=c.efficiency)
    if np.isnan(c.df):
        return row | dict(reason="too_few")
    return row | dict(smallest_p=0.0)


def _claim(runs: pd.DataFrame, h: Hypothesis, level: float, n_perm: int) -> dict:
    """A rank correlation of a property with an outcome over every pretraining run, permutation p."""
    test = "Spearman over runs, permutation p"
    if h.x not in runs or h.y not in runs:
        return dict(test=test, reason="absent")
    both = runs[[h.x, h.y]].astype(float).dropna()
    n = len(both)
    if n < MIN_RUNS:
        return dict(test=test, n=n, reason="too_few")
    rank = stats.block_rank_correlation(both[h.x], both[h.y], None, n_perm)
    low, high = stats.fisher_interval(rank["r"], n, "spearman", level) if not np.isnan(rank["r"]) else (np.nan,) * 2
    exact = stats.permutation_count((n,)) <= n_perm
    return dict(test=test.replace("permutation", "exact permutation" if exact else "permutation"), n=n,
                effect=rank["r"], effect_kind="Spearman r", ci_low=low, ci_high=high, p_value=rank["p_value"],
                smallest_p=stats.smallest_p((n,), n_perm), sign=np.sign(rank["r"]) * h.expected)


def _knob(knobs: pd.DataFrame | None, h: Hypothesis, level: float, n_perm: int) -> dict:
    """Along the first swept knob, seeds as blocks: the knob moves robustness and the outcome; the larger p."""
    test = "within-seed rank correlations along the knob, permutation p, both needed"
    if knobs is None or not len(knobs) or h.x not in knobs or h.y not in knobs:
        return dict(test=test, reason="absent")
    first = knobs.iloc[0]
    part = knobs[(knobs.method == first.method) & (knobs.knob == first.knob)]
    part = part[["knob_value", "pretrain_seed", h.x, h.y]].astype(float).dropna()
    name = f"{first.method}.{first.knob}"
    sizes = tuple(int(c) for c in part.groupby("pretrain_seed").size())
    if len(part) < MIN_RUNS or part.knob_value.nunique() < 3:
        return dict(test=test, n=len(part), knob=name, reason="too_few")
    moved = stats.block_rank_correlation(part.knob_value, part[h.x], part.pretrain_seed, n_perm)
    along = stats.block_rank_correlation(part.knob_value, part[h.y], part.pretrain_seed, n_perm)
    towards = np.sign(moved["r"]) or 1.0  # the knob's direction that buys robustness
    effect = along["r"] * towards
    low, high = stats.fisher_interval(effect, len(part), "spearman", level) if not np.isnan(effect) else (np.nan,) * 2
    exact = stats.permutation_count(sizes) <= n_perm
    return dict(test=test.replace("permutation", "exact permutation" if exact else "permutation"), n=len(part),
                effect=effect, effect_kind="within-seed rank r, knob (towards robustness) with the outcome",
                ci_low=low, ci_high=high, p_value=max(moved["p_value"], along["p_value"]),
                smallest_p=stats.smallest_p(sizes, n_perm), sign=np.sign(moved["r"]) * np.sign(along["r"]) * h.expected,
                robustness_r=moved["r"], robustness_p=moved["p_value"], knob=name)


def _tests(runs: pd.DataFrame, knobs: pd.DataFrame | None, ids: list[str], level: float, n_perm: int) -> pd.DataFrame:
    """One raw test per primary hypothesis, in the plan's order, intervals at `level`."""
    rows = []
    for i in ids:
        h = HYPOTHESES[i]
        row = (_control(runs, h, level) if h.kind == "control" else _claim(runs, h, level, n_perm)
               if h.kind == "claim" else _knob(knobs, h, level, n_perm))
        rows.append(dict(id=h.id, kind=h.kind, claim=h.claim, source=h.source, gate=h.gate, level=level) | row)
    return pd.DataFrame(rows, columns=COLUMNS)


def members(smallest: pd.Series, alpha: float = family.ALPHA) -> pd.Series:
    """Which tests belong in the family: those with a smallest attainable p at most alpha / m, m counting the
    members themselves (Tarone 1990: drop the ones that cannot reach it, recount, until none drops)."""
    keep = smallest.notna()
    while True:
        drop = keep & (smallest > alpha / max(int(keep.sum()), 1))
        if not drop.any():
            return keep
        keep &= ~drop


def _decide(t: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Holm over the family's members, then the gates: decision and reason per row."""
    inside = t.in_family & t.p_value.notna()
    p_adj = pd.Series(np.nan, index=t.index)
    if inside.any():
        p_adj[inside] = family.holm(t.p_value[inside].to_numpy(float))
    decision, reason = [], []
    for (_, r), q in zip(t.iterrows(), p_adj):
        if not r.in_family:
            said = ("cannot tell", r.reason if isinstance(r.reason, str) else "cannot_reach")
        elif q < alpha and r.sign != 0:
            said = ("holds", "supported") if r.sign > 0 else ("does not hold", "against")
        else:
            said = ("cannot tell", "points_against" if r.sign < 0 else "not_significant")
        decision.append(said[0])
        reason.append(said[1])
    out = t.assign(p_adjusted=p_adj, decision=decision, reason=reason)
    held = dict(zip(out.id, out.decision))
    gated = out.gate.isin(list(held)) & out.gate.map(lambda g: held.get(g) != "holds") & out.in_family
    return out.assign(decision=out.decision.where(~gated, "cannot tell"), reason=out.reason.where(~gated, "gate"))


def primary_table(runs: pd.DataFrame, knobs: pd.DataFrame | None, ids: list[str], alpha: float = family.ALPHA,
                  n_perm: int = N_PERM) -> pd.DataFrame:
    """The primary verdicts (`COLUMNS`, one row per id in the plan's order): the test, its effect with an interval
    at the family's simultaneous level, raw and Holm-adjusted p, whether it is in the family (and m), and the
    decision with its reason (`REASONS`). `runs` has one row per pretraining run (properties beside finetuning
    outcomes, `conclusions.joined_runs`), `knobs` the knob arm's runs (`conclusions.knob_runs`) or None."""
    first = _tests(runs, knobs, ids, 0.95, n_perm)
    keep = members(first.smallest_p.astype(float), alpha)
    m = int(keep.sum())
    t = _tests(runs, knobs, ids, family.interval_level(m, alpha), n_perm) if m else first
    return _decide(t.assign(in_family=keep, m=m), alpha)


# ---------------------------------------------------------------- the plan, written before the runs

PLAN = "plan.json"
PLANNED = ("methods", "pretrain_seeds", "finetune_seeds", "protocols", "sweeps", "source", "target",
               "source_train_per_class", "target_train_per_class", "flatness_per_class", "hessian_top_k",
               "hutchinson_probes", "eval_subset_per_class", "robustness_repeats", "pretrain_epochs",
               "finetune_epochs")


def plan(study: Study, alpha: float = family.ALPHA) -> dict:
    """The study's confirmatory plan: its primary hypotheses (claim, test kind, gate), alpha, the procedure and
    the design's sizes; not the study's name or how it executes, so two runs of one design (other folders, other
    thread counts) follow one plan."""
    return dict(preset=study.preset, alpha=alpha,
                procedure="Tarone's exclusion of tests that cannot reach alpha / m, then Holm; a claim whose gate "
                          "control does not hold cannot be read; intervals at 1 - alpha / m",
                primary=[dict(id=i, claim=HYPOTHESES[i].claim, kind=HYPOTHESES[i].kind, gate=HYPOTHESES[i].gate)
                         for i in study.primary],
                design={k: getattr(study, k) for k in PLANNED})


def plan_hash(p: dict) -> str:
    """A short hash of a plan: its canonical JSON's sha256."""
    return hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest()[:12]


def read_plan(study: Study) -> dict | None:
    """The plan record stored with the study (hash, plan, when written, earlier plans), or None."""
    path = study.output_dir / PLAN
    return json.loads(path.read_text()) if path.exists() else None


def write_plan(study: Study) -> dict:
    """Store the study's plan with its hash unless the stored one is the same; a changed plan keeps the earlier
    ones' hashes and dates in `earlier`, so the page can say it changed. Returns the record."""
    current, record = plan(study), read_plan(study)
    digest = plan_hash(current)
    if record and record["hash"] == digest:
        return record
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    earlier = (record["earlier"] + [dict(hash=record["hash"], written=record["written"])]) if record else []
    record = dict(hash=digest, written=now, earlier=earlier, plan=current)
    store.write_text(study.output_dir / PLAN, json.dumps(record, indent=1))
    return record
