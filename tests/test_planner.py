"""The planner: simulated pages decided as confirmatory.primary_table decides a study, components a pilot gives
back, and `python -m minima plan` on a stored pilot."""
import io
import json
import time
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pandas as pd
import pytest

from minima import (confirmatory, conclusions, knob_sweeps, landscape, planner, sharpness, store, tables,
                    transfer_scores)
from minima.__main__ import main
from minima.config import Study
from minima.hypotheses import HYPOTHESES

IDS = list(HYPOTHESES)  # the default's primary family: 4 controls, 3 claims, the knob
METHODS = ("adam", "noisy_adam", "swa", "sam", "adversarial", "entropy_sgd")
CODE = {"holds": 1, "does not hold": -1, "cannot tell": 0}
# (effect, seed variance, residual variance) per control, r per claim, (r_x, r_y) of the knob: each test decided
# on between a fifth and nine tenths of the pages at 3-4 seeds, so that the decisions vary
CONTROLS = dict(sam_flatter=(-1.0, 0.3, 0.2), swa_lower_trace=(-0.8, 0.1, 0.2), adversarial_pgd=(0.8, 0.2, 0.3),
                noisy_gaussian=(0.5, 0.2, 0.1))
CLAIMS = dict(robust_travels_less=-0.6, robust_finetunes_better=0.6, flat_finetunes_better=-0.5)
KNOB = (0.8, 0.6)


def components(controls=CONTROLS, claims=CLAIMS, knob=KNOB) -> pd.DataFrame:
    """A components table (`planner.pilot_components`'s columns) of the default's primary family with these values."""
    rows = []
    for i in IDS:
        h = HYPOTHESES[i]
        row = dict(id=i, kind=h.kind, x=h.x, y=h.y, method=h.method, expected=h.expected, gate=h.gate,
                   log=h.kind == "control" and h.x in confirmatory.RATIO)
        if h.kind == "control":
            row |= dict(zip(["effect", "seed_variance", "residual_variance"], controls[i]))
        elif h.kind == "claim":
            row |= dict(r=claims[i])
        else:
            row |= dict(r_x=knob[0], r_y=knob[1])
        rows.append(row)
    return pd.DataFrame(rows, columns=planner.COMPONENTS)


