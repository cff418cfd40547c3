"""Forgetting of the source task: what finetuning a minimum costs on the task it was pretrained on.

For every finetuned model that started from a pretraining run, two source test accuracies after
finetuning, each against the same measure of the pretrained network:
- head: the finetuned backbone wearing the source head it started from (what a user of the finetuned
  network gets back on the old task, batchnorm statistics of the new one included);
- probe: a source linear probe refitted on the backbone's frozen penultimate features (whether the
  features still hold the old task once a head may re-read them), by one fixed recipe before and after.
Forgetting is before minus after: positive when finetuning lost source accuracy. The from-scratch
baseline has no source head and no pretrained features to lose: it gets no row.
"""
from __future__ import annotations

import copy
import time

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minima import data, executor, finetuning, models, pretraining, runstore, stats
from minima.config import Study
from minima.evaluation import eval_mode, evaluate, pick_device, to_input

# what a run's forgetting depends on beyond the runs themselves (their folder names hold the data keys and seed)
KEYS = ("probe_per_class",)
# the probe's recipe: L2-penalised multinomial logistic regression on standardised features, by L-BFGS from zero.
# The penalty makes the loss strictly convex, so the probe is the recipe's unique minimum (the same features give
# the same probe, bit for bit) even when features outnumber images; 1e-3 per unit of mean cross-entropy is about
# sklearn's default (C = 1) at the default's 750 images, small next to the loss of a fitted probe
PROBE_L2 = 1e-3
PROBE_STEPS = 500  # L-BFGS iterations at most: a default-sized probe (750 x 128 features) stopped after 91
MEASURES = ("head", "probe")
COLUMNS = ["run", "start", "method", "pretrain_seed", "finetune_seed", "protocol",
           *(f"{m}_accuracy_{when}" for m in MEASURES for when in ("before", "after")),
           *(f"forgetting_{m}" for m in MEASURES), "seconds"]
PROBE_COLUMNS = ["run", "method", "pretrain_seed", "probe_accuracy", "seconds"]  # a pretrained run's source probe


# ---------------------------------------------------------------- measures on models

def with_head(backbone: nn.Module, head: nn.Linear) -> nn.Module:
    """A copy of the network `backbone` wearing a copy of `head` as its classifier (neither input changes)."""
    model = copy.deepcopy(backbone)
    parent, _, child = models.head_name(model).rpartition(".")
    device = next(model.parameters()).device
    setattr(model.get_submodule(parent) if parent else model, child, copy.deepcopy(head).to(device))
    return model


def head_accuracy(backbone: nn.Module, head: nn.Linear, x: Tensor, y: Tensor) -> float:
    """Accuracy on uint8 images `x` of `backbone`'s network with `head` as its classifier (eval mode)."""
    return evaluate(with_head(backbone, head), x, y)["accuracy"]


@torch.no_grad()
def penultimate(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    """The frozen penultimate features (the classifier's inputs) of uint8 images, eval mode, float64 on the CPU."""
    captured: list[Tensor] = []
    hook = models.head(model).register_forward_hook(
        lambda module, inputs, output: captured.append(inputs[0].double().cpu()))
    device = next(model.parameters()).device
    try:
        with eval_mode(model):
            for i in range(0, len(x), batch_size):
                model(to_input(x[i:i + batch_size], device))
    finally:
        hook.remove()
    return torch.cat(captured)


def fit_probe(features: Tensor, labels: Tensor, n_classes: int, l2: float = PROBE_L2,
              steps: int = PROBE_STEPS) -> nn.Linear:
    """The probe's recipe (`PROBE_L2`): a linear classifier of the features standardised by their train mean
    and sd, float64, fitted by full-batch L-BFGS from zero weights; returned as one layer on raw features."""
    if len(features) != len(labels) or labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"{len(features)} feature rows and {len(labels)} labels in [{labels.min()}, "
                         f"{labels.max()}]; expected as many labels as rows, each in [0, {n_classes - 1}]")
    x = features.double()
    mean, sd = x.mean(0), x.std(0)
    sd = torch.where(sd > 0, sd, torch.ones_like(sd))  # a feature constant on the train images (a dead unit)
    z = (x - mean) / sd
    weight = torch.zeros(n_classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=steps, history_size=20, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, labels) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    probe = nn.Linear(z.shape[1], n_classes, dtype=torch.float64).requires_grad_(False)
    probe.weight.copy_(weight.detach() / sd)  # (x - mean) / sd @ W.T + b, folded into one layer
    probe.bias.copy_(bias.detach() - probe.weight @ mean)
    return probe


