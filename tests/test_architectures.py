"""The architecture comparison: its studies, and its rank tests pooled with the architecture as a block,
calibrated under the null of our own simulation."""
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from minima import architectures, conclusions, family, prose, stats
from minima.config import ConfigError, Study

METHODS = ("adam", "noisy_adam", "swa", "sam", "adversarial", "entropy_sgd")


def _null_runs(rng: np.random.Generator, seeds: int = 3, shift: float = 3.0) -> pd.DataFrame:
    """Two architectures x six methods x `seeds` runs, every property and outcome independent of every other
    within an architecture, but the second architecture higher on all of them by `shift` sd: the between-arch
    difference alone links them when pooled without blocks."""
    rows = []
    for arch, offset in (("resnet18_small", 0.0), ("efficientnet_b0_small", shift)):
        for method in METHODS:
            for seed in range(seeds):
                rows.append(dict(arch=arch, method=method, pretrain_seed=seed,
                                 **{c: rng.normal() + offset for c in (*architectures.PROPERTIES, *conclusions.OUTCOMES)}))
    return pd.DataFrame(rows)


def test_each_architecture_is_the_same_study_with_only_arch_and_name_changed():
    study = Study.load("tiny", compare_archs=["convnext_tiny_small"])
    main, other = architectures.studies(study)
    assert main is study and other.arch == "convnext_tiny_small" and other.compare_archs == []
    assert other.name == f"{study.name}-convnext_tiny_small"
    changed = {k for k, v in other.as_dict().items() if study.as_dict()[k] != v}
    assert changed == {"arch", "compare_archs", "name"}


@pytest.mark.parametrize("overrides, says", [
    (dict(compare_archs=["resnet18_small"]), "repeats arch"),
    (dict(compare_archs=["no_such_net"]), "is not known"),
    (dict(arch="convnext_tiny"), "cannot take 16 px images"),
    (dict(arch="efficientnet_b0_small", protocols=["partial"]), "which arch='efficientnet_b0_small' lacks"),
])
def test_a_bad_architecture_is_refused_at_once(overrides, says):
    with pytest.raises(ConfigError, match=says):
        Study.load("tiny", **overrides)


def test_the_block_removes_a_link_made_by_the_architectures_alone():
    runs = _null_runs(np.random.default_rng(0), shift=5.0)
    naive = architectures.tests(runs.assign(arch="one"), blocked=False)
    blocked = architectures.tests(runs, blocked=True)
    link = (naive.kind == "link")
    assert (naive[link].p_value == 1 / 2001).all()  # shifted together, all "correlate" pooled naively: no permutation as extreme
    assert (blocked[link].p_value > 1e-3).mean() > 0.9


def test_under_the_null_a_pooled_verdict_says_holds_about_as_often_as_it_claims_alone_and_as_a_family():
    # 300 null pages of 50 tests: one test's rate of p < 0.05 within 3 binomial sd of 0.05 (+- 0.038), and
    # the family's rate of any verdict other than "cannot tell" at most 5% plus 2.5 sd
    rng = np.random.default_rng(1)
    alone, any_said = [], []
    for _ in range(300):
        pooled = family.adjust(architectures.tests(_null_runs(rng), blocked=True))
        alone.append(pooled.p_value.iloc[0] < 0.05)
        any_said.append((~pooled.verdict.str.startswith("cannot tell")).any())
    assert abs(np.mean(alone) - 0.05) < 3 * np.sqrt(0.05 * 0.95 / 300)
    assert np.mean(any_said) <= 0.05 + 2.5 * np.sqrt(0.05 * 0.95 / 300)


def test_the_blocked_rank_correlation_ranks_within_blocks_and_permutes_within_them():
    rng = np.random.default_rng(3)
    x, y, blocks = rng.normal(size=24), rng.normal(size=24), np.repeat(["a", "b", "c"], 8)
    shifted = y + np.where(blocks == "a", 10.0, 0.0)  # a block shift: ranks within blocks do not see it
    assert stats.block_rank_correlation(x, shifted, blocks) == stats.block_rank_correlation(x, y, blocks)
    alone = stats.block_rank_correlation(x, y)
    assert alone["r"] == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)  # one block: Spearman
    # exact within-block null of a binary x, three of six runs in each of two blocks, all above: 2 of 400
    # arrangements are as extreme, p = 0.005 (a t test of the same r says 0.0004); 2000 permutations give it
    # to about +- 0.003 (two binomial sd)
    x2, y2 = np.tile([0, 0, 0, 1, 1, 1], 2), np.tile(np.arange(6.0), 2)
    p = stats.block_rank_correlation(x2, y2, np.repeat(["r", "e"], 6))["p_value"]
    assert abs(p - 0.005) < 0.003


def test_agreement_says_which_verdicts_both_architectures_share():
    table = pd.DataFrame(dict(kind="link", claim=["a", "a", "a", "b", "b", "b"],
                              arch=["r", "e", architectures.POOLED] * 2,
                              verdict=["holds", "holds", "holds", "holds", "cannot tell (x)", "holds"],
                              r=[0.5, 0.4, 0.45, 0.6, np.nan, 0.5]))
    wide = architectures.agreement(table)
    assert list(wide.columns) == ["kind", "claim", "r", "e", architectures.POOLED, "r r", "r e", "agree", "same_sign"]
    assert wide.agree.tolist() == [True, False] and wide.same_sign.tolist() == [True, False]
    lines = prose.arch_sentences(wide, architectures.POOLED)
    assert lines[0].startswith("Across r, e: 1 of 2 main tests reach the same decision")
    assert lines[0].endswith("in 1 of the 1 tests that each of them can compute.")
    assert lines[2] == "On e: a: **holds** (rank correlation +0.50 on r, +0.40 on e)."


def test_two_cannot_tells_for_different_reasons_are_the_same_decision():
    table = pd.DataFrame(dict(kind="link", claim="a", arch=["r", "e", architectures.POOLED],
                              verdict=["cannot tell (too few pretraining runs)",
                                       "cannot tell (significant alone, not within the family of 50)", "holds"],
                              r=[np.nan, 0.7, 0.6]))
    assert architectures.agreement(table).agree.tolist() == [True]

