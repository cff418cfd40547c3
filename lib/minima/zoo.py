"""The zoo arm: checkpoints a user brings, each made a pretraining run of the study.

A zoo is a folder of checkpoints, each a state dict (`<name>.safetensors`, or `<name>.pt` read with
`weights_only=True`) beside a sidecar `<name>.yaml`:

    arch: resnet18_small          # resnet18_small / resnet18, a torchvision classifier, or timm:<name>
    width: 16                     # resnet18_small only
    weights: ResNet50_Weights.IMAGENET1K_V2   # instead of a file: torchvision weights from TORCH_HOME
    preprocessing: {size: 224, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}  # default: none
    source: {dataset: fashion_mnist, labels: [0, 1, 2, 3, 4]}   # the task it was trained on
    group: adam                   # optional: treated like a method (default: the checkpoint's name)
    numbers: {noise_sigma: 0.1}   # optional: treated like a knob (three values or more make a one-knob arm)

Every sidecar is read and every checkpoint loaded into its architecture before any run is measured, so
a bad entry fails at once with one line. Each checkpoint is imported into the run store as a finished
run (its weights as safetensors, its model spec, its source accuracy when the study can load its
source task), then measured, sliced and finetuned like the study's own runs.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from torch import nn

from minima import archs, data, paths, store
from minima.config import Study
from minima.evaluation import evaluate
from minima.runstore import Run, model_from_spec, prefixed, runs_root

SIDECAR_KEYS = ("arch", "width", "weights", "classes", "preprocessing", "source", "group", "numbers")
# what a checkpoint's source-task record (final.json) depends on in the study: its source data
SOURCE_KEYS = ("seed", "source", "image_size", "source_classes", "source_labels", "source_train_per_class",
               "source_test_per_class", "imagenet_dir", "datasets_dir")


class ZooError(ValueError):
    """A zoo folder or sidecar that does not describe a loadable checkpoint."""


@dataclass(frozen=True)
class Entry:
    """One checkpoint of a zoo: where its weights are, its model spec and its labels."""

    name: str
    weights: str  # a file in the zoo folder, or a torchvision weights name
    spec: dict[str, Any]  # arch, width, classes, preprocessing: what `runstore.model_from_spec` builds
    source: dict[str, Any]
    group: str
    numbers: dict[str, float] = field(default_factory=dict)


def folder(study: Study) -> Path:
    """The study's zoo folder (absolute, or relative to the project's data/)."""
    return paths.resolve_data_path(study.zoo)


def study_source(study: Study) -> dict[str, Any]:
    """The study's source task as a zoo sidecar names it."""
    if study.source in ("synthetic", "imagenet"):
        return dict(dataset=study.source, classes=study.source_classes)
    return dict(dataset=study.source, labels=list(study.source_labels))


def source_problem(study: Study, entry: Entry) -> str:
    """Why the study cannot measure `entry` on its source task ("" when it can: the task is the study's)."""
    if entry.source == study_source(study):
        return ""
    return (f"{entry.name} was trained on {entry.source or 'an unnamed task'}, not on the study's source "
            f"{study_source(study)}")


def entries(study: Study) -> list[Entry]:
    """Every checkpoint of the study's zoo, read and checked (each loads into its architecture)."""
    root = folder(study)
    if not root.is_dir():
        raise ZooError(f"zoo={study.zoo!r}: no folder {root}; valid: a folder of checkpoints with .yaml sidecars")
    sidecars = sorted(root.glob("*.yaml"))
    if not sidecars:
        raise ZooError(f"zoo={study.zoo!r}: {root} holds no <name>.yaml sidecar (docs/zoo.md)")
    found = [_entry(root, path, study) for path in sidecars]
    for entry in found:
        model_from_spec(entry.spec).load_state_dict(_state_dict(root, entry))
    return found


def _entry(root: Path, path: Path, study: Study) -> Entry:
    name = path.stem
    side = yaml.safe_load(path.read_text()) or {}
    if not isinstance(side, dict):
        raise ZooError(f"{path}: a sidecar is a mapping of {', '.join(SIDECAR_KEYS)}")
    unknown = sorted(set(side) - set(SIDECAR_KEYS))
    if unknown:
        raise ZooError(f"{path}: unknown key {unknown[0]!r}; valid keys: {', '.join(SIDECAR_KEYS)}")
    arch = side.get("arch")
    problem = archs.arch_problem(str(arch)) if arch else f"{path}: no arch"
    if problem:
        raise ZooError(f"{path}: {problem}")
    weights = side.get("weights") or _weights_file(root, name)
    pre = side.get("preprocessing") or {}
    spec = dict(arch=arch, width=int(side.get("width", 64)), preprocessing=dict(
        size=pre.get("size"), mean=list(pre.get("mean", [0.0, 0.0, 0.0])), std=list(pre.get("std", [1.0, 1.0, 1.0]))))
    numbers = side.get("numbers") or {}
    if not isinstance(numbers, dict) or not all(isinstance(v, (int, float)) for v in numbers.values()):
        raise ZooError(f"{path}: numbers={numbers!r}; valid: a mapping of names to numbers (e.g. {{eps: 0.25}})")
    entry = Entry(name, weights, spec, side.get("source") or {}, str(side.get("group") or name),
                  {k: float(v) for k, v in numbers.items()})
    classes = side.get("classes") or _head_classes(_state_dict(root, entry), entry.name)
    return Entry(entry.name, entry.weights, {**spec, "classes": int(classes)}, entry.source, entry.group,
                 entry.numbers)


