"""The sentences the notebooks print: written from a table, naming the right method and the right numbers."""
import math

import numpy as np
import pandas as pd

from minima import conclusions, finetuning, plots, prose, stats


def _summary(means, sds, value="test_accuracy"):
    return pd.DataFrame({"method": list(means), f"{value}_mean": list(means.values()), f"{value}_std": sds})


def test_the_lead_sentence_names_the_best_the_second_and_weighs_the_gap_against_the_seed_spread():
    text = prose.lead_sentence(_summary(dict(adam=0.50, swa=0.60, noisy_adam=0.40), [0.01, 0.02, 0.01]),
                               "test_accuracy", "test accuracy")
    assert text.startswith("swa has the highest test accuracy (60.0%), adam next (50.0%): a lead of 10.0%")
    assert "larger than the seed spread (2.0% standard deviation)" in text
    close = prose.lead_sentence(_summary(dict(adam=0.50, swa=0.51), [0.03, 0.01]), "test_accuracy", "test accuracy")
    assert "a lead of 1.0%, within the seed spread (3.0% standard deviation)" in close


def test_the_lead_sentence_with_one_seed_per_method_says_there_is_no_spread():
    text = prose.lead_sentence(_summary(dict(adam=0.5, swa=0.6), [np.nan, np.nan]), "test_accuracy", "test accuracy")
    assert "swa has the highest" in text and "one seed per method, so no seed spread to compare it with" in text
    assert "nan" not in text


def test_the_lead_sentence_skips_a_missing_mean_and_handles_one_or_no_method():
    table = _summary(dict(adam=np.nan, swa=0.6, sam=0.7), [0.01, 0.01, 0.01])
    assert "sam has the highest test accuracy (70.0%), swa next (60.0%)" in prose.lead_sentence(
        table, "test_accuracy", "test accuracy")
    assert prose.lead_sentence(table.iloc[:2], "test_accuracy", "test accuracy") == "Only swa has a test accuracy: 60.0%."
    assert prose.lead_sentence(table.iloc[:1], "test_accuracy", "x") == "No method has a x to compare."


def test_the_lead_sentence_can_rank_lowest_first_in_other_units():
    text = prose.lead_sentence(_summary(dict(adam=5.0, swa=3.0), [0.5, 0.2], "distance"), "distance",
                               "distance travelled", higher=False, fmt=".2f")
    assert text.startswith("swa has the lowest distance travelled (3.00), adam next (5.00): a lead of 2.00")


def test_the_threshold_sentence_says_whether_every_run_reaches_it():
    final = pd.DataFrame(dict(method=["adam", "adam", "swa", "swa"], train_accuracy=[0.99, 0.97, 0.96, 1.0]))
    text = prose.threshold_sentence(final, "train_accuracy", 0.95, "train accuracy")
    assert text == ("Train accuracy: every run reaches 95% (lowest run: 96.0%; mean by method: adam 98.0%, "
                    "swa 98.0%).")
    assert "not every run reaches 97%" in prose.threshold_sentence(final, "train_accuracy", 0.97, "train accuracy")


def _bars(across, within, mode="recompute"):
    rows = [dict(kind="across", barrier=b) for b in across] + [dict(kind="within", barrier=b) for b in within]
    return pd.DataFrame(rows).assign(bn_mode=mode, split="train")


def test_the_basin_verdict_reads_the_barriers_of_the_judging_mode():
    noise = _bars([9.0, 9.0], [9.0], mode="keep")  # another mode, another split: never read
    bars = pd.concat([_bars([0.01, 0.05], [0.02]), noise, _bars([7.0], [7.0]).assign(split="test")])
    assert prose.basin_verdict(bars, ["keep", "recompute"]).endswith("the minima sit in one basin.")
    assert "mean 0.03 nats (range 0.01 to 0.05)" in prose.basin_verdict(bars, ["keep", "recompute"])
    assert prose.basin_verdict(_bars([1.0], [2.0, 3.0]), ["recompute"]).endswith(
        "closer to each other than the seeds of any one method do.")
    assert "one basin per method" in prose.basin_verdict(_bars([1.0, 2.0], [0.05]), ["recompute"])
    assert "between methods are 4.0x those between seeds" in prose.basin_verdict(
        _bars([0.5, 1.5, 4.0], [0.5]), ["recompute"])
    assert "no sign that the method picks one" in prose.basin_verdict(_bars([0.5, 1.0], [0.6]), ["recompute"])


