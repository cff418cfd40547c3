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


def before_after_ranks(before_after: pd.DataFrame) -> pd.DataFrame:
    """Per measure of `before_and_after`: the Spearman correlation over runs of robustness before and after
    finetuning (permutation p, n), and the most robust method (mean over its runs) before and after."""
    rows = []
    for measure, part in before_after.groupby("measure"):
        rho = stats.correlation(part.auc_before, part.auc_after, "spearman")
        kept = part.groupby("method")[["auc_before", "auc_after"]].mean()
        rows.append(dict(measure=measure, r=rho["r"], p_value=rho["p_value"], n=rho["n"],
                         best_before=kept.auc_before.idxmax(), best_after=kept.auc_after.idxmax()))
    return pd.DataFrame(rows, columns=["measure", "r", "p_value", "n", "best_before", "best_after"])


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

