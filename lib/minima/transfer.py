"""Does a robust minimum stay robust once finetuned? Robustness before and after finetuning."""
from __future__ import annotations

import pandas as pd

from minima import data, finetuning, robustness, runstore, sweep
from minima.config import Study
from minima.evaluation import pick_device

MEASURES = ("gaussian", "fgsm", "energy")


def finetuned_robustness(study: Study, per_class: int | None = None) -> pd.DataFrame:
    """Robustness summaries of every finetuned model (first finetuning seed of each start and
    protocol) on a stratified subset of the target test set (`per_class` images per class,
    default three times eval_subset_per_class), through the same measures as the pretrained minima;
    one job per model through the study's executor."""
    seed = study.finetune_seeds[0]
    jobs = [sweep.Job(f"{protocol}-{finetuning.start_label(start)}-ft{seed}", measure_finetuned,
                      (finetuning.finetune_run(study, start.name if start else finetuning.SCRATCH, seed, protocol), per_class))
            for protocol in study.protocols for start in finetuning.finetune_starts(study)]
    return robustness.summaries(pd.concat(sweep.run(study, jobs, "finetuned robustness"), ignore_index=True))


def measure_finetuned(study: Study, run: runstore.Run, per_class: int | None = None) -> pd.DataFrame:
    """The transfer measures of one finished finetuning run on the stratified target test subset."""
    target = data.load_task(study, "target")
    keep = data.stratified_indices(target.y_test, per_class or 3 * study.eval_subset_per_class, study.seed)
    final = run.final()
    model = runstore.load_model(study, run, target.n_classes, pick_device(study.device))
    table = robustness.measure_model(model, target.x_test[keep], target.y_test[keep], study, measures=MEASURES)
    return table.assign(run=run.name, method=final["method"], seed=final["pretrain_seed"],
                        protocol=final["protocol"], split="target test")


def before_and_after(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Per pretraining run and measure: the normalised area before (robustness summaries of the
    pretrained runs, source test set) and after finetuning (`finetuned_robustness`), side by side."""
    before = before[(before.split == "test") & before.measure.isin(MEASURES)]
    after = after[after.method != finetuning.SCRATCH]
    return after.merge(before[["method", "seed", "measure", "auc"]].rename(columns={"auc": "auc_before"}),
                       on=["method", "seed", "measure"]).rename(columns={"auc": "auc_after"})