def test_the_basin_verdict_with_one_seed_per_method_has_no_yardstick():
    text = prose.basin_verdict(_bars([0.2, 0.4], [], mode="interpolate"), ["interpolate", "keep"])
    assert text.startswith("With interpolate batchnorm") and "no yardstick from seeds" in text


def test_the_basin_verdict_of_one_method_has_no_pair_across_methods():
    text = prose.basin_verdict(_bars([], [0.2, 0.4]), ["recompute"])
    assert "within a method (two seeds): mean 0.3 nats (range 0.2 to 0.4)" in text and "nan" not in text
    assert text.endswith("With one method there is no pair across methods to weigh them against.")


def test_a_study_without_adam_or_another_method_says_it_has_no_method_comparison():
    assert prose.no_comparison_sentence(["adam", "sam"]) == ""
    assert prose.no_comparison_sentence(["sam"]).endswith("this study has no adam (methods: sam).")
    assert prose.no_comparison_sentence(["adam", "adam"]).endswith("this study has adam alone.")


def test_the_exploratory_tests_of_a_study_with_only_interval_verdicts_list_them_alone():
    text = prose.statement({"method comparisons": 0}, 2)
    assert text.startswith("**Exploratory.** Beneath the primary verdicts, this page and notebook 06 print 2 "
                           "exploratory tests: 2 resting on an interval. ")


def test_the_distance_sentence_of_one_run_says_there_is_no_pair():
    one = pd.DataFrame(dict(method_a=["sam"], pretrain_seed_a=[0], method_b=["sam"], pretrain_seed_b=[0],
                            group=["all"], relative_a=[0.0]))
    assert prose.distance_sentence(one) == "One run per architecture: no two minima to measure apart."
    two = pd.concat([one, one.assign(method_b="adam", relative_a=1.5), one.assign(method_a="adam", relative_a=1.2)])
    assert prose.distance_sentence(two) == "Mean relative distance between two runs, all: across methods 1.20."


def test_the_plane_sentence_gives_the_loss_at_each_minimum_and_the_grid_range():
    plane = pd.DataFrame(dict(point=["grid"] * 3 + ["minimum"] * 2, label=["", "", "", "adam", "swa"],
                              loss=[0.5, 2.0, 0.1, 0.2, 0.3], split="train", bn_mode="keep"))
    assert prose.plane_sentence(plane) == ("Train loss at the minima on the plane (keep batchnorm): adam 0.2, "
                                               "swa 0.3; lowest grid point 0.1; highest grid point 2 nats.")


def test_robustness_leaders_name_the_best_method_and_compare_with_the_report():
    auc = pd.DataFrame(dict(measure=["masking", "masking", "pgd", "pgd"], method=["adam", "swa", "adam", "swa"],
                            auc_mean=[0.8, 0.6, 0.3, 0.5], auc_std=[0.05, 0.05, np.nan, np.nan]))
    masking, pgd = prose.leader_sentences(auc, dict(masking=("Masking", ""), pgd=("PGD", "")))
    assert masking.startswith("Masking: adam has the highest") and "larger than the seed spread (5.0%" in masking
    assert masking.endswith("The report found swa best here: this run does not agree.")
    assert pgd.startswith("PGD: swa has the highest") and "one seed per method" in pgd
    assert pgd.endswith("The report did not run this attack.")


