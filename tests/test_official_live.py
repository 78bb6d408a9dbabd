"""Same machine, same torch: our output IS the official TotalSegmentator 2.18.0's, voxel for voxel.

The stored oracle (tests/test_parity.py) was made on another CPU, and the official tool's own output differs
across CPUs at a few near-tie voxels, so it is held within a near-tie tolerance (tests/parity.py). This test
makes the bit-for-bit claim where it can hold: it runs the official tool on this machine, with the torch this
environment has, and compares 0 differing voxels.

The official tool lives in a venv made once per machine by bench/official_env.sh, kept in a cache folder
(``$TOTALSEG_OFFICIAL_VENV``, default ``~/.cache/totalseg/official-2.18.0-torch<version>-py<X.Y>``; the
first run needs a package registry and 2-3 minutes). The venv reuses this environment's torch
(``--system-site-packages``) and installs everything else into itself: nothing is installed into, or removed
from, the environment that runs the tests. Without a reachable registry the test is skipped.
Run alone with ``python3 -m pytest -q -m official``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from conftest import ORACLE, REF, _copy_home
from parity import EXACT, assert_output_parity
from totalseg.cli.totalsegmentator import main
from totalseg.write.labelmap import load_multilabel_nifti

pytestmark = pytest.mark.official

OFFICIAL_VERSION = "2.18.0"
ROOT = Path(__file__).resolve().parents[1]
# Quick core cases (about a minute each on 2 cores, both tools): a CT model at 3 mm, the 6 mm model on the
# large CT, and the MR model.
LIVE_CASES = ["fast_ml", "fastest_ml", "total_mr_ml"]
OFFLINE = 75  # official_env.sh: no registry holds the official package


def _torch_version() -> str:
    return version("torch").split("+")[0]


def _venv() -> Path:
    if os.environ.get("TOTALSEG_OFFICIAL_VENV"):
        return Path(os.environ["TOTALSEG_OFFICIAL_VENV"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    return cache / "totalseg" / f"official-{OFFICIAL_VERSION}-torch{_torch_version()}-py{py}"


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment, without what would make the venv's Python import from elsewhere."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def official_tool() -> Path:
    """The official ``TotalSegmentator`` command, with this environment's torch (made or reused)."""
    venv = _venv()
    env = _clean_env(TOTALSEG_OFFICIAL_VENV=str(venv), TOTALSEG_OFFICIAL_TORCH=_torch_version(),
                     PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "bench" / "official_env.sh")], env=env, capture_output=True,
                          text=True, timeout=3600)
    if proc.returncode == OFFLINE:
        pytest.skip(f"official TotalSegmentator {OFFICIAL_VERSION} cannot be installed: no package registry "
                    f"reachable ({proc.stderr.strip()[-300:]})")
    assert proc.returncode == 0, f"bench/official_env.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return venv / "bin" / "TotalSegmentator"


def _cases() -> list[dict]:
    if not (ORACLE / "cases.json").is_file():
        return []
    cases = {c["name"]: c for c in json.loads((ORACLE / "cases.json").read_text())}
    return [cases[name] for name in LIVE_CASES if name in cases]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["name"])
def test_same_as_official_on_this_machine(case, official_tool, use_home, tmp_path):
    theirs_dir, ours_dir = tmp_path / "official", tmp_path / "ours"
    theirs_dir.mkdir()
    ours_dir.mkdir()

    def args(out: Path) -> list[str]:
        return [a.replace("{ref}", str(REF)).replace("{out}", str(out)) for a in case["args"]] + ["-d", "cpu"]

    home = _copy_home(tmp_path / "official_home")  # a fresh home: the official tool writes its config there
    proc = subprocess.run([str(official_tool), *args(theirs_dir)], cwd=tmp_path, capture_output=True, text=True,
                          env=_clean_env(TOTALSEG_HOME_DIR=str(home)), timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert main(args(ours_dir) + ["-q"]) == 0

    name = case["args"][case["args"].index("-o") + 1].rsplit("/", 1)[1]
    assert_output_parity(ours_dir / name, theirs_dir / name, EXACT)
    if "--ml" in case["args"]:
        assert load_multilabel_nifti(ours_dir / name)[1] == load_multilabel_nifti(theirs_dir / name)[1]