def page_tables(drawn: planner.Pages, page: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One simulated page as a study's run table and knob table (curvatures back from their logs)."""
    m, s, v = len(drawn.methods), drawn.seeds, drawn.knob_values
    runs = pd.DataFrame(dict(method=np.repeat(drawn.methods, s), pretrain_seed=np.tile(np.arange(s), m)))
    for column, values in drawn.runs.items():
        runs[column] = np.exp(values[page].ravel()) if column in confirmatory.RATIO else values[page].ravel()
    knobs = pd.DataFrame(dict(method="noisy_adam", knob="noise_sigma", knob_value=np.repeat(np.linspace(0, 0.12, v), s),
                              pretrain_seed=np.tile(np.arange(s), v)))
    for column, values in drawn.knob.items():
        knobs[column] = values[page].ravel()
    return runs, knobs


@pytest.mark.parametrize("seeds", [3, 4])
def test_simulated_pages_are_tested_and_decided_as_primary_table_does(seeds):
    """On 100 pages per design: fed primary_table's own p-values, signs and floors, `decide` gives its decisions on
    every page; its exact tests (the t tests, the knob's enumerated permutations) give its p, every effect is its
    effect, and its Monte Carlo p (the claims over 18 or 24 runs) lie within their Monte Carlo error of
    primary_table's. So the two decide alike in distribution; page by page they differ only where a claim's Monte
    Carlo p straddles a Holm bar (measured at n_perm = 20000 on 150 pages: 1% of the decisions, on 5-7% of the
    pages; the shares that hold agree within 0.04). At 3 seeds the knob cannot reach alpha / 8 (out of the
    family), at 4 it can. n_perm = 2000 in both: it only sets the Monte Carlo resolution, and its floor 1/2001
    keeps every claim in the family (about 0.2 s a page, nearly all of it primary_table's four blocked contrasts)."""
    n_perm, pages, comps = 2000, 100, components()
    drawn = planner.simulate_pages(comps, METHODS, seeds, 3, pages, np.random.default_rng(seeds))
    fast = planner.page_tests(comps, drawn, n_perm)
    said, keep = planner.decide(fast, comps.id, comps.gate)
    theirs = [confirmatory.primary_table(*page_tables(drawn, i), IDS, n_perm=n_perm) for i in range(pages)]
    decided = np.array([t.decision.map(CODE).to_numpy() for t in theirs])
    p_value, sign, effect = (np.array([t[c].to_numpy(float) for t in theirs]) for c in ("p_value", "sign", "effect"))
    given = planner.Tests(p_value, sign, effect, theirs[0].smallest_p.to_numpy(float))
    assert (planner.decide(given, comps.id, comps.gate)[0] == decided).all()
    assert (keep == theirs[0].in_family.to_numpy()).all() and keep[IDS.index("knob_causes")] == (seeds == 4)
    np.testing.assert_array_equal(fast.smallest, given.smallest)
    np.testing.assert_array_equal(fast.sign, given.sign)
    claim = (comps.kind == "claim").to_numpy()
    np.testing.assert_allclose(fast.p[:, ~claim], given.p[:, ~claim], rtol=1e-9, atol=1e-12)
    log = comps.log.to_numpy()
    np.testing.assert_allclose(fast.effect[:, log], np.log(given.effect[:, log]), atol=1e-10)  # its ratios, on logs
    np.testing.assert_allclose(fast.effect[:, ~log], given.effect[:, ~log], atol=1e-12)
    p = given.p[:, claim]
    assert (np.abs(fast.p[:, claim] - p) <= 5 * np.sqrt(2 * p * (1 - p) / n_perm) + 2 / n_perm).all()
    assert 0.15 < (decided == 1).mean() < 0.85 and 0.15 < (said == 1).mean() < 0.85


def test_a_large_pilot_gives_back_the_components_it_was_drawn_from():
    """One page of 6 methods x 200 seeds and its knob arm at 3 values x 200 seeds: the two-way model's effect and
    variances, each claim's Spearman r (an outcome two claims share, a property a control measures) and the knob's
    within-seed rank correlations come back within their sampling error."""
    truth = components(knob=(0.8, 0.4))
    drawn = planner.simulate_pages(truth, METHODS, 200, 3, 1, np.random.default_rng(3))
    back = planner.pilot_components(*page_tables(drawn, 0), IDS).set_index("id")
    truth = truth.set_index("id")
    for i in CONTROLS:
        assert back.effect[i] == pytest.approx(truth.effect[i], abs=0.15)
        assert back.residual_variance[i] == pytest.approx(truth.residual_variance[i], rel=0.15)
        assert back.seed_variance[i] == pytest.approx(truth.seed_variance[i], abs=0.12)
    for i in CLAIMS:
        assert back.r[i] == pytest.approx(truth.r[i], abs=0.1)
    assert back.r_x["knob_causes"] == pytest.approx(0.8, abs=0.1)
    assert back.r_y["knob_causes"] == pytest.approx(0.4, abs=0.13)
    assert back.n["sam_flatter"] == 1200 and back.n["knob_causes"] == 600


def test_power_grows_with_runs_and_a_hypothesis_the_pilot_cannot_estimate_has_none():
    """The curves rise with the runs per method for every test that can hold; a control the pilot could not
    estimate (one seed) has no power and, counting in m at p = 1, neither has the claim it gates."""
    comps = components()
    comps.loc[comps.id == "sam_flatter", ["seed_variance", "residual_variance"]] = np.nan
    curves = planner.simulate_power(comps, [2, 4, 8, 16], METHODS, 3, pages=300)
    power = curves.pivot(index="runs_per_method", columns="id", values="power")
    assert power[["sam_flatter", "flat_finetunes_better"]].isna().all().all()
    rising = power.drop(columns=["sam_flatter", "flat_finetunes_better"])
    assert (rising.diff().dropna() >= -0.03).all().all() and (rising.loc[16] > 0.9).all()
    assert set(curves[curves.runs_per_method == 2].m) == {7} and set(curves[curves.runs_per_method == 4].m) == {8}
    table = planner.plan_table(curves, 4, 8, 10.0, "test")
    row = table.set_index("id").loc["swa_lower_trace"]
    assert row.runs_80 == rising.swa_lower_trace[rising.swa_lower_trace >= 0.8].index.min()
    assert row.seconds == 4 * 8 * 10.0 and row.seconds_80 == row.runs_80 * 80.0
    assert table.set_index("id").runs_80.loc["sam_flatter"] is None


# ---------------------------------------------------------------- `python -m minima plan` on a stored pilot

KEYS = dict(pretraining=tables.pretraining_keys,
            robustness_summary=lambda s: tables.pretraining_keys(s) + tables.ROBUSTNESS_KEYS,
            flatness=lambda s: tables.pretraining_keys(s) + tables.FLATNESS_KEYS,
            transferability=lambda s: tables.pretraining_keys(s) + tables.TRANSFERABILITY_KEYS,
            landscape_barriers=lambda s: tables.pretraining_keys(s) + tables.SLICE_KEYS,
            landscape_distances=tables.pretraining_keys,
            finetuning=lambda s: tables.finetuning_keys(s) + tables.FORGETTING_KEYS)  # conclusions.missing_inputs'


def _store(study: Study, name: str, table: pd.DataFrame) -> None:
    store.write_table(tables.path(study, name), table)
    store.write_text(tables.path(study, name).with_suffix(".key"), study.fingerprint(*KEYS[name](study)))


def store_pilot(study: Study, rng: np.random.Generator, sam: float = -1.2, noise: float = 0.0) -> None:
    """Stored tables of a measured study (what conclusions.joined_runs reads), without training anything: SAM's
    top eigenvalue exp(sam) times Adam's, seed effects shared by every method of a seed, 12 s a run recorded."""
    runs = pd.DataFrame([dict(run=f"{m}-{s}", method=m, pretrain_seed=s)
                         for m in study.methods for s in study.pretrain_seeds])
    seed = rng.normal(0, 0.5, len(study.pretrain_seeds))[runs.pretrain_seed.map(study.pretrain_seeds.index)]
    log_top = 5 + seed + np.where(runs.method == "sam", sam, 0.0) + rng.normal(0, 0.4, len(runs))
    robust = noise + rng.normal(0.5, 0.1, len(runs))
    accuracy = 0.8 + 0.05 * robust - 0.01 * log_top + rng.normal(0, 0.01, len(runs))
    _store(study, "pretraining", runs.assign(test_accuracy=0.9, test_loss=0.3, train_loss=0.1, seconds=8.0))
    _store(study, "robustness_summary", pd.concat(
        [runs.assign(split="test", measure=m, auc=robust + rng.normal(0, 0.02, len(runs))) for m in
         conclusions.ROBUSTNESS_MEASURES]))
    measures = {"hessian_eigenvalue": (1, np.exp(log_top)), "hessian_trace": (0, np.exp(log_top + 2)),
                "adaptive_average": (0, robust), "adaptive_worst": (0, robust)}
    _store(study, "flatness", pd.concat([runs.assign(replicate=k, measure=m, rank=r, value=v, std_error=0.0,
                                                     invariant=False, seconds=1.0)
                                         for k in range(2) for m, (r, v) in measures.items()])[sharpness.COLUMNS])
    _store(study, "transferability", runs.assign(**dict.fromkeys(transfer_scores.SCORES, 0.0)))
    pairs = runs.merge(runs, how="cross", suffixes=("_a", "_b"))
    _store(study, "landscape_barriers", pairs.assign(bn_mode=landscape.judging_mode(study.bn_modes), split="test",
                                                     barrier=0.1))
    _store(study, "landscape_distances", pairs.assign(group="non_bn", distance=1.0))
    _store(study, "finetuning", pd.concat([runs.assign(
        protocol=study.protocols[0], finetune_seed=f, test_accuracy=accuracy, epochs=5, epochs_to_threshold=3.0,
        distance_all=2 - robust + rng.normal(0, 0.05, len(runs)), forgetting_head=0.1, forgetting_probe=0.1,
        seconds=1.0) for f in study.finetune_seeds]))


def _plan(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["plan", *argv])
    return code, out.getvalue(), err.getvalue()


def test_the_plan_command_prints_the_planners_table_from_a_stored_pilot(tmp_path, monkeypatch):
    """The default's design (18 runs, the knob at 3 values x 3 seeds, 8 primary hypotheses) from its stored
    tables: one row per hypothesis, the runs for 80% and 90%, the times from the recorded 12 s a run (the
    pilot's notebooks, recorded as 10 s over 24 runs, are less), in under a minute."""
    monkeypatch.setenv("MINIMA_OUTPUTS", str(tmp_path))
    study, rng = Study.load("default"), np.random.default_rng(0)
    store_pilot(study, rng)
    for point in knob_sweeps.points(study):
        store_pilot(knob_sweeps.point_study(study, point), rng, noise=10 * point.value)
    notebook = dict(cells=[], metadata=dict(papermill=dict(duration=10.0)), nbformat=4, nbformat_minor=5)
    store.write_text(study.output_dir / "01_data.ipynb", json.dumps(notebook))
    start = time.perf_counter()
    code, out, err = _plan("--preset", "default")
    assert code == 0, err
    assert time.perf_counter() - start < 60
    assert all(i in out for i in IDS) and "runs_80" in out
    assert "12 s per pretraining run" in out and "tables record" in out
    plan = planner.study_plan(study, pages=200)
    assert list(plan.id) == IDS and (plan.runs_per_method == 3).all() and not plan.in_family[IDS.index("knob_causes")]
    sam = plan.set_index("id").loc["sam_flatter"]
    assert sam.power > 0.2 and sam.runs_80 is not None and sam.seconds_80 == sam.runs_80 * 8 * 12.0


def test_the_plan_command_without_a_stored_pilot_says_where_it_looked_and_what_makes_one(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMA_OUTPUTS", str(tmp_path))
    code, out, err = _plan("--preset", "default")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert str(tmp_path / "default" / "tables") in err and "make study" in err
    code, _, err = _plan("--preset", "default", "--pilot", "elsewhere")
    assert code == 2 and str(tmp_path / "elsewhere") in err and "make study" in err