def test_the_attack_sentence_compares_pgd_and_fgsm_at_the_largest_eps_on_test():
    table = pd.DataFrame(dict(measure=["fgsm", "pgd"] * 3, strength=[0.0, 0.0, 0.1, 0.1, 0.1, 0.1],
                              split="test", accuracy=[0.9, 0.9, 0.5, 0.2, 0.3, 0.2]))
    text = prose.attack_sentence(pd.concat([table, table.assign(split="train", accuracy=0.0)]))
    assert text == ("At eps 0.1, PGD leaves 20.0% test accuracy and FGSM 40.0% (mean over runs): "
                    "PGD is the stronger attack, as it should be.")
    assert "try more `pgd_steps`" in prose.attack_sentence(table.assign(measure=["pgd", "fgsm"] * 3))


def test_the_baseline_sentence_counts_the_methods_that_beat_scratch():
    summary = pd.DataFrame(dict(method=[finetuning.SCRATCH, "adam", "swa"], test_accuracy_mean=[0.5, 0.6, 0.4],
                                test_accuracy_std=[0.01, 0.02, 0.02], reached=[1, 3, 1], runs=[3, 3, 3],
                                epochs_to_threshold_mean=[4.0, 2.0, np.nan],
                                distance_all_mean=[9.0, 3.0, 2.0], distance_all_std=[1.0, 0.5, 0.5]))
    text = prose.baseline_sentence(summary)
    assert text.startswith("1 of 2 pretraining methods beat the from-scratch baseline (test accuracy 50.0%, "
                           "threshold reached in 1 of 3 runs).")
    assert "adam has the highest test accuracy after finetuning (60.0%), swa next (40.0%)" in text
    assert "swa has the lowest distance travelled (weight units) (2.00), adam next (3.00)" in text


def test_before_after_sentences_give_the_rank_correlation_and_the_leaders():
    before_after = pd.DataFrame(dict(measure="fgsm", method=["adam", "adam", "swa", "swa"],
                                     auc_before=[0.1, 0.2, 0.3, 0.4], auc_after=[0.4, 0.3, 0.2, 0.1]))
    (text,) = prose.before_after_sentences(before_after)
    assert text.startswith("fgsm: Spearman(before, after) = -1.00") and "n = 4" in text
    assert text.endswith("most robust before: swa, after: adam.")


def test_the_best_sentence_names_the_best_per_metric_and_the_unmeasured():
    board = pd.DataFrame(dict(metric=["test_accuracy", "test_accuracy", "epochs"], method=["adam", "swa", "adam"],
                              mean=[0.5, 0.6, np.nan], best=[False, True, False]))
    assert prose.best_sentence(board) == ("Best per metric: test_accuracy: swa. Not measured on this preset "
                                                "(no run got there): epochs")
    assert prose.best_sentence(board.iloc[:2]) == "Best per metric: test_accuracy: swa"


def test_property_outcome_pairs_put_each_outcome_beside_each_property_of_the_same_run():
    joined = pd.DataFrame(dict(run=["adam-0", "swa-0"], method=["adam", "swa"], pretrain_seed=0, robustness=[0.5, 0.8],
                               mean_barrier=[1.0, 2.0], test_accuracy=[0.6, 0.7], test_accuracy_std=[0.01, math.nan],
                               epochs_to_threshold=[3.0, 2.0], epochs_to_threshold_std=0.5,
                               distance_all=[4.0, 5.0], distance_all_std=0.1, forgetting_head=[0.1, 0.0],
                               forgetting_head_std=0.01, forgetting_probe=[0.05, 0.0], forgetting_probe_std=0.01))
    pairs = conclusions.property_outcome_pairs(joined)
    assert len(pairs) == 2 * 2 * len(conclusions.OUTCOMES)
    row = pairs[(pairs.run == "swa-0") & (pairs.property == "mean_barrier") & (pairs.outcome == "test_accuracy")].iloc[0]
    assert (row.value, row.outcome_value, math.isnan(row.outcome_std)) == (2.0, 0.7, True)
    fig = plots.property_outcome(pairs[(pairs.property == "robustness") & (pairs.outcome == "distance_all")],
                                 "robustness", "distance_all")
    assert fig.layout.xaxis.title.text == "robustness (pretrained minimum)" and len(fig.data) == 2


