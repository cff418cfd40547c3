import pytest

from minima.config import Study


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """Every test writes outputs and data caches into its own temporary folders."""
    monkeypatch.setenv("MINIMA_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("MINIMA_DATA", str(tmp_path / "data"))
    return tmp_path


@pytest.fixture
def tiny() -> Study:
    return Study.load("tiny")
