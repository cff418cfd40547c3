"""The study's configuration: a preset YAML plus overrides, validated before any work."""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from minima import paths
from minima.hypotheses import HYPOTHESES, VALID as PRIMARY_VALID
from minima.catalog import DATASETS, SMALL_ARCHS
from minima.methods import REGISTRY, Knob, all_knobs, steps_per_epoch

if TYPE_CHECKING:
    import pandas as pd

PRESETS_DIR = Path(__file__).parent / "presets"
BN_MODES = ("interpolate", "keep", "recompute")
CURVE_KINDS = ("bezier", "chain", "report")  # minima.curves: trained curves and the report's optimised path
PROTOCOLS = ("full", "linear_probe", "partial")
EXECUTORS = ("local", "dask")
# how a study runs, not what it computes: no cache key, run folder or study name depends on them
EXECUTION_KEYS = ("name", "preset", "device", "executor", "scheduler", "workers", "threads", "lease_timeout",
                  "compile")
SYNTHETIC_CLASSES = 256  # data.py's 8 shapes x 4 textures x 8 colours (a test keeps the two equal)
TARGET_CLASSES = 10  # the synthetic target's classes
# what one entry of each list key is called in "every <noun> must be unique"
LIST_NOUNS = {"methods": "method", "pretrain_seeds": "seed", "bn_modes": "mode", "noise_sigmas": "sigma",
              "mask_sizes": "size", "fgsm_eps": "eps", "pgd_eps": "eps", "energy_sigmas": "sigma",
              "protocols": "protocol", "finetune_seeds": "seed", "curve_kinds": "kind", "compare_archs": "arch",
              "source_labels": "label", "target_labels": "label"}
SWEEPS_VALID = ("a mapping {method: {knob: [values]}} of registered methods, each with numeric knobs of its own "
                "and at least 3 distinct valid values per knob (e.g. {noisy_adam: {noise_sigma: [0.0, 0.05, 0.1]}}); "
                "{} for none")
MIN_SWEEP_VALUES = 3  # a dose-response trend needs three doses; two only say which end is higher
ARCHS_VALID = (f"one of {', '.join(SMALL_ARCHS)} (adapted to small images), resnet18, any torchvision classifier "
               "(resnet50, mobilenet_v3_small, efficientnet_b0, convnext_tiny, ...) or timm:<name> with timm")
STRENGTHS = ("noise_sigmas", "mask_sizes", "fgsm_eps", "pgd_eps", "energy_sigmas")
# keys that were renamed, old -> new: an old key in a preset or an override is refused with the new name
RENAMED = {"eval_train_per_class": "eval_subset_per_class", "cifar_dir": "datasets_dir",
           "claim_timeout": "lease_timeout"}


class ConfigError(ValueError):
    """A preset or an override that does not describe a valid study."""


def _param(default: Any = None, *, check: Callable[[Any], bool] | None = None,
           valid: str = "", choices: tuple | Callable[[], tuple] | None = None) -> Any:
    return field(default=default, metadata=dict(check=check, valid=valid, choices=choices))


def _positive(v: float) -> bool:
    return v > 0


def _non_negative(v: float) -> bool:
    return v >= 0


def _fraction(v: float) -> bool:
    return 0 < v <= 1


def _scheduler(v: str) -> bool:
    return v in ("", "slurm", "pbs") or "://" in v or ":" in v


def _numbers(v: list, kind: type = (int, float)) -> bool:
    return len(v) > 0 and all(isinstance(x, kind) and not isinstance(x, bool) for x in v)