def test_a_scatter_across_knobs_colours_by_step_and_titles_x_once():
    runs = pd.DataFrame(dict(robustness=[0.3, 0.5, 0.4, 0.6], test_accuracy=[0.6, 0.7, 0.65, 0.75],
                             knob=["noise_sigma", "noise_sigma", "adv_eps", "adv_eps"], knob_step=[1, 2, 1, 2]))
    fig = plots.scatter(runs, "robustness", "test_accuracy", "knob_step", "t", "robustness (area)", "accuracy",
                        facet="knob", color_title="knob step")
    assert [a.text for a in fig.layout.annotations].count("robustness (area)") == 1  # not once per panel
    assert fig.layout.coloraxis.colorbar.title.text == "knob step" and fig.layout.coloraxis.colorbar.dtick == 1


def test_fit_sentence_gives_each_methods_range_of_train_and_test_accuracy():
    pretrained = pd.DataFrame(dict(method=["adam", "adam", "swa"], train_accuracy=[0.97, 1.0, 0.99],
                                   test_accuracy=[0.41, 0.43, 0.45]))
    assert prose.fit_sentence(pretrained) == ("Source task, final accuracy over pretraining runs: "
                                                    "adam train 97%-100%, test 41%-43%; swa train 99%-99%, "
                                                    "test 45%-45%.")


def test_the_power_sentence_is_at_the_level_the_verdict_is_decided_at():
    """At a family's alpha / 8 the detectable difference is larger than at 5% and the runs needed more; the sentence
    states the level and both numbers at it."""
    components = pd.DataFrame(dict(outcome="test_accuracy", level=["method", "pretrain_seed", "finetune_seed"],
                                   variance=[0.0, 0.02 ** 2, 0.01 ** 2]))
    sd = stats.run_sd(components, 2)
    text = prose.power_statement(components, 0.03, 3, 6, 2, alpha=0.05 / 8)
    d, needed = stats.detectable_difference(sd, 3, 6, alpha=0.05 / 8), stats.runs_needed(0.03, sd, 6, alpha=0.05 / 8)
    assert d > stats.detectable_difference(sd, 3, 6) and needed > stats.runs_needed(0.03, sd, 6)
    assert "at two-sided alpha 0.0063 (the level its verdict is decided at)" in text
    assert f"is {d:.3g};" in text and f"{needed} pretraining runs per method would resolve" in text
    assert f"is {stats.detectable_difference(sd, 3, 6):.3g};" in prose.power_statement(components, 0.03, 3, 6, 2)


def test_the_plan_sentences_give_power_now_the_runs_for_80_and_90_percent_and_say_what_cannot_be_stated():
    row = dict(kind="control", claim="", runs_per_method=3, ci_low=0.3, ci_high=0.4, in_family=True, most=24,
               seconds_per_run=30.0, time_source="what the pilot's tables record per run")
    plan = pd.DataFrame([dict(row, id="sam_flatter", power=0.35, seconds_80=6 * 8 * 30.0, seconds_90=8 * 8 * 30.0),
                         dict(row, id="swa_lower_trace", power=0.5, seconds_80=10 * 8 * 30.0, seconds_90=np.nan),
                         dict(row, id="knob_causes", power=0.0, ci_low=0.0, ci_high=0.004, in_family=False,
                              seconds_80=np.nan, seconds_90=np.nan),
                         dict(row, id="flat_finetunes_better", power=np.nan)])
    plan["runs_80"] = pd.Series([6, 10, None, None], dtype=object)  # as plan_table gives them: ints, None beyond
    plan["runs_90"] = pd.Series([8, None, None, None], dtype=object)
    lines = prose.plan_sentences(plan)
    assert lines[0] == ("sam_flatter: 35% power [30%, 40%] at 3 runs per method; 80% at 6 runs per method (24 min), "
                        "90% at 8 (32 min).")
    assert lines[1].endswith("80% at 10 runs per method (40 min), 90% not within 24.")
    assert "out of the family there" in lines[2] and lines[2].endswith("not 80% within 24 runs per method.")
    assert "no power to state" in lines[3]
    assert lines[4].startswith("Times: 30 s per pretraining run") and "linear in runs" in lines[4]
