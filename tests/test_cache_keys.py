"""A guard on the cache keys: every config key is in the key of what it changes, or says why it changes nothing cached.

The key tuples are found, not listed again here: the library names each one as a module-level constant `KEYS` or
`*_KEYS` (tables.py composes every table's key from them, the run folders and the measures stored in them theirs),
and a pretraining run's folder adds its method's own knobs (`Method.knobs`), checked on the folder itself below.
"""
import dataclasses
import importlib
import pkgutil

import pytest

import minima
from minima import config, methods, pretraining, zoo
from minima.config import Study

# module-level *_KEYS tuples that are not cache keys: how a study runs, keys declared uncached, a sidecar's fields
NOT_CACHE_KEYS = (config.EXECUTION_KEYS, config.UNCACHED_KEYS, zoo.SIDECAR_KEYS)


def key_tuples() -> dict[str, tuple[str, ...]]:
    """Every cache key tuple of the library by `module.NAME`, and each method's knobs (`methods.<method>`)."""
    found = {f"methods.{m}": tuple(method.knobs) for m, method in methods.REGISTRY.items()}
    for info in pkgutil.iter_modules(minima.__path__):
        module = importlib.import_module(f"minima.{info.name}")
        found.update({f"{info.name}.{name}": value for name, value in vars(module).items()
                      if (name == "KEYS" or name.endswith("_KEYS")) and isinstance(value, tuple)
                      and value not in NOT_CACHE_KEYS})
    return found


def changed(study: Study, key: str) -> Study:
    """`study` with `key` set to another value of its type (not validated: a fingerprint takes any value)."""
    value = getattr(study, key)
    other = (not value if isinstance(value, bool) else value + 1 if isinstance(value, (int, float))
             else value + "-other" if isinstance(value, str) else [*value, "other"] if isinstance(value, list)
             else {**value, "other": {}})
    if key in study.knobs:
        return dataclasses.replace(study, knobs={**study.knobs, key: other})
    return dataclasses.replace(study, **{key: other})


def test_every_config_key_is_a_cache_key_or_declared_uncached():
    used = {k for keys in key_tuples().values() for k in keys}
    declared = set(config.EXECUTION_KEYS) | set(config.UNCACHED_KEYS)
    missing = [k for k in config.field_names() if k not in used | declared]
    assert not missing, (f"config keys in no cache key: {missing}; add each to the *_KEYS tuple of what it changes, "
                         "or to config.UNCACHED_KEYS with the reason it changes nothing cached")
    assert not used & declared, f"declared uncached but in a cache key: {sorted(used & declared)}"
    assert declared <= set(config.field_names()), f"declared, but no config key: {declared - set(config.field_names())}"
    unknown = {name: [k for k in keys if k not in config.field_names()] for name, keys in key_tuples().items()}
    assert not any(unknown.values()), f"key tuples naming no config key: { {n: u for n, u in unknown.items() if u} }"


@pytest.mark.parametrize("name", sorted(key_tuples()))
def test_changing_any_key_of_a_key_tuple_changes_its_fingerprint(name, tiny):
    keys = key_tuples()[name]
    same = [k for k in keys if changed(tiny, k).fingerprint(*keys) == tiny.fingerprint(*keys)]
    assert not same, f"{name}: changing {same} leaves the fingerprint as it was"


def test_a_pretraining_runs_folder_changes_with_each_knob_of_its_method(tiny):
    for m, method in methods.REGISTRY.items():
        for knob in method.knobs:
            assert pretraining.pretrain_run(changed(tiny, knob), m, 0) != pretraining.pretrain_run(tiny, m, 0), knob
