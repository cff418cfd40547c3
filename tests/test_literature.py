import numpy as np
import pandas as pd

from minima import literature, prose, stats


def _runs(sharp: dict[str, float], loss: dict[str, float], seeds: int = 3, slope: float = 0.0,
          noise: float = 0.05) -> pd.DataFrame:
    """Runs whose log hessian_top is log(sharp[method]) + slope * log(train loss) + noise, the train loss
    spread around loss[method]; the other columns a method comparison reads."""
    rng = np.random.default_rng(0)
    rows = []
    for method in sharp:
        for seed in range(seeds):
            train_loss = loss[method] * np.exp(0.5 * rng.standard_normal())
            top = sharp[method] * train_loss ** slope * np.exp(noise * rng.standard_normal())
            rows.append(dict(run=f"{method}-{seed}", method=method, pretrain_seed=seed, hessian_top=top,
                             hessian_trace=10 * top, pretrain_train_loss=train_loss,
                             pgd_auc=0.5 + 0.01 * rng.standard_normal(), pretrain_test_accuracy=0.8))
    return pd.DataFrame(rows)


def _sam(table: pd.DataFrame) -> pd.Series:
    return literature.check(table).set_index(["method", "property"]).loc[("sam", "hessian_top")]


def test_a_sharpness_clearly_lower_than_adams_holds_as_a_ratio_below_one():
    sam = _sam(_runs(dict(adam=10.0, sam=2.0, swa=8.0), dict(adam=0.1, sam=0.1, swa=0.1)))
    assert sam.verdict == "holds" and sam.scale == "ratio"
    assert sam.effect < 1 and sam.ci_high < 1 and sam.runs == 3 and sam.df == 6
    assert np.isclose(sam.effect, sam.value / sam.adam)  # the ratio of geometric means


def test_a_sharper_sam_does_not_hold_and_is_named_as_missing_its_signature():
    table = literature.check(_runs(dict(adam=2.0, sam=10.0), dict(adam=0.1, sam=0.1)))
    assert table.set_index("method").loc["sam"].verdict == "does not hold"
    missed = prose.missed(table)
    assert len(missed) == 1 and missed[0].startswith("sam ") and prose.MISSED in missed[0]
    assert prose.lines(table)[-1] == missed[0]


def test_one_run_per_method_cannot_tell_and_still_writes_its_lines():
    table = literature.check(_runs(dict(adam=10.0, sam=2.0), dict(adam=0.1, sam=0.1), seeds=1))
    assert (table.verdict == stats.TOO_FEW).all() and (table.verdict_at_equal_loss == stats.TOO_FEW).all()
    assert all("no interval" in line for line in prose.lines(table)[:-1])


def test_signatures_need_their_method_the_baseline_and_the_property():
    table = literature.check(_runs(dict(adam=10.0, sam=2.0), dict(adam=0.1, sam=0.1)).drop(columns="pgd_auc"))
    assert list(table.property) == ["hessian_top"]  # no swa, no adversarial in this study
    assert literature.check(_runs(dict(sgd=1.0, sam=2.0), dict(sgd=0.1, sam=0.1))).empty


def test_a_sharpness_that_only_tracks_the_train_loss_cannot_tell_at_equal_loss():
    # curvature exactly proportional to the loss, sam trained 20x lower: flatter only because of the loss
    sam = _sam(_runs(dict(adam=100.0, sam=100.0, swa=100.0), dict(adam=0.1, sam=0.005, swa=0.1), seeds=4,
                     slope=1.0))
    assert sam.verdict == "holds" and sam.effect < 0.2
    assert sam.verdict_at_equal_loss == literature.SPANS_ONE
    assert sam.ci_low_at_equal_loss < 1 < sam.ci_high_at_equal_loss


def test_a_sharpness_lower_at_equal_loss_holds_there():
    sam = _sam(_runs(dict(adam=100.0, sam=20.0, swa=100.0), dict(adam=0.1, sam=0.05, swa=0.1), seeds=4, slope=1.0))
    assert sam.verdict_at_equal_loss == "holds"
    assert np.isclose(sam.ratio_at_equal_loss, 0.2, rtol=0.2) and sam.ci_high_at_equal_loss < 1
    assert sam.df_at_equal_loss == 12 - 3 - 1  # runs - methods - the loss slope


def test_the_equal_loss_comparison_says_so_when_loss_cannot_be_told_apart_from_the_method():
    table = _runs(dict(adam=10.0, sam=2.0), dict(adam=0.1, sam=0.1))
    table["pretrain_train_loss"] = table.method.map(dict(adam=0.1, sam=0.01))
    assert literature.at_equal_loss(table, "hessian_top", "sam")["verdict"] == literature.CONFOUNDED


def test_differences_stay_differences_and_are_judged_on_their_expected_side():
    table = _runs(dict(adam=1.0, adversarial=1.0), dict(adam=0.1, adversarial=0.1))
    table.loc[table.method == "adversarial", "pgd_auc"] += 0.3
    table.loc[table.method == "adversarial", "pretrain_test_accuracy"] -= [0.1, 0.12, 0.11]
    rows = literature.check(table).set_index("property")
    assert rows.loc["pgd_auc"].scale == "difference" and np.isclose(rows.loc["pgd_auc"].effect, 0.3, atol=0.03)
    assert rows.loc["pgd_auc"].verdict == "holds" and rows.loc["pretrain_test_accuracy"].verdict == "holds"
    assert rows.loc["pgd_auc"].verdict_at_equal_loss == ""  # equal loss is asked of curvatures only


def test_loss_sentences_say_how_curvature_moves_with_the_train_loss():
    table = _runs(dict(adam=100.0, sam=100.0, swa=100.0), dict(adam=0.1, sam=0.005, swa=0.1), seeds=4, slope=1.0)
    assert prose.loss_sentences(table)[0].startswith("Over 12 pretraining runs the top Hessian eigenvalue "
                                                          "rises as the train loss rises")
