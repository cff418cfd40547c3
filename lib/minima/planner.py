"""How many runs the confirmatory question needs: the primary family's power by simulation (`python -m minima plan`).

A pilot's run table gives each primary hypothesis the effect and noise it is simulated with (`pilot_components`):
- a control: the method's contrast with Adam and the seed (block) and residual variances of the additive model
  value ~ method + seed over every method's runs, on logs for curvatures (as `confirmatory` tests it);
- a claim: its Spearman r over runs, simulated as normal scores with Pearson 2 sin(pi r / 6) (whose Spearman r is
  r); a claim whose property a control measures reads that control's column, and an outcome two claims share
  is built from both properties;
- the knob: the within-seed rank correlations of the knob with the property and with the outcome, each simulated
  as normal scores loading on the knob's value with the loading whose expected within-seed rank correlation it is.
`simulate_power` draws whole pages of the family at once, every run of a seed sharing that seed's effect (the
methods are paired by seed), computes every test on all pages together (`page_tests`) and decides each page as
`confirmatory.primary_table` does (`decide`: Tarone's members, Holm, the gate). A permutation p is exact where
confirmatory enumerates every permutation, else a Monte Carlo p over as many random ones: the same distribution
as confirmatory's, not the same value on one page (its permutations depend on the page's order).
`tests/test_planner.py` checks all three on pages decided by primary_table: the same decisions from its p-values,
the same exact p and effects, Monte Carlo p within their error. The designs are nested (the pages at s seeds are
the first s seeds of the largest), so the power curves share their noise.
What it leaves out: correlations between columns the hypotheses do not share (the pilot's, e.g. of robustness with
the Hessian); method effects other than the named method's on a control's property (in the balanced additive
model they move neither the contrast nor its error). A hypothesis the pilot cannot estimate still counts in m
(p = 1) and has no power to state.
"""
from __future__ import annotations

import functools
import itertools
import json
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps
from scipy.optimize import brentq

from minima import conclusions, confirmatory, family, knob_sweeps, stats, tables
from minima.config import ConfigError, Study
from minima.hypotheses import HYPOTHESES

GRID = tuple(range(2, 25))  # pretraining runs per method the planner simulates (plus the study's own)
PAGES = 1000  # simulated pages per size: a power of 80% within about +-2.5%
POWERS = (0.8, 0.9)
COMPONENTS = ["id", "kind", "x", "y", "method", "expected", "gate", "log", "n", "effect", "seed_variance",
              "residual_variance", "r", "r_x", "r_y"]
CURVES = ["id", "runs_per_method", "power", "ci_low", "ci_high", "in_family", "m", "pages"]
PLAN = ["id", "kind", "claim", "runs_per_method", "power", "ci_low", "ci_high", "in_family", "runs_80", "runs_90",
        "seconds", "seconds_80", "seconds_90", "most", "seconds_per_run", "time_source"]
SHOWN = ["id", "runs_per_method", "power", "ci_low", "ci_high", "runs_80", "runs_90", "seconds", "seconds_80",
         "seconds_90"]  # what `python -m minima plan` prints as a table


class NoPilot(ConfigError):
    """The pilot study has no stored tables to plan from."""


# ---------------------------------------------------------------- the pilot's variance components

def pilot_components(runs: pd.DataFrame, knobs: pd.DataFrame | None, ids: Sequence[str]) -> pd.DataFrame:
    """Per primary hypothesis (`COMPONENTS`, in the plan's order) what it is simulated with: a control's `effect`
    (method - adam, on logs for curvatures: `log`), `seed_variance` and `residual_variance`; a claim's Spearman
    `r`; the knob's within-seed `r_x` (knob with x) and `r_y` (knob with y); `n` the pilot's runs it used. NaN
    where the pilot cannot estimate them (the method, property or knob missing, or too few runs)."""
    rows = []
    for i in ids:
        h = HYPOTHESES[i]
        part = (_control_components(runs, h) if h.kind == "control" else _claim_components(runs, h)
                if h.kind == "claim" else _knob_components(knobs, h))
        rows.append(dict(id=h.id, kind=h.kind, x=h.x, y=h.y, method=h.method, expected=h.expected, gate=h.gate,
                         log=h.kind == "control" and h.x in confirmatory.RATIO) | part)
    return pd.DataFrame(rows, columns=COMPONENTS)