@dataclass(frozen=True)
class Study:
    """Every knob of one study; a preset YAML gives all of them, overrides change some.

    The methods' own keys (noise_sigma, swa_lr, ...) are declared by the method classes in
    `minima.methods`; they are read like any other key (`study.noise_sigma`) and live in `knobs`.
    """

    preset: str = _param()
    name: str = _param(valid="a folder name: letters, digits, '-', '_', '.'")
    seed: int = _param(check=_non_negative, valid="an integer >= 0")
    device: str = _param(choices=("auto", "cpu", "cuda", "mps"))
    # execution
    executor: str = _param(choices=EXECUTORS)
    scheduler: str = _param(check=_scheduler, valid='"" (start a LocalCluster), "slurm", "pbs" (dask-jobqueue), '
                                                   "or a scheduler address such as tcp://host:8786")
    workers: int = _param(check=_positive, valid="an integer > 0 (LocalCluster worker processes, or SLURM/PBS jobs)")
    threads: int = _param(check=_non_negative, valid="an integer >= 0 (torch threads per run; 0: torch's default)")
    lease_timeout: float = _param(check=_positive,
                                  valid="a number > 0 (seconds without a heartbeat before a run's lease is broken)")
    compile: bool = _param()
    # data
    source: str = _param(choices=("synthetic", "imagenet", *DATASETS))
    target: str = _param(choices=("synthetic", *DATASETS))
    source_labels: list = _param(check=lambda v: all(isinstance(c, int) and c >= 0 for c in v),
                                 valid="a list of class indices >= 0 of the source data set ([]: all its classes)")
    target_labels: list = _param(check=lambda v: all(isinstance(c, int) and c >= 0 for c in v),
                                 valid="a list of class indices >= 0 of the target data set ([]: all its classes)")
    image_size: int = _param(check=lambda v: 8 <= v <= 512, valid="an integer in [8, 512]")
    source_classes: int = _param(check=lambda v: 2 <= v <= 1000, valid="an integer in [2, 1000]")
    source_train_per_class: int = _param(check=_positive, valid="an integer > 0")
    source_test_per_class: int = _param(check=_positive, valid="an integer > 0")
    target_train_per_class: int = _param(check=_positive, valid="an integer > 0")
    target_test_per_class: int = _param(check=_positive, valid="an integer > 0")
    imagenet_dir: str = _param(check=bool, valid="a folder, absolute or relative to the project's data/")
    datasets_dir: str = _param(check=bool, valid="a folder holding torchvision's layout (FashionMNIST/raw/, "
                                                 "cifar-10-batches-py/, ...), absolute or relative to the project's "
                                                 "data/ ('.' is data/ itself)")
    allow_download: bool = _param()
    # model
    arch: str = _param(check=bool, valid=ARCHS_VALID)
    width: int = _param(check=lambda v: 8 <= v <= 256,
                        valid="an integer in [8, 256] (the small-image archs' channels are width / 64 of torchvision's; "
                              "narrower layers hang oneDNN on CPU)")
    # more architectures: the same study on each (its own study <name>-<arch>), compared in notebook 06
    compare_archs: list = _param(check=lambda v: all(isinstance(a, str) and a for a in v),
                                 valid="a list of architectures other than arch (each " + ARCHS_VALID + "); [] for one")
    # the zoo arm: a folder of checkpoints with sidecars (minima.zoo); when set, they are the study's runs
    zoo: str = _param(valid="a folder of checkpoints with .yaml sidecars (docs/zoo.md), absolute or relative to "
                            "the project's data/; '' for the study's own pretraining runs")
    # pretraining
    methods: list = _param(choices=lambda: tuple(REGISTRY))  # the registered methods (minima.methods)
    pretrain_seeds: list = _param(check=lambda v: len(v) > 0 and all(
                                      isinstance(s, int) and s >= 0 for s in v),
                                  valid="a non-empty list of integers >= 0")
    pretrain_epochs: int = _param(check=_positive, valid="an integer > 0")
    batch_size: int = _param(check=_positive, valid="an integer > 0")
    lr: float = _param(check=_positive, valid="a number > 0")
    weight_decay: float = _param(check=_non_negative, valid="a number >= 0")
    lr_schedule: str = _param(choices=("constant", "cosine"))
    # evaluation subsets (landscape, robustness, transfer)
    eval_subset_per_class: int = _param(check=_positive,
                                        valid="an integer > 0 (images per class of the stratified train and test "
                                              "subsets used by landscape and robustness; the target test subset of "
                                              "finetuned robustness takes three times as many)")
    # landscape
    slice_steps: int = _param(check=lambda v: v >= 3, valid="an integer >= 3 (points on each slice)")
    slice_margin: float = _param(check=lambda v: 0 <= v <= 1, valid="a number in [0, 1] (t runs from -margin to 1 + margin)")
    bn_modes: list = _param(choices=BN_MODES)
    plane_steps: int = _param(check=lambda v: v >= 3, valid="an integer >= 3 (grid points per axis)")
    plane_margin: float = _param(check=lambda v: 0 <= v <= 1, valid="a number in [0, 1] (grid margin around the minima)")
    # curves between minima (minima.curves): every pair of the slices, batchnorm recomputed at every point
    curve_kinds: list = _param(choices=CURVE_KINDS)
    curve_epochs: int = _param(check=_positive, valid="an integer > 0 (passes over the source train set that fit each "
                                                      "curve's bend or trace the report's path)")
    curve_lr: float = _param(check=_positive, valid="a number > 0 (Adam's learning rate for a bend and the report's path)")
    curve_points: int = _param(check=lambda v: v >= 3, valid="an integer >= 3 (points evaluated along each path and "
                                                             "the line beside it, both ends included)")
    curve_distance_weight: float = _param(check=_positive,
                                          valid="a number > 0 (lambda of the report's path: nats per weight unit of "
                                                "distance to the second minimum)")
    curve_threshold: float = _param(check=_non_negative,
                                    valid="a number >= 0 (nats: a path whose train-loss barrier is below it "
                                          "connects its pair)")
    # robustness
    robustness_repeats: int = _param(check=_positive, valid="an integer > 0 (fresh noise / masks per strength)")
    noise_sigmas: list = _param(check=lambda v: _numbers(v) and min(v) >= 0,
                                valid="a non-empty list of numbers >= 0 (pixel scale 0-1)")
    mask_sizes: list = _param(check=lambda v: _numbers(v, int) and min(v) >= 0,
                              valid="a non-empty list of integers >= 0 (square side in pixels)")
    fgsm_eps: list = _param(check=lambda v: _numbers(v) and min(v) >= 0,
                            valid="a non-empty list of numbers >= 0 (FGSM's step, pixel scale 0-1)")
    pgd_eps: list = _param(check=lambda v: _numbers(v) and min(v) >= 0,
                           valid="a non-empty list of numbers >= 0 (PGD's L-infinity radius, pixel scale 0-1)")
    pgd_steps: int = _param(check=_positive, valid="an integer > 0")
    pgd_step_fraction: float = _param(check=_positive, valid="a number > 0 (PGD step size as a fraction of eps)")
    energy_sigmas: list = _param(check=lambda v: _numbers(v) and min(v) >= 0,
                                 valid="a non-empty list of numbers >= 0 (relative weight noise)")
    energy_repeats: int = _param(check=_positive, valid="an integer > 0")
    energy_include_bn: bool = _param()
    robustness_per_class: int = _param(check=_positive,
                                       valid="an integer > 0 (test images per class in each replicate of the "
                                             "robustness measures; the replicates are disjoint)")
    # flatness (Hessian and adaptive sharpness, on a stratified train subset per replicate, in batches)
    flatness_per_class: int = _param(check=_positive,
                                     valid="an integer > 0 (train images per class in each replicate of the flatness "
                                           "measures; the replicates are disjoint)")
    hessian_top_k: int = _param(check=_positive, valid="an integer > 0 (largest Hessian eigenvalues found by Lanczos)")
    hutchinson_probes: int = _param(check=lambda v: v >= 2,
                                    valid="an integer >= 2 (random probes of Hutchinson's Hessian trace estimate)")
    sharpness_rho_average: float = _param(check=_positive,
                                          valid="a number > 0 (sd of the weight noise of average-case adaptive "
                                                "sharpness, relative to |w|)")
    sharpness_rho_worst: float = _param(check=_positive,
                                        valid="a number > 0 (L-infinity radius of worst-case adaptive sharpness, "
                                              "relative to |w|)")
    sharpness_samples: int = _param(check=lambda v: v >= 2,
                                    valid="an integer >= 2 (weight-noise draws of average-case adaptive sharpness)")
    sharpness_steps: int = _param(check=_positive,
                                  valid="an integer > 0 (gradient-ascent steps of worst-case adaptive sharpness)")
    # every run-level measure (flatness, robustness) taken independently on disjoint images, with its own draws
    measure_replicates: int = _param(check=lambda v: v >= 2,
                                     valid="an integer >= 2 (independent measurements of each run: the property is "
                                           "their mean, their agreement its test-retest reliability)")
    # finetuning
    protocols: list = _param(choices=PROTOCOLS)
    finetune_seeds: list = _param(check=lambda v: _numbers(v, int) and min(v) >= 0,
                                  valid="a non-empty list of integers >= 0")
    finetune_epochs: int = _param(check=_positive, valid="an integer > 0")
    finetune_batch_size: int = _param(check=_positive, valid="an integer > 0")
    finetune_lr: float = _param(check=_positive, valid="a number > 0")
    finetune_weight_decay: float = _param(check=_non_negative, valid="a number >= 0")
    finetune_threshold: float = _param(check=_fraction, valid="a train accuracy in (0, 1]")
    partial_frozen_stages: int = _param(check=lambda v: 0 <= v <= 4, valid="an integer in [0, 4] (stem + layer1..4)")
    distance_every: int = _param(check=_positive, valid="an integer > 0 (optimizer steps between distance records)")
    # forgetting: the source linear probe, refitted on frozen features before and after finetuning
    probe_per_class: int = _param(check=_positive,
                                  valid="an integer > 0 (source train images per class the source linear probe is "
                                        "fitted on, a stratified draw; it is scored on the whole source test set)")
    # the one-knob arm: {method: {knob: [values]}}, every value x pretraining seed one more run
    sweeps: dict = _param(valid=SWEEPS_VALID)
    # the confirmatory question: primary hypotheses (minima.hypotheses), declared before the runs, one family
    primary: list = _param(check=lambda v: all(i in HYPOTHESES for i in v) and len(set(v)) == len(v),
                           valid=PRIMARY_VALID + ", none twice")
    # the registered methods' keys and values (not a key itself): see the class docstring
    knobs: dict = field(default_factory=dict, metadata=dict(knobs=True))

    @classmethod
    def load(cls, preset: str = "default", **overrides: Any) -> "Study":
        """The preset's study with the overrides applied, validated."""
        _refuse_renamed(overrides)
        values = read_preset(preset)
        values["preset"] = preset
        values["name"] = overrides.pop("name", None) or default_name(preset, overrides)
        unknown = sorted(set(overrides) - set(field_names()))
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r}; valid keys: {', '.join(field_names())}")
        values.update(overrides)
        return cls.from_dict(values)

    @classmethod
    def stored(cls, name: str) -> "Study":
        """The study stored under the outputs folder as `name` (its study.yaml), as it was run."""
        path = paths.outputs_dir() / name / "study.yaml"
        if not path.is_file():
            raise ConfigError(f"no stored study {name!r}: {path} does not exist (make study writes it)")
        return cls.from_dict(yaml.safe_load(path.read_text()))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Study":
        """Validate a complete mapping of keys to values and build the study."""
        _refuse_renamed(values, values.get("preset"))
        names = field_names()
        missing = [f.name for f in _key_fields() if f.name not in values]
        if missing:
            raise ConfigError(f"missing key {missing[0]!r} in preset {values.get('preset')!r}")
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r}; valid keys: {', '.join(names)}")
        keys = {f.name: _validated(f.name, f.type, f.metadata, values[f.name]) for f in _key_fields()}
        knobs = {k: _validated_knob(k, knob, values.get(k, knob.default)) for k, knob in all_knobs().items()}
        study = cls(**{**keys, "sweeps": _validated_sweeps(keys["sweeps"])}, knobs=knobs)
        for check in COMBINATION_CHECKS:
            check(study)
        return study

    def __getattr__(self, name: str) -> Any:
        """A method's key, read like any other (`study.noise_sigma`)."""
        knobs = self.__dict__.get("knobs", {})
        if name in knobs:
            return knobs[name]
        raise AttributeError(f"Study has no key {name!r}")

    def fingerprint(self, *keys: str) -> str:
        """A short hash of the given keys' values: the cache key of what they produce."""
        values = {k: getattr(self, k) for k in sorted(keys)}
        if values.get("zoo"):  # the folder's content, not only its name
            values["zoo"] = [self.zoo, paths.folder_digest(paths.resolve_data_path(self.zoo))]
        payload = json.dumps(values, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:10]

    def n_classes(self, which: str) -> int:
        """Classes of the source or target task: a torchvision set's label list (all its classes when
        empty), else source_classes for the source and the synthetic target's ten."""
        kind, labels = (self.source, self.source_labels) if which == "source" else (self.target, self.target_labels)
        if kind in DATASETS:
            return len(labels) or DATASETS[kind].n_classes
        return self.source_classes if which == "source" else TARGET_CLASSES

    def as_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain values, one entry per key (methods' keys included)."""
        return copy.deepcopy({name: getattr(self, name) for name in field_names()})

    @property
    def output_dir(self) -> Path:
        """Where this study's notebooks, tables and figures go."""
        return paths.outputs_dir() / self.name

    def save(self) -> Path:
        """Write the resolved configuration next to the study's outputs."""
        from minima import store

        path = self.output_dir / "study.yaml"
        store.write_text(path, yaml.safe_dump(self.as_dict(), sort_keys=False))
        return path

    def describe(self) -> "pd.DataFrame":
        """The resolved configuration as a table (key, value), for the top of every notebook."""
        import pandas as pd

        return pd.DataFrame({"key": field_names(), "value": [repr(getattr(self, n)) for n in field_names()]})


def field_names() -> list[str]:
    """Every config key: the study's own, then the registered methods' keys."""
    return [f.name for f in _key_fields()] + list(all_knobs())


def _key_fields() -> list[dataclasses.Field]:
    return [f for f in fields(Study) if not f.metadata.get("knobs")]


def _refuse_renamed(values: dict[str, Any], preset: str | None = None) -> None:
    """An old key name (RENAMED) is an error that names the new key and what it sets."""
    for old, new in RENAMED.items():
        if old in values:
            valid = next(f.metadata["valid"] for f in _key_fields() if f.name == new)
            where = f" in preset {preset!r}" if preset else ""
            raise ConfigError(f"{old}{where} was renamed {new}: {valid}; use {new}={values[old]}")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def read_preset(preset: str) -> dict[str, Any]:
    """The raw values of a preset YAML."""
    path = PRESETS_DIR / f"{preset}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {preset!r}; valid presets: {', '.join(preset_names())}")
    return yaml.safe_load(path.read_text())


