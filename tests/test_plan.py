"""The confirmatory plan: declared before the runs, hashed, and its changes kept, so the page can say them."""
import json
from types import SimpleNamespace

import pandas as pd
import pytest

from minima import confirmatory, findings, prose
from minima.config import ConfigError, Study


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMA_OUTPUTS", str(tmp_path))
    return tmp_path


def test_the_plan_is_written_once_and_a_change_keeps_the_earlier_hash(outputs):
    study = Study.load("tiny", name="planned")
    first = confirmatory.write_plan(study)
    stored = json.loads((study.output_dir / "plan.json").read_text())
    assert stored["hash"] == first["hash"] == confirmatory.plan_hash(confirmatory.plan(study))
    assert [h["id"] for h in stored["plan"]["primary"]] == study.primary
    assert confirmatory.write_plan(study) == first, "the same plan is not written again"
    assert prose.plan_sentence(first, first["hash"]).endswith("it has not changed since.")

    more = Study.load("tiny", name="planned", pretrain_seeds=[0, 1])
    assert prose.plan_sentence(first, confirmatory.plan_hash(confirmatory.plan(more))).endswith(
        "the verdicts follow the new one."), "a page whose settings left the stored plan says so"
    second = confirmatory.write_plan(more)
    assert second["hash"] != first["hash"] and second["earlier"] == [dict(hash=first["hash"], written=first["written"])]
    assert f"replaced 1 earlier plan(s) ({first['hash']})" in prose.plan_sentence(second, second["hash"])


def test_a_study_without_a_stored_plan_says_its_verdicts_were_not_declared(outputs):
    study = Study.load("tiny", name="unplanned")
    assert confirmatory.read_plan(study) is None
    assert "were not declared in advance" in prose.plan_sentence(None, confirmatory.plan_hash(confirmatory.plan(study)))


def test_an_unknown_primary_hypothesis_is_refused_with_the_valid_ids():
    with pytest.raises(ConfigError, match=r"primary=\['sam_flater'\].*sam_flatter, swa_lower_trace"):
        Study.load("tiny", primary=["sam_flater"])
    with pytest.raises(ConfigError, match="none twice"):
        Study.load("tiny", primary=["sam_flatter", "sam_flatter"])


def test_replication_quotes_only_the_primary_verdicts_that_agree_in_every_run(outputs, monkeypatch):
    one, two = (Study.load("tiny", name=n, threads=t) for n, t in (("one", 1), ("two", 2)))
    rows = dict(one=["holds", "cannot tell", "does not hold"], two=["holds", "holds", "does not hold"])

    def page(study):
        table = pd.DataFrame(dict(id=["a", "b", "c"], claim=["A", "B", "C"], kind="claim",
                                  decision=rows[study.name], effect=[0.5, 0.3, -0.4]))
        return SimpleNamespace(primary=table)

    monkeypatch.setattr(findings, "study_page", page)
    table = findings.replication([one, two])
    assert table.same.tolist() == [True, False, True]
    text = findings.replication_markdown(table, [one, two])
    plan = confirmatory.plan_hash(confirmatory.plan(one))
    assert text.startswith(f"Plan `{plan}`, run as `one` (threads=1, device {one.device}), `two` (threads=2, device {two.device}): "
                           "2 of 3 primary verdicts reach the same decision in every run.")
    assert "- A: **holds** in every run" in text and "- C: **does not hold** in every run" in text
    assert "- B: differs between the runs (cannot tell in one, holds in two): not quoted" in text
    with pytest.raises(ValueError, match="different plans"):
        findings.replication_markdown(table, [one, Study.load("tiny", name="two", pretrain_seeds=[0, 1])])