def _control_components(runs: pd.DataFrame, h) -> dict:
    """The method's blocked contrast with Adam and the seed and residual variances of value ~ method + seed: the
    residual is the blocked error variance, the seed's the unblocked within-method variance less it."""
    if h.x not in runs:
        return {}
    v = runs[h.x].astype(float)
    value = np.log(v.where(v > 0)) if h.x in confirmatory.RATIO else v
    table = runs[["method", "pretrain_seed"]].assign(value=value).dropna()
    if not {h.method, "adam"} <= set(table.method):
        return {}
    c = stats.blocked_differences(table, "value", "adam").set_index("method").loc[h.method]
    if np.isnan(c.df):
        return dict(n=len(table))  # no residual degree of freedom (one seed) or too few runs of a side
    within = table.value - table.groupby("method").value.transform("mean")
    unblocked = float((within ** 2).sum() / (len(table) - table.method.nunique()))
    residual = unblocked / c.efficiency
    return dict(n=len(table), effect=c.difference, seed_variance=max(unblocked - residual, 0.0),
                residual_variance=residual)


def _claim_components(runs: pd.DataFrame, h) -> dict:
    """The claim's Spearman r over every pilot run."""
    if h.x not in runs or h.y not in runs:
        return {}
    both = runs[[h.x, h.y]].astype(float).dropna()
    if len(both) < confirmatory.MIN_RUNS:
        return dict(n=len(both))
    r = stats.correlation_rows(both[h.x].to_numpy()[None], both[h.y].to_numpy()[None], "spearman")[0]
    return dict(n=len(both), r=float(r))


def _knob_components(knobs: pd.DataFrame | None, h) -> dict:
    """Along the first swept knob (as `confirmatory` reads it), the within-seed rank correlations of the knob with
    x and with y."""
    if knobs is None or not len(knobs) or h.x not in knobs or h.y not in knobs:
        return {}
    first = knobs.iloc[0]
    part = knobs[(knobs.method == first.method) & (knobs.knob == first.knob)]
    part = part[["knob_value", "pretrain_seed", h.x, h.y]].astype(float).dropna()
    if len(part) < confirmatory.MIN_RUNS or part.knob_value.nunique() < 3:
        return dict(n=len(part))
    r = [stats.block_rank_correlation(part.knob_value, part[c], part.pretrain_seed)["r"] for c in (h.x, h.y)]
    return dict(n=len(part), r_x=r[0], r_y=r[1])


def _known(components: pd.DataFrame) -> pd.Series:
    """Which hypotheses the pilot estimated: those it can be simulated with."""
    need = dict(control=["effect", "seed_variance", "residual_variance"], claim=["r"], knob=["r_x", "r_y"])
    return pd.Series(np.select([components.kind == k for k in need],
                               [components[columns].notna().all(axis=1) for columns in need.values()], False),
                     index=components.index)


# ---------------------------------------------------------------- simulated pages

class Pages(NamedTuple):
    """Simulated pages of one design: run columns (pages, methods, seeds) on the tests' scale (logs for
    curvatures) and the knob arm's columns (pages, knob values in increasing order, seeds)."""

    runs: dict[str, np.ndarray]
    knob: dict[str, np.ndarray]
    methods: tuple[str, ...]
    seeds: int
    knob_values: int
    count: int

    def first(self, seeds: int) -> "Pages":
        """The same pages with only their first `seeds` seeds (a nested, smaller design)."""
        return self._replace(runs={k: v[..., :seeds] for k, v in self.runs.items()},
                             knob={k: v[..., :seeds] for k, v in self.knob.items()}, seeds=seeds)


def _pearson(r: float | np.ndarray) -> np.ndarray:
    """The Pearson correlation of bivariate normal scores whose Spearman correlation is r."""
    return 2 * np.sin(np.pi * np.asarray(r, float) / 6)


def _knob_loading(r: float, values: int) -> float:
    """The loading rho of y = rho z + sqrt(1 - rho^2) noise on a knob's `values` equally spaced, standardised
    values z whose expected within-seed rank correlation with the knob is r: E[rank of y_v] is
    1 + sum over u of Phi(rho (z_v - z_u) / sqrt(2 (1 - rho^2))), inverted for rho (2 sin(pi r / 6) overshoots
    with 3 values: 0.87 for 0.8)."""
    c = np.arange(values) - (values - 1) / 2
    gaps = (c[:, None] - c[None, :]) / c.std()

    def expected(rho: float) -> float:
        return float(c @ sps.norm.cdf(rho * gaps / np.sqrt(2 * (1 - rho ** 2))).sum(1) / (c @ c))

    edge = 1 - 1e-9
    return float(np.sign(r)) if abs(r) >= expected(edge) else float(brentq(lambda rho: expected(rho) - r, -edge, edge))


