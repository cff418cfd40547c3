import numpy as np
import pandas as pd
import pytest

from minima import conclusions, prose, stats


def _finetuning(gap, pretrain_seeds=2):
    rng = np.random.default_rng(0)
    rows = []
    for method, shift in (("adam", 0.0), ("swa", gap), ("noisy_adam", gap / 2), ("scratch", -0.2)):
        for p in range(pretrain_seeds) if method != "scratch" else [-1]:
            for f in range(3):
                rows.append(dict(method=method, pretrain_seed=p, finetune_seed=f, protocol="full", epochs=5,
                                 test_accuracy=0.7 + shift + 0.005 * rng.standard_normal(),
                                 epochs_to_threshold=3.0 + p, distance_all=5.0 - 10 * shift - 0.01 * p,
                                 forgetting_head=0.1 - shift + 0.005 * rng.standard_normal(),
                                 forgetting_probe=0.02 + 0.005 * rng.standard_normal()))
    return pd.DataFrame(rows)


def _properties(pretrain_seeds=2):
    rows = []
    for method, rob in (("adam", 0.5), ("swa", 0.8), ("noisy_adam", 0.6)):
        for seed in range(pretrain_seeds):
            rows.append(dict(run=f"{method}-{seed}", method=method, pretrain_seed=seed, robustness=rob + 0.01 * seed,
                             pretrain_test_accuracy=0.4 + 0.01 * ((seed * 7 + len(method)) % 5)))
    return pd.DataFrame(rows)


def _verdicts(ft, pretrain_seeds=2):
    return conclusions.claims(_properties(pretrain_seeds), conclusions.run_outcomes(ft, "full"), ft,
                              "full").set_index("claim").verdict


def test_claims_hold_when_the_data_say_so():
    verdicts = _verdicts(_finetuning(gap=0.05, pretrain_seeds=6), pretrain_seeds=6)
    assert verdicts["the most robust checkpoint travels least in weight space"] == "holds"
    assert verdicts["swa finetunes to a higher test accuracy than adam"] == "holds"
    assert verdicts["the link between robustness and finetuned accuracy is weak or noisy"] == "does not hold"
    assert verdicts["the spread in finetuned accuracy comes from seeds rather than methods"] == "does not hold"


def test_a_strong_link_over_six_runs_is_not_yet_shown_to_be_strong():
    """Spearman 0.89 over 6 runs has the Fisher interval [0.07, 0.99]: it could still be weak."""
    verdicts = _verdicts(_finetuning(gap=0.05))
    assert verdicts["the link between robustness and finetuned accuracy is weak or noisy"] == (
        "cannot tell (interval spans weak and strong)")


def test_claims_fail_when_methods_do_not_differ():
    verdicts = _verdicts(_finetuning(gap=-0.05))
    assert verdicts["swa finetunes to a higher test accuracy than adam"] == "does not hold"


def test_every_verdict_says_cannot_tell_with_one_pretraining_run_per_method():
    ft = _finetuning(gap=0.05, pretrain_seeds=1).assign(epochs_to_threshold=np.nan)  # no run reached it
    verdicts = _verdicts(ft, pretrain_seeds=1)
    assert (verdicts == stats.TOO_FEW).all(), verdicts
    assert conclusions.method_comparisons(ft, "full").ci_low.isna().all()
    components = conclusions.variance_table(ft, "full")
    assert components[components.level != "finetune_seed"].ci_low.isna().all()  # seeds within a run still vary
    sentences = prose.power_sentences(ft, "full")
    assert len(sentences) == len(conclusions.OUTCOMES) and all("no test" in s for s in sentences)


def test_verdicts_are_three_words_and_a_reason():
    for gap in (0.05, 0.0, -0.05):
        for verdict in _verdicts(_finetuning(gap)):
            assert verdict in ("holds", "does not hold") or verdict.startswith("cannot tell (")


