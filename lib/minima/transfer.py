"""What a minimum passes on to finetuning: the gain over training from scratch, and whether a robust
minimum stays robust once finetuned (robustness before and after)."""
from __future__ import annotations

import pandas as pd

from minima import data, executor, finetuning, robustness, runstore, stats
from minima.config import Study
from minima.evaluation import pick_device

MEASURES = ("gaussian", "fgsm", "energy")


def finetuned_robustness(study: Study, per_class: int | None = None) -> pd.DataFrame:
    """Robustness summaries of every finetuned model (first finetuning seed of each start and
    protocol) on a stratified subset of the target test set (`per_class` images per class,
    default three times eval_subset_per_class), through the same measures as the pretrained minima;
    one job per model through the study's executor."""
    seed = study.finetune_seeds[0]
    jobs = [executor.Job(f"{protocol}-{finetuning.start_label(start)}-ft{seed}", measure_finetuned,
                         (finetuning.finetune_run(study, start.name if start else finetuning.SCRATCH, seed, protocol), per_class))
            for protocol in study.protocols for start in finetuning.finetune_starts(study)]
    return robustness.summaries(pd.concat(executor.run(study, jobs, "finetuned robustness"), ignore_index=True))


def measure_finetuned(study: Study, run: runstore.Run, per_class: int | None = None) -> pd.DataFrame:
    """The transfer measures of one finished finetuning run on the stratified target test subset."""
    target = data.load_task(study, "target")
    keep = data.stratified_indices(target.y_test, per_class or 3 * study.eval_subset_per_class, study.seed)
    final = run.final()
    model = runstore.load_model(study, run, target.n_classes, pick_device(study.device))
    table = robustness.measure_model(model, target.x_test[keep], target.y_test[keep], study, measures=MEASURES)
    return table.assign(run=run.name, method=final["method"], pretrain_seed=final["pretrain_seed"],
                        protocol=final["protocol"], split="target test")


def before_and_after(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Per pretraining run and measure: the normalised area before (robustness summaries of the
    pretrained runs, source test set) and after finetuning (`finetuned_robustness`), side by side."""
    before = before[(before.split == "test") & before.measure.isin(MEASURES)]
    after = after[after.method != finetuning.SCRATCH]
    return after.merge(before[["method", "pretrain_seed", "measure", "auc"]].rename(columns={"auc": "auc_before"}),
                       on=["method", "pretrain_seed", "measure"]).rename(columns={"auc": "auc_after"})


def baseline_sentence(summary: pd.DataFrame) -> str:
    """For one protocol's `stats.summarize` of final finetuning metrics by method (with `reached` and `runs`
    counts): how many pretraining methods beat the from-scratch baseline (higher test accuracy, more runs
    reaching the threshold, or fewer epochs to it), who is most accurate and who travelled least."""
    base = summary[summary.method == finetuning.SCRATCH].iloc[0]
    pre = summary[summary.method != finetuning.SCRATCH]
    beats = ((pre.test_accuracy_mean > base.test_accuracy_mean) | (pre.reached > base.reached)
             | (pre.epochs_to_threshold_mean < base.epochs_to_threshold_mean))
    return (f"{beats.sum()} of {len(pre)} pretraining methods beat the from-scratch baseline (test accuracy "
            f"{base.test_accuracy_mean:.1%}, threshold reached in {int(base.reached)} of {int(base.runs)} runs). "
            + stats.lead_sentence(pre, "test_accuracy", "test accuracy after finetuning") + " "
            + stats.lead_sentence(pre, "distance_all", "distance travelled (weight units)", higher=False, fmt=".2f"))


def before_after_sentences(before_after: pd.DataFrame) -> list[str]:
    """Per measure of `before_and_after`: the rank correlation over runs of robustness before and after
    finetuning, and the most robust method (mean over its runs) before and after."""
    sentences = []
    for measure, part in before_after.groupby("measure"):
        rho = stats.correlation(part.auc_before, part.auc_after, "spearman")
        kept = part.groupby("method")[["auc_before", "auc_after"]].mean()
        sentences.append(f"{measure}: Spearman(before, after) = {rho['r']:.2f} (permutation {stats.p_text(rho['p_value'])}, "
                         f"n = {rho['n']}); most robust before: {kept.auc_before.idxmax()}, "
                         f"after: {kept.auc_after.idxmax()}.")
    return sentences