def simulate_pages(components: pd.DataFrame, methods: Sequence[str], seeds: int, knob_values: int, pages: int,
                   rng: np.random.Generator) -> Pages:
    """`pages` pages of a design (`methods` x `seeds` runs, `knob_values` x `seeds` knob runs) drawn from the
    pilot's `components` (see the module docstring); hypotheses the pilot did not estimate draw nothing."""
    methods = tuple(methods)
    known = components[_known(components)]
    runs, means, spread = {}, {}, {}
    for c in known[(known.kind == "control") & known.method.isin(methods)].itertuples():
        if c.x not in runs:
            runs[c.x] = (rng.normal(0.0, np.sqrt(c.seed_variance), (pages, 1, seeds))
                         + rng.normal(0.0, np.sqrt(c.residual_variance), (pages, len(methods), seeds)))
            means[c.x], spread[c.x] = np.zeros(len(methods)), c.seed_variance + c.residual_variance
        means[c.x][methods.index(c.method)] += c.effect
    for x, mean in means.items():
        runs[x] += mean[None, :, None]
    sd = {x: np.sqrt(spread[x] + means[x].var()) for x in runs}  # each column's sd over the design's runs
    claims = known[known.kind == "claim"]
    if set(claims.y) & (set(runs) | set(claims.x)):
        raise ValueError(f"a claim's outcome ({', '.join(sorted(set(claims.y) & (set(runs) | set(claims.x))))}) is "
                         "another hypothesis's property: the planner's model has no place for it")
    for x in dict.fromkeys(claims.x):
        if x not in runs:
            runs[x], sd[x] = rng.standard_normal((pages, len(methods), seeds)), 1.0
    for y, part in claims.groupby("y", sort=False):
        rho = _pearson(part.r.to_numpy())
        rho = rho / max(1.0, float(np.sqrt((rho ** 2).sum())))  # loadings of one outcome on several properties
        runs[y] = (sum(p * runs[x] / sd[x] for p, x in zip(rho, part.x))
                   + np.sqrt(max(0.0, 1 - (rho ** 2).sum())) * rng.standard_normal((pages, len(methods), seeds)))
    knob = {}
    arm = known[known.kind == "knob"]
    if len(arm) and knob_values:
        c = arm.iloc[0]
        z = np.arange(knob_values) - (knob_values - 1) / 2
        z = z / z.std()
        for column, r in ((c.x, c.r_x), (c.y, c.r_y)):
            rho = _knob_loading(r, knob_values)
            knob[column] = (rho * z[None, :, None]
                            + np.sqrt(max(0.0, 1 - rho ** 2)) * rng.standard_normal((pages, knob_values, seeds)))
    return Pages(runs, knob, methods, seeds, knob_values, pages)


# ---------------------------------------------------------------- deciding simulated pages

