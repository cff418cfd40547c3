"""The study's configuration: a preset YAML plus overrides, validated before any work."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from minima import paths

if TYPE_CHECKING:
    import pandas as pd

PRESETS_DIR = Path(__file__).parent / "presets"
METHODS = ("adam", "noisy_adam", "swa")
BN_MODES = ("interpolate", "keep", "recompute")
PROTOCOLS = ("full", "linear_probe", "partial")
EXECUTORS = ("local", "dask")
# how a study runs, not what it computes: no cache key, run folder or study name depends on them
EXECUTION_KEYS = ("name", "preset", "device", "executor", "scheduler", "workers", "threads", "claim_timeout",
                  "compile")


class ConfigError(ValueError):
    """A preset or an override that does not describe a valid study."""


def _param(default: Any = None, *, check: Callable[[Any], bool] | None = None,
           valid: str = "", choices: tuple | None = None) -> Any:
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
    """Every knob of one study; a preset YAML gives all of them, overrides change some."""

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
    claim_timeout: float = _param(check=_positive,
                                  valid="a number > 0 (seconds without a heartbeat before a run's claim is broken)")
    compile: bool = _param()
    # data
    source: str = _param(choices=("synthetic", "imagenet"))
    target: str = _param(choices=("synthetic", "cifar10"))
    image_size: int = _param(check=lambda v: 8 <= v <= 512, valid="an integer in [8, 512]")
    source_classes: int = _param(check=lambda v: 2 <= v <= 1000, valid="an integer in [2, 1000]")
    source_train_per_class: int = _param(check=_positive, valid="an integer > 0")
    source_test_per_class: int = _param(check=_positive, valid="an integer > 0")
    target_train_per_class: int = _param(check=_positive, valid="an integer > 0")
    target_test_per_class: int = _param(check=_positive, valid="an integer > 0")
    imagenet_dir: str = _param(valid="a folder, absolute or relative to the project's data/")
    cifar_dir: str = _param(valid="a folder, absolute or relative to the project's data/")
    allow_download: bool = _param()
    # model
    arch: str = _param(choices=("resnet18", "resnet18_small"))
    width: int = _param(check=lambda v: 8 <= v <= 256,
                        valid="an integer in [8, 256] (64 = torchvision; narrower layers hang oneDNN on CPU)")
    # pretraining
    methods: list = _param(choices=METHODS)
    pretrain_seeds: list = _param(check=lambda v: len(v) > 0 and all(
                                      isinstance(s, int) and s >= 0 for s in v),
                                  valid="a non-empty list of integers >= 0")
    pretrain_epochs: int = _param(check=_positive, valid="an integer > 0")
    batch_size: int = _param(check=_positive, valid="an integer > 0")
    lr: float = _param(check=_positive, valid="a number > 0")
    weight_decay: float = _param(check=_non_negative, valid="a number >= 0")
    lr_schedule: str = _param(choices=("constant", "cosine"))
    noise_sigma: float = _param(check=_non_negative, valid="a number >= 0 (pixel scale 0-1)")
    swa_threshold: float = _param(check=_fraction, valid="a train accuracy in (0, 1]")
    swa_lr: float = _param(check=_positive, valid="a number > 0")
    swa_anneal_epochs: int = _param(check=_non_negative, valid="an integer >= 0")
    swa_epochs: int = _param(check=_positive, valid="an integer > 0")
    swa_every: int = _param(check=_positive, valid="an integer > 0 (optimizer steps between averages)")
    # evaluation subsets (landscape, robustness)
    eval_train_per_class: int = _param(check=_positive,
                                       valid="an integer > 0 (images per class of the stratified train and test subsets)")
    # landscape
    slice_steps: int = _param(check=lambda v: v >= 3, valid="an integer >= 3 (points on each slice)")
    slice_margin: float = _param(check=lambda v: 0 <= v <= 1, valid="a number in [0, 1] (t runs from -margin to 1 + margin)")
    bn_modes: list = _param(choices=BN_MODES)
    plane_steps: int = _param(check=lambda v: v >= 3, valid="an integer >= 3 (grid points per axis)")
    plane_margin: float = _param(check=lambda v: 0 <= v <= 1, valid="a number in [0, 1] (grid margin around the minima)")
    # robustness
    robustness_repeats: int = _param(check=_positive, valid="an integer > 0 (fresh noise / masks per strength)")
    noise_sigmas: list = _param(check=lambda v: _numbers(v) and min(v) >= 0,
                                valid="a non-empty list of numbers >= 0 (pixel scale 0-1)")
    mask_sizes: list = _param(check=lambda v: _numbers(v, int) and min(v) >= 0,
                              valid="a non-empty list of integers >= 0 (square side in pixels)")
    fgsm_eps: list = _param(check=lambda v: _numbers(v) and min(v) >= 0,
                            valid="a non-empty list of numbers >= 0 (pixel scale 0-1)")
    pgd_steps: int = _param(check=_positive, valid="an integer > 0")
    pgd_step_fraction: float = _param(check=_positive, valid="a number > 0 (PGD step size as a fraction of eps)")
    energy_sigmas: list = _param(check=lambda v: _numbers(v) and min(v) >= 0,
                                 valid="a non-empty list of numbers >= 0 (relative weight noise)")
    energy_repeats: int = _param(check=_positive, valid="an integer > 0")
    energy_include_bn: bool = _param()
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

    @classmethod
    def load(cls, preset: str = "default", **overrides: Any) -> "Study":
        """The preset's study with the overrides applied, validated."""
        values = read_preset(preset)
        values["preset"] = preset
        values["name"] = overrides.pop("name", None) or default_name(preset, overrides)
        unknown = sorted(set(overrides) - set(field_names()))
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r}; valid keys: {', '.join(field_names())}")
        values.update(overrides)
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Study":
        """Validate a complete mapping of keys to values and build the study."""
        names = field_names()
        missing = [n for n in names if n not in values]
        if missing:
            raise ConfigError(f"missing key {missing[0]!r} in preset {values.get('preset')!r}")
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r}; valid keys: {', '.join(names)}")
        for f in fields(cls):
            values[f.name] = _validated(f, values[f.name])
        return cls(**values)

    def fingerprint(self, *keys: str) -> str:
        """A short hash of the given keys' values: the cache key of what they produce."""
        payload = json.dumps({k: getattr(self, k) for k in sorted(keys)}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:10]

    def as_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain values."""
        return dataclasses.asdict(self)

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

    def table_path(self, name: str) -> Path:
        """Where the study's table `name` is stored (CSV)."""
        return self.output_dir / "tables" / f"{name}.csv"

    def cached(self, name: str, compute: Callable[[], "pd.DataFrame"], keys: tuple[str, ...] = ()) -> "pd.DataFrame":
        """The study's table `name`, recomputed when the config keys it depends on change."""
        from minima import store

        keys = keys or tuple(k for k in field_names() if k not in EXECUTION_KEYS)
        path = self.table_path(name)
        stamp = path.with_suffix(".key")
        key = self.fingerprint(*keys)
        if path.is_file() and stamp.is_file() and stamp.read_text() == key:
            return store.read_table(path)
        table = compute()
        store.write_table(path, table)
        store.write_text(stamp, key)
        return table

    def describe(self) -> "pd.DataFrame":
        """The resolved configuration as a table (key, value), for the top of every notebook."""
        import pandas as pd

        return pd.DataFrame({"key": field_names(), "value": [repr(getattr(self, n)) for n in field_names()]})


def field_names() -> list[str]:
    return [f.name for f in fields(Study)]


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
               list: "a list"}


def _validated(f: dataclasses.Field, value: Any) -> Any:
    kind = {"int": int, "float": float, "str": str, "bool": bool, "list": list}[str(f.type)]
    if kind is str and value is None:  # `scheduler=` on the command line
        value = ""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{f.name}={value!r} has the wrong type; expected {_TYPE_NAMES[kind]}")
    meta = f.metadata
    if f.name == "name" and not value.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"name={value!r} is not valid; expected {meta['valid']}")
    choices = meta["choices"]
    if choices:
        items = value if kind is list else [value]
        bad = [v for v in items if v not in choices]
        if bad or (kind is list and not items):
            shown = bad[0] if bad else value
            raise ConfigError(f"{f.name}={shown!r} is not valid; choose from {', '.join(choices)}")
    if meta["check"] is not None and not meta["check"](value):
        raise ConfigError(f"{f.name}={value!r} is out of range; expected {meta['valid']}")
    return value