def default_name(preset: str, overrides: dict[str, Any]) -> str:
    """The preset's name, plus a hash of the overrides so that variants get their own folder
    (overrides of how the study runs, such as the executor, share the preset's folder)."""
    overrides = {k: v for k, v in overrides.items() if k not in EXECUTION_KEYS}
    if not overrides:
        return preset
    digest = hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()
    return f"{preset}-{digest[:8]}"


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` strings (values in YAML syntax) into a dict."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. pretrain_epochs=3)")
        if key.strip() == "preset":
            raise ConfigError(f"override {item!r}: the preset is chosen with --preset, not as an override; "
                              f"valid presets: {', '.join(preset_names())}")
        try:
            out[key.strip()] = _number_or_value(yaml.safe_load(raw))
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from None
    return out


def _number_or_value(value: Any) -> Any:
    """YAML 1.1 reads `1e-3` as a string; read it as the number a user meant."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               list: "a list", dict: "a mapping"}


def _validated(name: str, kind: Any, meta: Any, value: Any) -> Any:
    """`value` of key `name`, checked against its type (given by name or as a type) and its metadata."""
    kind = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}.get(str(kind), kind)
    if kind is str and value is None:  # `scheduler=` on the command line
        value = ""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{name}={value!r} has the wrong type; expected {_TYPE_NAMES[kind]}")
    if name == "name" and not value.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"name={value!r} is not valid; expected {meta['valid']}")
    choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
    if choices:
        items = value if kind is list else [value]
        bad = [v for v in items if v not in choices]
        if bad or (kind is list and not items):
            shown = bad[0] if bad else value
            raise ConfigError(f"{name}={shown!r} is not valid; choose from {', '.join(choices)}")
    if meta["check"] is not None and not meta["check"](value):
        raise ConfigError(f"{name}={value!r} is out of range; expected {meta['valid']}")
    return value


def _validated_knob(name: str, knob: Knob, value: Any) -> Any:
    """A method's key, checked like any other; its type is its default's."""
    return _validated(name, type(knob.default), dict(check=knob.check, valid=knob.valid, choices=None), value)


def _validated_sweeps(sweeps: dict) -> dict:
    """The `sweeps` key with each value checked like its knob (numbers made the knob's type)."""
    out = {}
    for method, knobs in sweeps.items():
        if method not in REGISTRY:
            raise ConfigError(f"sweeps: unknown method {method!r}; valid methods: {', '.join(REGISTRY)}")
        own = REGISTRY[method].knobs
        if not isinstance(knobs, dict) or not knobs:
            raise ConfigError(f"sweeps.{method}={knobs!r} is not valid; expected a mapping {{knob: [values]}} "
                              f"of {method}'s knobs: {', '.join(own) or 'none'}")
        out[method] = {name: _sweep_values(f"sweeps.{method}.{name}", method, name, values)
                       for name, values in knobs.items()}
    return out


def _sweep_values(where: str, method: str, name: str, values: Any) -> list:
    """One knob's sweep values, each valid for the knob, distinct and at least MIN_SWEEP_VALUES of them."""
    own = REGISTRY[method].knobs
    if name not in own:
        raise ConfigError(f"{where}: {name!r} is not a knob of {method}; its knobs: {', '.join(own) or 'none'}")
    if type(own[name].default) not in (int, float):
        raise ConfigError(f"{where}: {name} is not a number knob (its default is {own[name].default!r}); "
                          "a sweep orders its values")
    if not isinstance(values, list) or len(values) < MIN_SWEEP_VALUES:
        raise ConfigError(f"{where}={values!r} is not valid; expected a list of at least {MIN_SWEEP_VALUES} values")
    checked = []
    for v in values:
        try:
            checked.append(_validated_knob(name, own[name], v))
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
    repeated = [v for i, v in enumerate(checked) if v in checked[:i]]
    if repeated:
        raise ConfigError(f"{where}={values!r} repeats {repeated[0]!r}; every value must be unique")
    return checked


# ---------------------------------------------------------------- checks across keys
# Each runs on a study whose keys are valid one by one, and catches a combination that would
# otherwise fail (or quietly measure nothing) minutes into a run.

def _unique_entries(s: Study) -> None:
    """Repeated entries make repeated job keys (seeds, methods, protocols) or count one strength twice."""
    for key, noun in LIST_NOUNS.items():
        values = getattr(s, key)
        repeated = [v for i, v in enumerate(values) if v in values[:i]]
        if repeated:
            raise ConfigError(f"{key}={values!r} repeats {repeated[0]!r}; every {noun} must be unique")


def _clean_reference(s: Study) -> None:
    """Robustness summaries normalise each curve by its value at the smallest strength, meant to be 0."""
    for key in STRENGTHS:
        values = getattr(s, key)
        if 0 not in values:
            raise ConfigError(f"{key}={values!r} lacks 0; include 0, the clean reference each robustness "
                              "curve is normalised by")
        if max(values) == 0:
            raise ConfigError(f"{key}={values!r} has no strength above 0; add at least one value > 0")


def _masks_fit(s: Study) -> None:
    biggest = max(s.mask_sizes)
    if biggest > s.image_size:
        raise ConfigError(f"mask_sizes={s.mask_sizes!r}: {biggest} is larger than image_size={s.image_size}; "
                          "a mask side must be at most image_size")


def _eval_subset_fits(s: Study) -> None:
    """The subsets are stratified draws of up to eval_subset_per_class images: a larger value is quietly cut."""
    for split in ("train", "test"):
        available = getattr(s, f"source_{split}_per_class")
        if s.eval_subset_per_class > available:
            raise ConfigError(f"eval_subset_per_class={s.eval_subset_per_class} is larger than "
                              f"source_{split}_per_class={available} (it sizes the stratified train and test "
                              f"subsets); valid: at most "
                              f"{min(s.source_train_per_class, s.source_test_per_class)}")


def _flatness_subset_fits(s: Study) -> None:
    """The flatness replicates are disjoint stratified draws of flatness_per_class train images per class each:
    more than the train set holds would be quietly cut."""
    _replicates_fit(s, "flatness_per_class", "source_train_per_class")


def _robustness_subset_fits(s: Study) -> None:
    """The robustness replicates are disjoint stratified draws of robustness_per_class test images per class each."""
    _replicates_fit(s, "robustness_per_class", "source_test_per_class")


def _replicates_fit(s: Study, key: str, available_key: str) -> None:
    per_class, available, replicates = getattr(s, key), getattr(s, available_key), s.measure_replicates
    if per_class * replicates > available:
        raise ConfigError(f"{key}={per_class} x measure_replicates={replicates} disjoint replicates needs "
                          f"{per_class * replicates} images per class, more than {available_key}={available}; "
                          f"valid: {key} at most {available // replicates}")


def _probe_subset_fits(s: Study) -> None:
    """The probe's train images are a stratified draw of up to probe_per_class per class: more is quietly cut."""
    if s.probe_per_class > s.source_train_per_class:
        raise ConfigError(f"probe_per_class={s.probe_per_class} is larger than source_train_per_class="
                          f"{s.source_train_per_class} (it sizes the source linear probe's train subset); "
                          f"valid: at most {s.source_train_per_class}")


def _report_path_fits(s: Study) -> None:
    """The report's path keeps curve_points - 1 of its optimisation steps as nodes: fewer steps would repeat nodes."""
    steps = s.curve_epochs * steps_per_epoch(s.n_classes("source") * s.source_train_per_class, s.batch_size)
    if "report" in s.curve_kinds and steps < s.curve_points - 2:
        raise ConfigError(f"curve_points={s.curve_points} needs {s.curve_points - 2} optimisation steps of the report's "
                          f"path, but curve_epochs={s.curve_epochs} gives {steps}; valid: curve_points at most "
                          f"{steps + 2}, or more curve_epochs")


def _synthetic_vocabulary(s: Study) -> None:
    """A synthetic task takes its classes from one vocabulary: the source's first, then the target's ten."""
    if "synthetic" in (s.source, s.target) and s.source_classes + TARGET_CLASSES > SYNTHETIC_CLASSES:
        raise ConfigError(f"source_classes={s.source_classes}: the synthetic vocabulary has {SYNTHETIC_CLASSES} "
                          f"classes, {TARGET_CLASSES} of them kept for the target; valid with synthetic data: "
                          f"at most {SYNTHETIC_CLASSES - TARGET_CLASSES}")


def _labels_fit(s: Study) -> None:
    """Class lists name classes the data set has, per-class sizes fit its smallest class, and the source's
    class count is its list's: a larger ask would quietly give fewer images or classes."""
    for which in ("source", "target"):
        kind, labels = getattr(s, which), getattr(s, f"{which}_labels")
        if kind not in DATASETS:
            if labels:
                raise ConfigError(f"{which}_labels={labels!r} is for torchvision's data sets ({', '.join(DATASETS)}); "
                                  f"with {which}={kind} set {which}_labels=[]")
            continue
        ds = DATASETS[kind]
        outside = [c for c in labels if c >= ds.n_classes]
        if outside:
            raise ConfigError(f"{which}_labels: class {outside[0]} is not in {ds.title}; valid: 0 to {ds.n_classes - 1}")
        for split in ("train", "test"):
            asked, available = getattr(s, f"{which}_{split}_per_class"), getattr(ds, f"{split}_per_class")
            if asked > available:
                raise ConfigError(f"{which}_{split}_per_class={asked} is more than {ds.title}'s smallest class has in "
                                  f"its {split} split; valid with {which}={kind}: at most {available}")
    if s.source in DATASETS and s.source_classes != s.n_classes("source"):
        raise ConfigError(f"source_classes={s.source_classes} but source={s.source} with source_labels="
                          f"{s.source_labels!r} has {s.n_classes('source')} classes; set source_classes="
                          f"{s.n_classes('source')}")
    if s.source == s.target and s.source in DATASETS:
        shared = sorted(set(s.source_labels or range(DATASETS[s.source].n_classes))
                        & set(s.target_labels or range(DATASETS[s.target].n_classes)))
        if shared:
            raise ConfigError(f"source and target are both {s.source} and share class {shared[0]}; give "
                              "source_labels and target_labels disjoint class lists")


def _method_problems(s: Study) -> None:
    """Each method's own check of the study (`Method.problem` in minima.methods)."""
    for method in s.methods:
        problem = REGISTRY[method].problem(s)
        if problem:
            raise ConfigError(problem)


def _sweep_problems(s: Study) -> None:
    """Each sweep value must make a study its method can run (`Method.problem` with that one knob changed)."""
    for method, knobs in s.sweeps.items():
        for name, values in knobs.items():
            for v in values:
                problem = REGISTRY[method].problem(dataclasses.replace(s, methods=[method], knobs={**s.knobs, name: v}))
                if problem:
                    raise ConfigError(f"sweeps.{method}.{name}: value {v!r}: {problem}")


def _distance_recorded(s: Study) -> None:
    """Distances are recorded every distance_every steps: with none, every run reports distance 0."""
    steps = s.finetune_epochs * steps_per_epoch(s.n_classes("target") * s.target_train_per_class, s.finetune_batch_size)
    if s.distance_every > steps:
        raise ConfigError(f"distance_every={s.distance_every} is more than the {steps} optimizer steps of finetuning "
                          f"(finetune_epochs={s.finetune_epochs}); no distance would be recorded; valid: at most {steps}")


def _partial_freezes(s: Study) -> None:
    """`partial` freezes ResNet stages: it needs some, and an architecture that has them."""
    if "partial" not in s.protocols:
        return
    if s.partial_frozen_stages == 0:
        raise ConfigError("partial_frozen_stages=0 freezes nothing, so protocol 'partial' would repeat 'full'; "
                          "valid with partial in protocols: an integer in [1, 4]")
    stageless = [a for a in (s.arch, *s.compare_archs) if not s.zoo and not _has_stages(a, s.width)]
    if stageless:
        raise ConfigError(f"protocols={s.protocols!r}: 'partial' freezes ResNet stages, which arch={stageless[0]!r} "
                          "lacks; valid for it: full, linear_probe")


def _scheduler_needs_dask(s: Study) -> None:
    """Only the dask executor reads the scheduler: with local, it would be ignored without a word."""
    if s.scheduler and s.executor != "dask":
        raise ConfigError(f"scheduler={s.scheduler!r} is used only with executor=dask (executor={s.executor!r}); "
                          "set executor=dask, or scheduler= (empty) to run here")


def _zoo_alone(s: Study) -> None:
    """A zoo's runs are the study's: its own knob arm comes from the checkpoints' numbers, not from sweeps."""
    if not s.zoo:
        return
    where = paths.resolve_data_path(s.zoo)
    if not where.is_dir():
        raise ConfigError(f"zoo={s.zoo!r}: no folder {where}; valid: a folder of checkpoints with .yaml sidecars "
                          "(absolute or relative to the project's data/), or '' for the study's own runs")
    if s.sweeps:
        raise ConfigError(f"zoo={s.zoo!r} with sweeps={s.sweeps!r}: a zoo's one-knob arm is its checkpoints' numbers; "
                          "set sweeps={}")


def _archs_build(s: Study) -> None:
    """Every architecture is known and takes the study's images: one forward pass of a blank image, once per
    (arch, width, image size); the small-image archs take any image_size this config accepts without it."""
    if s.arch in s.compare_archs:
        raise ConfigError(f"compare_archs={s.compare_archs!r} repeats arch={s.arch!r}; list only the other "
                          "architectures")
    if s.compare_archs and s.zoo:
        raise ConfigError(f"compare_archs={s.compare_archs!r} with zoo={s.zoo!r}: a zoo's checkpoints name their own "
                          "architectures; set compare_archs=[]")
    for arch in (s.arch, *s.compare_archs):
        if arch not in SMALL_ARCHS:
            problem = _arch_problem(arch, s.n_classes("source"), s.width, s.image_size)
            if problem:
                raise ConfigError(problem)


@functools.lru_cache(maxsize=None)
def _arch_problem(arch: str, n_classes: int, width: int, image_size: int) -> str:
    from minima import archs  # only now: a study of the small-image archs validates without importing torch

    return archs.arch_problem(arch) or archs.input_problem(arch, n_classes, width, image_size)


@functools.lru_cache(maxsize=None)
def _has_stages(arch: str, width: int) -> bool:
    from minima import archs

    return archs.has_stages(archs.build_model(arch, 2, width))


def _device_available(s: Study) -> None:
    """A GPU the study runs on here must exist; remote Dask workers may have one the driver lacks."""
    if s.device not in ("cuda", "mps") or (s.executor == "dask" and s.scheduler):
        return
    import torch  # only now: a config without a GPU device never pays for importing torch

    available = torch.cuda.is_available() if s.device == "cuda" else torch.backends.mps.is_available()
    if not available:
        raise ConfigError(f"device={s.device!r} is not available on this machine; valid here: auto, cpu")


COMBINATION_CHECKS: tuple[Callable[[Study], None], ...] = (
    _unique_entries, _clean_reference, _masks_fit, _eval_subset_fits, _flatness_subset_fits, _probe_subset_fits,
    _robustness_subset_fits, _report_path_fits, _synthetic_vocabulary,
    _labels_fit, _method_problems, _sweep_problems, _distance_recorded, _zoo_alone, _archs_build, _partial_freezes,
    _scheduler_needs_dask, _device_available)


# keys that change nothing cached, beside EXECUTION_KEYS (tests/test_cache_keys.py: every other key is in the key
# tuple of a cached table or run)
UNCACHED_KEYS = (
    "allow_download",  # where the data come from, not what they are: a download and a local copy are the same files
    "compare_archs",  # each other architecture is a study of its own (<name>-<arch>), its arch in its own caches' keys
    "sweeps",  # each sweep point is a study of its own (knobs/<method>-<knob>-<value>), its knob in its caches' keys
    "primary",  # which verdicts form the confirmatory family: the findings page reads it, nothing cached depends on it
)