def _control_test(values: np.ndarray, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Method a minus method b of values (pages, methods, seeds), blocked by seed: the balanced additive model's
    contrast and its two-sided t p on (methods - 1) (seeds - 1) df (`stats.blocked_differences`, balanced)."""
    m, s = values.shape[1:]
    difference = values[:, a].mean(-1) - values[:, b].mean(-1)
    residual = (values - values.mean(2, keepdims=True) - values.mean(1, keepdims=True)
                + values.mean((1, 2), keepdims=True))
    df = (m - 1) * (s - 1)
    se = np.sqrt((residual ** 2).sum((1, 2)) / df * 2 / s)
    return 2 * sps.t.sf(np.abs(difference / se), df), difference


def _centred_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks (untied) along axis 1, centred."""
    return a.argsort(1).argsort(1) - (a.shape[1] - 1) / 2


@functools.lru_cache(maxsize=64)
def _null(block: int, blocks: int, n_perm: int) -> tuple[np.ndarray, bool]:
    """The sorted |r| of a within-block rank correlation (`blocks` blocks of `block` untied runs) under every
    permutation within blocks when there are at most n_perm of them (exact), else under n_perm random ones."""
    c = np.arange(block) - (block - 1) / 2
    exact = stats.permutation_count((block,) * blocks) <= n_perm
    if exact:
        perms = np.array(list(itertools.product(list(itertools.permutations(range(block))), repeat=blocks)))
    else:
        perms = np.random.default_rng(0).permuted(np.broadcast_to(np.arange(block), (n_perm, blocks, block)), axis=-1)
    return np.sort(np.abs((c[perms] * c).sum((-1, -2)) / (blocks * (c @ c)))), exact


def _rank_test(x: np.ndarray, y: np.ndarray, n_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank correlation of x and y (pages, runs, blocks: ranks within each block, along axis 1) and its two-sided
    permutation p, as `stats.block_rank_correlation` computes them (ties have probability 0 here)."""
    ex, ey = _centred_ranks(x), _centred_ranks(y)
    r = np.clip((ex * ey).sum((1, 2)) / np.sqrt((ex * ex).sum((1, 2)) * (ey * ey).sum((1, 2))), -1, 1)
    null, exact = _null(x.shape[1], x.shape[2], n_perm)
    hits = len(null) - np.searchsorted(null, np.abs(r) - 1e-12, side="left")
    return (hits / len(null) if exact else (1 + hits) / (1 + len(null))), r


class Tests(NamedTuple):
    """Every primary test of every simulated page (pages, hypotheses): p, the effect's sign towards the claim and
    the effect as `confirmatory` states it on the tests' scale (a control's difference, logs for curvatures; a
    claim's r; the knob's r with the outcome, towards robustness); per hypothesis its smallest attainable p (NaN:
    the design cannot run it). A hypothesis the pilot did not estimate has p 1 and sign 0."""

    p: np.ndarray
    sign: np.ndarray
    effect: np.ndarray
    smallest: np.ndarray


def page_tests(components: pd.DataFrame, drawn: Pages, n_perm: int = confirmatory.N_PERM) -> Tests:
    """The primary tests of every simulated page, computed on all pages at once as `confirmatory` computes them."""
    n, pages = len(components), drawn.count
    p, sign, effect = np.ones((pages, n)), np.zeros((pages, n)), np.full((pages, n), np.nan)
    smallest = np.full(n, np.nan)
    known, methods, seeds = _known(components).to_numpy(), drawn.methods, drawn.seeds
    for j, c in enumerate(components.itertuples()):
        if c.kind == "control":
            if c.method not in methods or "adam" not in methods or seeds < 2:
                continue  # absent, or no residual degree of freedom
            smallest[j] = 0.0
            if known[j]:
                p[:, j], effect[:, j] = _control_test(drawn.runs[c.x], methods.index(c.method), methods.index("adam"))
                sign[:, j] = np.sign(effect[:, j]) * c.expected
        elif c.kind == "claim":
            runs = len(methods) * seeds
            if runs < confirmatory.MIN_RUNS:
                continue
            smallest[j] = stats.smallest_p((runs,), n_perm)
            if known[j]:
                x, y = (drawn.runs[k].reshape(pages, -1, 1) for k in (c.x, c.y))  # every run in one block
                p[:, j], effect[:, j] = _rank_test(x, y, n_perm)
                sign[:, j] = np.sign(effect[:, j]) * c.expected
        else:
            if drawn.knob_values < 3 or drawn.knob_values * seeds < confirmatory.MIN_RUNS:
                continue
            smallest[j] = stats.smallest_p((drawn.knob_values,) * seeds, n_perm)
            if known[j]:
                values = np.broadcast_to(np.arange(drawn.knob_values, dtype=float)[None, :, None],
                                         drawn.knob[c.x].shape)
                p_x, r_x = _rank_test(values, drawn.knob[c.x], n_perm)
                p_y, r_y = _rank_test(values, drawn.knob[c.y], n_perm)
                p[:, j], sign[:, j] = np.maximum(p_x, p_y), np.sign(r_x) * np.sign(r_y) * c.expected
                effect[:, j] = r_y * np.where(r_x == 0, 1.0, np.sign(r_x))
    return Tests(p, sign, effect, smallest)


def decide(tests: Tests, ids: Sequence[str], gates: Sequence[str], alpha: float = family.ALPHA
           ) -> tuple[np.ndarray, np.ndarray]:
    """Every page decided as `confirmatory.primary_table` decides a study (Tarone's members, Holm, then the gates):
    per page and hypothesis 1 (holds), -1 (does not hold) or 0 (cannot tell), and which hypotheses are in the
    family."""
    keep = confirmatory.members(pd.Series(tests.smallest), alpha).to_numpy()
    adjusted = np.ones_like(tests.p)
    if keep.any():
        adjusted[:, keep] = np.array([family.holm(row) for row in tests.p[:, keep]])
    said = np.where(keep & (adjusted < alpha), tests.sign, 0).astype(int)
    before, ids = said.copy(), list(ids)
    for j, gate in enumerate(gates):
        if gate in ids and keep[j]:
            said[:, j] = np.where(before[:, ids.index(gate)] == 1, said[:, j], 0)
    return said, keep


def binomial_interval(k: np.ndarray, n: int, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Clopper-Pearson interval of a share k / n."""
    k = np.asarray(k, float)
    tail = (1 - level) / 2
    with np.errstate(invalid="ignore"):
        low = np.where(k > 0, sps.beta.ppf(tail, k, n - k + 1), 0.0)
        high = np.where(k < n, sps.beta.ppf(1 - tail, k + 1, n - k), 1.0)
    return low, high


def simulate_power(components: pd.DataFrame, runs_per_method: Sequence[int], methods: Sequence[str],
                   knob_values: int, pages: int = PAGES, seed: int = 0, alpha: float = family.ALPHA,
                   n_perm: int = confirmatory.N_PERM) -> pd.DataFrame:
    """The power curves (`CURVES`): per hypothesis and pretraining runs per method (= seeds; the knob arm runs
    `knob_values` values at each seed), the share of simulated pages on which it holds, with its 95%
    Clopper-Pearson interval, whether it is in the family and the family's m. Power is NaN where the pilot did
    not estimate the hypothesis or its gate."""
    sizes = sorted(set(runs_per_method))
    drawn = simulate_pages(components, methods, max(sizes), knob_values, pages, np.random.default_rng(seed))
    known = _known(components)
    gate_unknown = components.gate.map(dict(zip(components.id, ~known))).eq(True)  # NaN: no gate among the ids
    unknown = (~known | gate_unknown).to_numpy()
    rows = []
    for s in sizes:
        said, keep = decide(page_tests(components, drawn.first(s), n_perm), components.id, components.gate, alpha)
        held = (said == 1).sum(0)
        low, high = binomial_interval(held, pages)
        for j, i in enumerate(components.id):
            nan = unknown[j]
            rows.append(dict(id=i, runs_per_method=s, power=np.nan if nan else held[j] / pages,
                             ci_low=np.nan if nan else low[j], ci_high=np.nan if nan else high[j],
                             in_family=bool(keep[j]), m=int(keep.sum()), pages=pages))
    return pd.DataFrame(rows, columns=CURVES)


def plan_table(curves: pd.DataFrame, runs_per_method: int, runs_per_seed: int, seconds_per_run: float,
               time_source: str) -> pd.DataFrame:
    """Per primary hypothesis (`PLAN`): its power at the design's `runs_per_method`, the smallest runs per method
    of the curves with 80% and 90% power (None beyond them, up to `most`) and the seconds of those designs:
    runs per method x `runs_per_seed` pretraining runs (methods and the knob's own values) x `seconds_per_run`."""
    def seconds(runs: int | None) -> float:
        return np.nan if runs is None else runs * runs_per_seed * seconds_per_run

    rows = []
    for i, part in curves.groupby("id", sort=False):
        now = part[part.runs_per_method == runs_per_method].iloc[0]
        r80, r90 = (part.runs_per_method[part.power >= level].min() for level in POWERS)
        r80, r90 = (None if pd.isna(r) else int(r) for r in (r80, r90))
        rows.append(dict(id=i, kind=HYPOTHESES[i].kind, claim=HYPOTHESES[i].claim, runs_per_method=runs_per_method,
                         power=now.power, ci_low=now.ci_low, ci_high=now.ci_high, in_family=now.in_family,
                         runs_80=r80, runs_90=r90, seconds=seconds(runs_per_method), seconds_80=seconds(r80),
                         seconds_90=seconds(r90), most=int(part.runs_per_method.max()),
                         seconds_per_run=seconds_per_run, time_source=time_source))
    table = pd.DataFrame(rows, columns=PLAN)
    for column in ("runs_80", "runs_90"):  # ints, None beyond the curves (a column of ints and NaN would be floats)
        table[column] = pd.Series([row[column] for row in rows], index=table.index, dtype=object)
    return table


# ---------------------------------------------------------------- a study's pilot and plan

def _studies(study: Study) -> list[Study]:
    """The study and its sweep points' studies, their tables checked stored (NoPilot names what is missing): the
    planner reads tables and never trains or measures."""
    studies = [study] + [knob_sweeps.point_study(study, p) for p in knob_sweeps.points(study)]
    missing = [f"{s.name}: {', '.join(m)}" for s in studies if (m := conclusions.missing_inputs(s))]
    if missing:
        raise NoPilot(f"the pilot study {study.name!r} has no stored tables to plan from in "
                      f"{study.output_dir / 'tables'} (missing {missing[0]}{' and more' if len(missing) > 1 else ''});"
                      f" `make study PRESET={study.preset}` makes them")
    return studies


def read_pilot(study: Study) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The pilot's run table and its knob arm's (`conclusions.joined_runs` of the study and of each sweep point),
    from its stored tables."""
    studies, points = _studies(study), knob_sweeps.points(study)
    knobs = pd.concat([conclusions.joined_runs(s).assign(knob=p.knob, knob_value=p.value)
                       for p, s in zip(points, studies[1:])], ignore_index=True) if points else None
    return conclusions.joined_runs(study), knobs


def runs_per_seed(study: Study) -> int:
    """Pretraining runs per seed: one per method, one per knob value that is not the method's own (that one shares
    the method's run)."""
    shared = sum(p.method in study.methods and p.value == getattr(study, p.knob) for p in knob_sweeps.points(study))
    return len(study.methods) + len(knob_sweeps.points(study)) - shared


def knob_values(study: Study) -> int:
    """How many values the first swept knob takes (0 without a sweep): the knob hypothesis reads it."""
    first = knob_sweeps.knobs(study)[:1]
    return len(study.sweeps[first[0][0]][first[0][1]]) if first else 0


def pilot_seconds(study: Study) -> tuple[float, str]:
    """Seconds per pretraining run of a stored study, and where they come from: the larger of the seconds its
    tables record per run (pretraining, its finetuning runs and its flatness replicates; robustness, landscape,
    curves and transferability are not recorded) and its executed notebooks' papermill durations over all its
    runs, the knob arm's included (everything, but short when a notebook ran again from stored tables)."""
    _studies(study)
    own = [tables.pretrained(study), tables.finetuned(study), tables.flatness(study)]
    recorded = sum(float(t.seconds.sum()) for t in own[:2])
    recorded += float(own[2].groupby(["run", "replicate"]).seconds.first().sum()) if "seconds" in own[2] else 0.0
    per_run = recorded / max(len(own[0]), 1)
    durations = [json.loads(nb.read_text()).get("metadata", {}).get("papermill", {}).get("duration")
                 for nb in sorted(study.output_dir.glob("[0-9][0-9]_*.ipynb"))]
    ran = sum(d for d in durations if d)
    per_notebook_run = ran / (runs_per_seed(study) * len(study.pretrain_seeds))
    if per_notebook_run > per_run:
        return per_notebook_run, (f"the pilot's {sum(1 for d in durations if d)} executed notebooks' durations, "
                                  f"{ran:.0f} s for its {runs_per_seed(study) * len(study.pretrain_seeds)} "
                                  "pretraining runs")
    return per_run, (f"what the pilot's tables record per run over its {len(own[0])} runs: pretraining, finetuning and "
                     "flatness, not robustness, landscape or curves")


def power_curves(study: Study, pilot: Study | None = None, pages: int = PAGES, seed: int = 0,
                 alpha: float = family.ALPHA) -> pd.DataFrame:
    """The study's primary hypotheses' power curves (`simulate_power` over `GRID` and the study's own size) from the
    pilot's stored tables (the study's own by default): hypothesis x runs per method x power."""
    runs, knobs = read_pilot(pilot or study)
    components = pilot_components(runs, knobs, study.primary)
    sizes = sorted(set(GRID) | {len(study.pretrain_seeds)})
    return simulate_power(components, sizes, study.methods, knob_values(study), pages, seed, alpha)


def study_plan(study: Study, pilot: Study | None = None, pages: int = PAGES, seed: int = 0,
               alpha: float = family.ALPHA) -> pd.DataFrame:
    """The planner's table (`plan_table`) of the study's design from the pilot (the study itself by default); times
    from the pilot's seconds per run (`pilot_seconds`), linear in runs."""
    pilot = pilot or study
    seconds, source = pilot_seconds(pilot)
    curves = power_curves(study, pilot, pages, seed, alpha)
    return plan_table(curves, len(study.pretrain_seeds), runs_per_seed(study), seconds, source)