def probe_accuracy(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                   n_classes: int) -> float:
    """Test accuracy of the probe (`fit_probe`) fitted on the train features."""
    probe = fit_probe(train_features, train_labels, n_classes)
    with torch.no_grad():
        return (probe(test_features.double()).argmax(1) == test_labels).double().mean().item()


def source_probe(model: nn.Module, source: data.Task, keep: Tensor) -> float:
    """Source test accuracy of a probe on `model`'s frozen features, fitted on the source train images `keep`."""
    return probe_accuracy(penultimate(model, source.x_train[keep]), source.y_train[keep],
                          penultimate(model, source.x_test), source.y_test, source.n_classes)


# ---------------------------------------------------------------- runs

def probe_subset(study: Study, source: data.Task) -> Tensor:
    """The probe's train images: a stratified draw of probe_per_class source train images per class."""
    return data.stratified_indices(source.y_train, study.probe_per_class, study.seed)


def pretrained_probe(study: Study, method: str, seed: int) -> pd.DataFrame:
    """The source probe accuracy of one finished pretraining run, stored in its folder for the probe's keys."""
    run = pretraining.pretrain_run(study, method, seed)

    def compute() -> pd.DataFrame:
        start = time.perf_counter()
        source = data.load_task(study, "source")
        model = runstore.load_model(study, run, source.n_classes, pick_device(study.device))
        return pd.DataFrame([dict(run=run.name, method=method, pretrain_seed=seed,
                                  probe_accuracy=source_probe(model, source, probe_subset(study, source)),
                                  seconds=time.perf_counter() - start)])
    return run.measured("source_probe", study.fingerprint(*KEYS), compute)


def measure_run(study: Study, start: runstore.Run, seed: int, protocol: str) -> pd.DataFrame:
    """The forgetting of one finished finetuning run from the pretraining run `start` (one row, `COLUMNS`),
    stored in its folder for the probe's keys."""
    run = finetuning.finetune_run(study, start.name, seed, protocol)

    def compute() -> pd.DataFrame:
        began = time.perf_counter()
        origin = start.final()
        source, device = data.load_task(study, "source"), pick_device(study.device)
        pretrained = runstore.load_model(study, start, source.n_classes, device)
        finetuned = runstore.load_model(study, run, study.n_classes("target"), device)
        before = dict(head=origin["test_accuracy"],
                      probe=pretrained_probe(study, origin["method"], origin["seed"]).probe_accuracy.iloc[0])
        after = dict(head=head_accuracy(finetuned, models.head(pretrained), source.x_test, source.y_test),
                     probe=source_probe(finetuned, source, probe_subset(study, source)))
        row = dict(run=run.name, start=start.name, method=origin["method"], pretrain_seed=origin["seed"],
                   finetune_seed=seed, protocol=protocol,
                   **{f"{m}_accuracy_{when}": v[m] for m in MEASURES for when, v in (("before", before),
                                                                                     ("after", after))},
                   **{f"forgetting_{m}": before[m] - after[m] for m in MEASURES})
        return pd.DataFrame([dict(row, seconds=time.perf_counter() - began)])[COLUMNS]
    return run.measured("forgetting", study.fingerprint(*KEYS), compute)


def evaluate_study(study: Study) -> pd.DataFrame:
    """The forgetting of every finetuning run that started from a pretraining run (protocol x start x finetuning
    seed; the from-scratch baseline has no source head: no row), finetuned first if need be; the pretrained
    probes, then one job per finetuned run, through the study's executor."""
    finetuning.finetune_all(study)
    pretraining.each_run(study, pretrained_probe, "source probes", PROBE_COLUMNS)
    jobs = [executor.Job(f"{protocol}-{finetuning.start_label(start)}-ft{seed}", measure_run, (start, seed, protocol))
            for protocol in study.protocols for start in finetuning.finetune_starts(study) if start is not None
            for seed in study.finetune_seeds]
    return pd.concat(executor.run(study, jobs, "forgetting"), ignore_index=True)[COLUMNS]


def method_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per protocol, method and measure (head, probe): mean and sd of forgetting over pretraining runs and their
    count (`runs`), each run's finetuning seeds averaged first (the seeds of one run share its start)."""
    long = table.melt(id_vars=["protocol", "method", "pretrain_seed"], value_vars=[f"forgetting_{m}" for m in MEASURES],
                      var_name="measure", value_name="forgetting")
    long["measure"] = long.measure.str.removeprefix("forgetting_")
    runs = long.groupby(["protocol", "method", "measure", "pretrain_seed"], as_index=False).forgetting.mean()
    return stats.summarize(runs, ["protocol", "method", "measure"], ["forgetting"]).rename(
        columns={"forgetting_count": "runs"})
