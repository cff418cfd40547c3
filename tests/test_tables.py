"""The study's tables: computed once per config, recomputed when a key they depend on changes."""
import numpy as np
import pandas as pd
import pytest

from minima import conclusions, finetuning, sharpness, tables
from minima.config import Study


def test_a_table_is_recomputed_only_when_one_of_its_keys_changes():
    calls = []

    def compute():
        calls.append(1)
        return pd.DataFrame({"a": [1, 2]})

    study = Study.load("tiny")
    tables.cached(study, "t", ("lr",), compute)
    tables.cached(study, "t", ("lr",), compute)
    assert len(calls) == 1
    tables.cached(Study.load("tiny", name="tiny", batch_size=8), "t", ("lr",), compute)
    assert len(calls) == 1, "batch_size is not a key of this table"
    tables.cached(Study.load("tiny", name="tiny", lr=0.5), "t", ("lr",), compute)
    assert len(calls) == 2


def test_the_scoreboard_needs_no_notebook_and_says_what_is_missing(tiny):
    assert conclusions.missing_inputs(tiny) == list(conclusions.INPUTS)
    assert not tables.is_cached(tiny, "finetuning", tables.finetuning_keys(tiny))
    board = conclusions.study_scoreboard(tiny)
    assert conclusions.missing_inputs(tiny) == []
    assert {"test_accuracy", "robustness", "distance_all", *conclusions.FLATNESS} <= set(board.metric)
    assert board[board.metric.isin(conclusions.FLATNESS)]["mean"].notna().all(), "every run has its flatness"
    assert set(board.method) == set(tiny.methods) | {finetuning.SCRATCH}


def test_epochs_to_threshold_follow_the_threshold_without_retraining(tiny):
    loose = tables.finetuned(tiny)
    strict = tables.finetuned(Study.load("tiny", name="tiny", finetune_threshold=0.01))
    assert (strict.run.values == loose.run.values).all(), "the same runs, not retrained"
    assert (strict.epochs_to_threshold == 1).all(), "every run reaches 1% train accuracy in its first epoch"


def test_the_flatness_table_holds_every_measure_of_every_run_and_is_read_back_not_recomputed(monkeypatch):
    study = Study.load("tiny", methods=["adam"], pretrain_seeds=[0, 1])
    table = tables.flatness(study)
    measures = study.hessian_top_k + 3  # the top eigenvalues, the trace, adaptive average and worst
    assert list(table.columns) == sharpness.COLUMNS
    assert table.groupby(["run", "replicate"]).size().tolist() == [measures] * 2 * study.measure_replicates
    assert np.isfinite(table.value).all() and (table.seconds > 0).all()
    monkeypatch.setattr(sharpness, "evaluate_study", lambda s: pytest.fail("the stored table was recomputed"))
    pd.testing.assert_frame_equal(tables.flatness(study), table)