def _weights_file(root: Path, name: str) -> str:
    for suffix in (".safetensors", ".pt"):
        if (root / f"{name}{suffix}").is_file():
            return f"{name}{suffix}"
    raise ZooError(f"{root / name}.yaml: no {name}.safetensors or {name}.pt beside it, and no weights: key")


def _state_dict(root: Path, entry: Entry) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors: a safetensors or weights-only .pt file, or torchvision weights from TORCH_HOME."""
    path = root / entry.weights
    if path.suffix == ".safetensors" and path.is_file():
        return store.load_tensors(path)
    if path.suffix == ".pt" and path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a pickle that needs code to load is refused by weights_only
            raise ZooError(f"{path}: not a weights-only state dict ({type(err).__name__}); save tensors only") from None
        return state.get("state_dict", state) if isinstance(state, dict) else state
    return _torchvision_weights(entry)


def _torchvision_weights(entry: Entry) -> dict[str, torch.Tensor]:
    """torchvision weights by name, from the local cache only: nothing downloads."""
    import torchvision

    try:
        weights = torchvision.models.get_weight(entry.weights)
    except (ValueError, KeyError, AttributeError):
        raise ZooError(f"{entry.name}: weights={entry.weights!r} is neither a file in the zoo nor a torchvision "
                       "weights name (e.g. ResNet18_Weights.IMAGENET1K_V1)") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        raise ZooError(f"{entry.name}: {entry.weights} is not on disk at {cached} (TORCH_HOME); copy the file "
                       "there, nothing downloads")
    return torch.load(cached, map_location="cpu", weights_only=True)


def _head_classes(state: dict[str, torch.Tensor], name: str) -> int:
    weights = [k for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    if not weights:
        raise ZooError(f"{name}: no linear head in the checkpoint; give classes: in the sidecar")
    return int(state[weights[-1]].shape[0])


def keys(found: list[Entry]) -> list[tuple[str, int]]:
    """(group, index within the group) of every entry: the zoo's (method, pretrain_seed)."""
    seen: dict[str, int] = {}
    out = []
    for entry in found:
        out.append((entry.group, seen.get(entry.group, 0)))
        seen[entry.group] = out[-1][1] + 1
    return out


def run_of(study: Study, entry: Entry) -> Run:
    """The run folder of a zoo checkpoint: named by it, its weights' and sidecar's bytes and the study's source."""
    digest = hashlib.sha1(yaml.safe_dump(dict(spec=entry.spec, source=entry.source, group=entry.group,
                                              numbers=entry.numbers, weights=entry.weights)).encode())
    path = folder(study) / entry.weights
    digest.update(path.read_bytes() if path.is_file() else entry.weights.encode())
    if not source_problem(study, entry):
        digest.update(study.fingerprint(*SOURCE_KEYS).encode())
    return Run(runs_root() / "zoo" / f"{entry.name}-{digest.hexdigest()[:10]}")


def import_entry(study: Study, entry: Entry, method: str, seed: int) -> Run:
    """The checkpoint as a finished run of the study (imported once): weights, model spec, and its source
    accuracy when the study can load its source task (else NaN, and one line saying why)."""
    run = run_of(study, entry)
    if run.finished:
        return run
    model = model_from_spec(entry.spec)
    model.load_state_dict(_state_dict(folder(study), entry))
    store.write_json(run.path / "model.json", entry.spec)
    store.write_json(run.path / "config.json", dict(kind="zoo", name=entry.name, weights=entry.weights,
                                                    source=entry.source, group=entry.group, numbers=entry.numbers,
                                                    study=study.as_dict()))
    final = dict(method=method, seed=seed, zoo_name=entry.name, arch=entry.spec["arch"], epochs=0, seconds=0.0,
                 **source_metrics(study, entry, model))
    run.save(model, pd.DataFrame(columns=["epoch"]), final)
    return run


def source_metrics(study: Study, entry: Entry, model: nn.Module) -> dict[str, float]:
    """Train and test loss and accuracy on the study's source task, or NaN where it is not the checkpoint's."""
    problem = source_problem(study, entry)
    if problem:
        print(f"{problem}: its source accuracy is not measured", flush=True)
        nan = dict(loss=float("nan"), accuracy=float("nan"))
        return {**prefixed("train", nan), **prefixed("test", nan)}
    task = data.load_task(study, "source")
    return {**prefixed("train", evaluate(model, task.x_train, task.y_train)),
            **prefixed("test", evaluate(model, task.x_test, task.y_test))}


def export(runs: list[tuple[Run, dict[str, Any]]], into: Path) -> pd.DataFrame:
    """Write finished runs as a zoo: each run's weights and a sidecar built from `labels` (arch, width,
    source, group, numbers); one row per checkpoint written."""
    into.mkdir(parents=True, exist_ok=True)
    rows = []
    for run, labels in runs:
        name = labels.pop("name")
        store.save_tensors(into / f"{name}.safetensors", store.load_tensors(run.weights))
        store.write_text(into / f"{name}.yaml", yaml.safe_dump(labels, sort_keys=False))
        rows.append(dict(name=name, run=run.name, **{k: labels.get(k) for k in ("arch", "group")}))
    return pd.DataFrame(rows)
