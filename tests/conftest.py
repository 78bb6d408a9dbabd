"""Shared fixtures: the shared data folder beside the checkout and a writable weights home."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = SHARED / "data"
REF = DATA / "totalseg_reference"
ORACLE = DATA / "oracle_tiny"


def _copy_home(dst: Path) -> Path:
    src = DATA / "fake_weights_tiny"
    if not src.is_dir():
        pytest.skip("../shared/data/fake_weights_tiny is not available")
    shutil.copytree(src, dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    return dst


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """No test ever reaches the internet: weights downloads go to a port where nothing listens."""
    from weights_server import closed_port_url

    monkeypatch.setenv("TOTALSEG_WEIGHTS_URL", closed_port_url())


@pytest.fixture(scope="session")
def fake_home(tmp_path_factory) -> Path:
    """A copy of the random-weights home, shared by the whole session (models load once)."""
    return _copy_home(tmp_path_factory.mktemp("home") / "home")


@pytest.fixture
def use_home(fake_home, monkeypatch) -> Path:
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(fake_home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    return fake_home