def test_the_claims_table_holds_numbers_and_prose_words_them():
    ft = _finetuning(gap=0.05, pretrain_seeds=6)
    table = conclusions.claims(_properties(6), conclusions.run_outcomes(ft, "full"), ft, "full")
    assert "evidence" not in table and list(table.columns) == conclusions.CLAIM_COLUMNS
    assert table.form.tolist() == ["rank test", "method comparison", "method comparison", "rank interval",
                                   "variance components"]
    assert table.set_index("form").difference.notna().to_dict() == {
        "rank test": False, "method comparison": True, "rank interval": False, "variance components": False}
    row = pd.Series(dict(form="rank interval", level=0.95, property="robustness", outcome="test_accuracy", n=18,
                         r=0.88, ci_low=0.65, ci_high=0.96, p=0.0004, tau=0.67, tau_p=0.0004, partial_r=0.88,
                         partial_p=0.0004))
    assert prose.claim_evidence(row) == (
        "robustness vs finetuned accuracy: Spearman = 0.88 [0.65, 0.96] (95.00% Fisher-z interval), permutation "
        "p < 0.001, Kendall tau = 0.67 (p < 0.001), n = 18 pretraining runs; controlling for pretraining test "
        "accuracy, partial Spearman = 0.88 (p < 0.001); weak means |Spearman| < 0.5, decided on the 95.00% interval")
    worded = prose.with_evidence(table, prose.claim_evidence)
    assert prose.verdict_list(worded.iloc[:1]) == (f"- {worded.claim[0]}: **{worded.verdict[0]}**. "
                                                   f"{worded.evidence[0]}")
    assert worded.evidence[0].startswith("most robust run: swa-5 (0.850, distance ")

def test_method_comparisons_use_run_means_blocked_by_seed_and_their_degrees_of_freedom():
    comparisons = conclusions.method_comparisons(_finetuning(gap=0.05, pretrain_seeds=3), "full")
    row = comparisons[(comparisons.outcome == "test_accuracy") & (comparisons.method == "swa")].iloc[0]
    # 9 runs, 3 methods, 3 seeds: df = 9 - 3 - 3 + 1 (the seeds' two degrees of freedom go to their blocks)
    assert row.df == 4 and row.runs_a == 3 and row.difference == pytest.approx(0.05, abs=0.01)
    assert 0 <= row.block_share <= 1 and row.efficiency > 0
    assert set(comparisons.outcome) == set(conclusions.OUTCOMES)


def test_variance_table_and_power_sentences_cover_every_outcome():
    ft = _finetuning(gap=0.05, pretrain_seeds=3)
    table = conclusions.variance_table(ft, "full")
    assert set(table.outcome) == set(conclusions.OUTCOMES) and (table.variance.dropna() >= 0).all()
    sentences = prose.power_sentences(ft, "full")
    assert all("80% power" in s for s in sentences[:1])


def test_scoreboard_marks_the_best_method_and_gives_intervals_only_over_three_runs():
    ft = _finetuning(gap=0.05, pretrain_seeds=3)
    higher = dict(robustness=True, test_accuracy=True, distance_all=False)
    board = conclusions.scoreboard(_properties(3), ft, "full", higher)
    best = board[board.best].set_index("metric").method
    assert best["robustness"] == "swa" and best["test_accuracy"] == "swa" and best["distance_all"] == "swa"
    pretrained = board[board.method != "scratch"]
    assert (pretrained.n == 3).all() and (pretrained.ci_low <= pretrained["mean"]).all()
    assert (pretrained["mean"] <= pretrained.ci_high).all()
    assert prose.scoreboard_text(board).loc["test_accuracy", "swa"].endswith("*")
    two = conclusions.scoreboard(_properties(), _finetuning(gap=0.05), "full", higher)
    assert two[two.method != "scratch"].ci_low.isna().all()
    assert "no interval" in prose.scoreboard_text(two).loc["test_accuracy", "adam"]


def test_the_robustness_composite_leaves_out_what_any_method_of_the_study_trains_on():
    six = ["adam", "noisy_adam", "swa", "sam", "adversarial", "entropy_sgd"]
    assert conclusions.composite_measures(six) == ("masking",)
    assert conclusions.composite_measures(["adam", "swa"]) == ("gaussian", "masking", "fgsm", "pgd", "energy")
    assert conclusions.composite_measures(["adam", "adversarial"]) == ("gaussian", "masking", "energy")
    assert "adversarial trains on fgsm, pgd" in prose.composite_sentence(six)
