"""The environment the tests run in is the one requirements.lock describes, package for package."""
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"


def locked_versions() -> dict[str, Version]:
    """The lock's pins that apply to this interpreter and platform (markers evaluated)."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            (spec,) = req.specifier
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def installed_versions() -> dict[str, Version]:
    return {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in metadata.distributions()}


def test_every_installed_package_is_the_locked_version_and_nothing_else_is_installed():
    locked, installed = locked_versions(), installed_versions()
    installed.pop("minima")
    # torch's wheels carry their build in the local label (2.15.0+cu132, 2.15.0+cpu): the lock
    # pins the release, and either build of it is the same release
    differ = {n: (str(installed.get(n)), str(v)) for n, v in locked.items()
              if n not in installed or installed[n].public != v.public}
    assert not differ, f"installed (left) differs from requirements.lock (right); run `make setup`: {differ}"
    extra = sorted(set(installed) - set(locked))
    assert not extra, f"installed but not in requirements.lock: {extra}"
