import numpy as np
import pandas as pd

from minima import conclusions


def _finetuning(gap):
    rng = np.random.default_rng(0)
    rows = []
    for method, shift in (("adam", 0.0), ("swa", gap), ("noisy_adam", gap / 2), ("scratch", -0.2)):
        for p in range(2):
            for f in range(3):
                rows.append(dict(method=method, pretrain_seed=p, finetune_seed=f, protocol="full",
                                 test_acc=0.7 + shift + 0.005 * rng.standard_normal(),
                                 epochs_to_threshold=3.0, distance_all=5.0 - 10 * shift - 0.01 * p))
    return pd.DataFrame(rows)


def _properties():
    rows = []
    for method, rob in (("adam", 0.5), ("swa", 0.8), ("noisy_adam", 0.6)):
        for seed in range(2):
            rows.append(dict(run=f"{method}-{seed}", method=method, seed=seed, robustness=rob + 0.01 * seed,
                             pretrain_test_acc=0.4))
    return pd.DataFrame(rows)


def test_claims_hold_when_the_data_say_so():
    ft = _finetuning(gap=0.05)
    outcomes = conclusions.run_outcomes(ft, "full")
    verdicts = conclusions.claims(_properties(), outcomes, ft, "full").set_index("claim").verdict
    assert verdicts["the most robust checkpoint travels least in weight space"] == "holds"
    assert verdicts["swa finetunes to a higher test accuracy than adam"] == "holds"
    assert verdicts["the link between robustness and finetuned accuracy is weak or noisy"].startswith("does not")


def test_claims_fail_when_methods_do_not_differ():
    ft = _finetuning(gap=-0.05)
    verdicts = conclusions.claims(_properties(), conclusions.run_outcomes(ft, "full"), ft, "full")
    assert verdicts.set_index("claim").verdict["swa finetunes to a higher test accuracy than adam"] == "does not hold"


def test_scoreboard_marks_the_best_method_per_metric():
    ft = _finetuning(gap=0.05)
    board = conclusions.scoreboard(_properties(), ft, "full", dict(robustness=True, test_acc=True,
                                                                      distance_all=False))
    best = board[board.best].set_index("metric").method
    assert best["robustness"] == "swa" and best["test_acc"] == "swa" and best["distance_all"] == "swa"
    assert (board.ci_low <= board["mean"]).all() and (board["mean"] <= board.ci_high).all()
    grid = conclusions.scoreboard_text(board)
    assert grid.loc["test_acc", "swa"].endswith("*")
