"""Weights that install safely: a real HTTP server on 127.0.0.1 serves zips built from the fake weights.

Every failure must leave the home exactly as it was, with one ERROR line and exit status 1.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import REF
from totalseg.cli import download_weights, import_weights, info, set_license
from totalseg.cli.totalsegmentator import main as run_main
from weights_server import (WEIGHTS, Route, build_zip, closed_port_url, snapshot, start_server, stop_server)

FASTEST = "Dataset298_TotalSegmentator_total_6mm_1559subj"  # the only model of `total --fastest`
BREASTS = "Dataset527_breasts_1559subj"  # the only model `totalseg_download_weights -t breasts` fetches
TISSUE = "Dataset481_tissue_1559subj"  # licensed: tissue_types
FAST = "Dataset297_TotalSegmentator_total_3mm_1559subj"
RELEASE = {FASTEST: "v2.0.0-weights", BREASTS: "v2.5.0-weights", FAST: "v2.0.0-weights"}
LICENCE = "aca_TESTLICENCE012"
EXAMPLE = REF / "example_ct_sm.nii.gz"


def _path(folder: str) -> str:
    return f"/{RELEASE[folder]}/{folder}.zip"


@pytest.fixture(scope="module")
def zips() -> dict[str, bytes]:
    return {f: build_zip(f) for f in (FASTEST, BREASTS, TISSUE, FAST)}


@pytest.fixture(scope="module")
def _server():
    state, httpd = start_server()
    yield state
    stop_server(state, httpd)


@pytest.fixture
def server(_server):
    _server.routes.clear()
    _server.seen.clear()
    _server.licences.clear()
    _server.licensed.clear()
    return _server


@pytest.fixture
def home(tmp_path, monkeypatch, server) -> Path:
    """An empty home whose weights come from the test server; quick timeouts and retries."""
    h = tmp_path / "home"
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(h))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.setenv("TOTALSEG_WEIGHTS_URL", server.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("TOTALSEG_DOWNLOAD_TIMEOUT", "5")
    monkeypatch.setenv("TOTALSEG_DOWNLOAD_RETRIES", "2")
    return h


def _weights(home: Path) -> Path:
    return home / "nnunet" / "results"


def _same_as_source(home: Path, folder: str) -> bool:
    src = snapshot(WEIGHTS / folder)
    return bool(src) and snapshot(_weights(home) / folder) == src


def _call(main, argv, capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def _assert_one_error_line(code: int, err: str, needle: str) -> None:
    assert code == 1
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and errors[0].startswith("ERROR: "), err
    assert err.rstrip("\n").splitlines()[-1] == errors[0], err
    assert needle.lower() in errors[0].lower(), err


def _run_fastest(out: Path, capsys, quiet: bool = True) -> tuple[int, str]:
    argv = ["-i", str(EXAMPLE), "-o", str(out), "-ta", "total", "--fastest", "--ml", "-d", "cpu"]
    return _call(run_main, argv + (["-q"] if quiet else []), capsys)


# --- a normal install, then a run ------------------------------------------------------------------------


def test_first_run_downloads_installs_and_segments(home, server, zips, tmp_path, monkeypatch, capsys, fake_home):
    server.routes[_path(FASTEST)] = Route(zips[FASTEST])
    out = tmp_path / "seg.nii.gz"
    code, err = _run_fastest(out, capsys, quiet=False)
    assert code == 0, err
    assert "Downloading" in err and "Installed" in err
    assert len(server.requests_for(_path(FASTEST))) == 1
    assert _same_as_source(home, FASTEST)
    assert sorted(p.name for p in _weights(home).iterdir()) == [FASTEST], "temporary files left in the home"

    seg = nib.load(out)
    ref = nib.load(EXAMPLE)
    assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine)
    labels = np.asanyarray(seg.dataobj)
    assert labels.any()

    # The downloaded model gives the same labels as the same weights installed by hand.
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(fake_home))
    expected_out = tmp_path / "expected.nii.gz"
    code, err = _run_fastest(expected_out, capsys)
    assert code == 0, err
    assert np.array_equal(labels, np.asanyarray(nib.load(expected_out).dataobj))

    # A second run finds the model and does not ask the server again.
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    code, err = _run_fastest(tmp_path / "again.nii.gz", capsys)
    assert code == 0, err
    assert len(server.seen) == 1


def test_incomplete_model_is_replaced_not_used(home, server, zips, monkeypatch, capsys):
    server.routes[_path(BREASTS)] = Route(zips[BREASTS])
    sub = next((WEIGHTS / BREASTS).iterdir()).name
    broken = _weights(home) / BREASTS / sub
    broken.mkdir(parents=True)
    (broken / "plans.json").write_text("{}")  # an interrupted extraction: no dataset.json, no checkpoint
    (_weights(home) / f".{BREASTS}.x1y2.tmp" / "junk").mkdir(parents=True)  # staging of a killed install
    # The mirror may come from config.json instead of the environment.
    monkeypatch.delenv("TOTALSEG_WEIGHTS_URL")
    (home / "config.json").write_text(json.dumps({"weights_url": server.url}))
    code, err = _call(download_weights.main, ["-t", "breasts"], capsys)
    assert code == 0, err
    assert "replaces an incomplete copy" in err
    assert len(server.requests_for(_path(BREASTS))) == 1
    assert _same_as_source(home, BREASTS)
    assert sorted(p.name for p in _weights(home).iterdir()) == [BREASTS]


# --- resuming ---------------------------------------------------------------------------------------------


def test_cut_download_is_resumed_with_range(home, server, zips, capsys):
    body = zips[BREASTS]
    server.routes[_path(BREASTS)] = Route(body, cut_after=len(body) // 2, cut_times=1)
    code, err = _call(download_weights.main, ["-t", "breasts"], capsys)
    assert code == 0, err
    seen = server.requests_for(_path(BREASTS))
    assert len(seen) == 2
    assert "Range" not in seen[0].headers
    assert seen[1].headers.get("Range") == f"bytes={len(body) // 2}-"
    assert _same_as_source(home, BREASTS)


def test_cut_download_is_resumed_by_the_next_run(home, server, zips, monkeypatch, capsys):
    body = zips[BREASTS]
    server.routes[_path(BREASTS)] = Route(body, cut_after=len(body) // 3, cut_times=1)
    monkeypatch.setenv("TOTALSEG_DOWNLOAD_RETRIES", "0")
    code, err = _call(download_weights.main, ["-t", "breasts"], capsys)
    _assert_one_error_line(code, err, "run again to resume")
    assert [p.name for p in _weights(home).iterdir()] == [f".{BREASTS}.zip.part"]
    code, err = _call(download_weights.main, ["-t", "breasts"], capsys)
    assert code == 0, err
    assert server.requests_for(_path(BREASTS))[-1].headers.get("Range") == f"bytes={len(body) // 3}-"
    assert _same_as_source(home, BREASTS)
    assert sorted(p.name for p in _weights(home).iterdir()) == [BREASTS]


# --- failures leave the home as it was --------------------------------------------------------------------


def _prepare_home(home: Path, target: str) -> None:
    """A home in use: config.json, one complete model, and an incomplete copy of ``target``."""
    home.mkdir()
    (home / "config.json").write_text(json.dumps({"send_usage_stats": False}, indent=4))
    shutil.copytree(WEIGHTS / FAST, _weights(home) / FAST)
    sub = next((WEIGHTS / target).iterdir()).name
    (_weights(home) / target / sub).mkdir(parents=True)
    (_weights(home) / target / sub / "plans.json").write_bytes((WEIGHTS / target / sub / "plans.json").read_bytes())


FAILURES = {
    "truncated": ("corrupt or truncated", lambda z: Route(z[: len(z) // 2])),
    "html": ("web page", lambda z: Route(b"<!DOCTYPE html><html><body>Sign in</body></html>",
                                         content_type="text/html")),
    "html_as_zip": ("web page", lambda z: Route(b"\n<html><body>Proxy error</body></html>",
                                                content_type="application/octet-stream")),
    "404": ("HTTP 404", None),
    "no_checkpoint": ("checkpoint_final.pth is missing", "skip"),
    "stall": ("failed after 2 attempts", lambda z: Route(stall=True)),
}


@pytest.mark.parametrize("entry", ["run", "download"])
@pytest.mark.parametrize("case", list(FAILURES))
def test_failed_download_leaves_home_unchanged(case, entry, home, server, zips, tmp_path, monkeypatch, capsys):
    folder = FASTEST if entry == "run" else BREASTS
    needle, make = FAILURES[case]
    if make == "skip":
        server.routes[_path(folder)] = Route(build_zip(folder, skip=("checkpoint_final.pth",)))
    elif make is not None:
        server.routes[_path(folder)] = make(zips[folder])
    if case == "stall":
        monkeypatch.setenv("TOTALSEG_DOWNLOAD_TIMEOUT", "1")
        monkeypatch.setenv("TOTALSEG_DOWNLOAD_RETRIES", "1")
    _prepare_home(home, folder)
    before = snapshot(home)
    out = tmp_path / "seg.nii.gz"
    if entry == "run":
        code, err = _run_fastest(out, capsys, quiet=False)
    else:
        code, err = _call(download_weights.main, ["-t", "breasts"], capsys)
    _assert_one_error_line(code, err, needle)
    assert folder in err
    assert snapshot(home) == before
    assert not out.exists()
    assert server.requests_for(_path(folder)), "the server was not asked"


def test_no_network_says_how_to_work_offline(home, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TOTALSEG_WEIGHTS_URL", closed_port_url())
    out = tmp_path / "seg.nii.gz"
    code, err = _run_fastest(out, capsys, quiet=False)
    _assert_one_error_line(code, err, "no connection")
    assert "totalseg_import_weights" in err and "copy" in err and FASTEST in err
    assert not home.exists() and not out.exists()


# --- several processes sharing a home ---------------------------------------------------------------------


def _parallel(commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=300), *p.communicate()) for p in procs]


def test_eight_concurrent_first_runs_download_once(home, server, zips, monkeypatch):
    monkeypatch.setenv("TOTALSEG_DOWNLOAD_TIMEOUT", "60")  # eight processes starting torch at once on 2 cores
    server.routes[_path(BREASTS)] = Route(zips[BREASTS])
    command = [sys.executable, "-m", "totalseg.cli.download_weights", "-t", "breasts", "-q"]
    results = _parallel([command] * 8)
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert len(server.requests_for(_path(BREASTS))) == 1
    assert _same_as_source(home, BREASTS)
    assert sorted(p.name for p in _weights(home).iterdir()) == [BREASTS]


def test_eight_concurrent_licence_writers_leave_valid_config(home):
    keys = [f"aca_PARALLEL{i:06d}" for i in range(8)]
    results = _parallel([[sys.executable, "-m", "totalseg.cli.set_license", "-l", k, "-sv"] for k in keys])
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert json.loads((home / "config.json").read_text())["license_number"] in keys

    # Distinct keys written at once all survive: each write merges under the lock.
    code = "import sys; from totalseg.config import update_config; update_config({'k' + sys.argv[1]: 1})"
    results = _parallel([[sys.executable, "-c", code, str(i)] for i in range(8)])
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    config = json.loads((home / "config.json").read_text())
    assert {f"k{i}" for i in range(8)} <= set(config)
    assert not [p for p in home.iterdir() if p.name.endswith(".tmp")]


# --- import without network -------------------------------------------------------------------------------


def test_import_works_offline_and_the_model_runs(home, zips, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TOTALSEG_WEIGHTS_URL", closed_port_url())
    archive = tmp_path / f"{FASTEST}.zip"
    archive.write_bytes(zips[FASTEST])
    code, err = _call(import_weights.main, ["-i", str(archive)], capsys)
    assert code == 0, err
    assert _same_as_source(home, FASTEST)
    out = tmp_path / "seg.nii.gz"
    code, err = _run_fastest(out, capsys)
    assert code == 0, err
    assert nib.load(out).shape == nib.load(EXAMPLE).shape


def _bad_zip(kind: str, tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / f"{kind}.zip"
    if kind == "traversal":
        path.write_bytes(build_zip(BREASTS, extra={"../../evil.txt": b"x"}))
        return path, "outside its folder"
    if kind == "unknown_folder":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("Dataset999_mine/plans.json", "{}")
        return path, "not a model of any task"
    if kind == "not_a_zip":
        path.write_text("<html>login</html>")
        return path, "web page"
    if kind == "no_checkpoint":
        path.write_bytes(build_zip(BREASTS, skip=("checkpoint_final.pth",)))
        return path, "missing"
    if kind == "missing_file":
        return tmp_path / "nope.zip", "does not exist"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["traversal", "unknown_folder", "not_a_zip", "no_checkpoint", "missing_file"])
def test_bad_import_changes_nothing(kind, home, tmp_path, capsys):
    _prepare_home(home, BREASTS)
    before = snapshot(home)
    path, needle = _bad_zip(kind, tmp_path)
    code, err = _call(import_weights.main, ["-i", str(path)], capsys)
    _assert_one_error_line(code, err, needle)
    assert snapshot(home) == before
    assert not (tmp_path.parent / "evil.txt").exists()


# --- licences ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["run", "download"])
def test_licensed_task_without_licence_writes_nothing(entry, home, server, zips, tmp_path, capsys):
    server.licensed["tissue_types"] = zips[TISSUE]
    out = tmp_path / "seg"
    if entry == "run":
        code, err = _call(run_main, ["-i", str(EXAMPLE), "-o", str(out), "-ta", "tissue_types", "-d", "cpu"], capsys)
    else:
        code, err = _call(download_weights.main, ["-t", "tissue_types"], capsys)
    _assert_one_error_line(code, err, "licence")
    assert "license-academic" in err
    assert not home.exists() and not out.exists()
    assert server.seen == []


def test_licensed_download_with_a_valid_licence(home, server, zips, capsys):
    server.licences.add(LICENCE)
    server.licensed["tissue_types"] = zips[TISSUE]
    code, err = _call(set_license.main, ["-l", LICENCE], capsys)
    assert code == 0, err
    assert server.seen[-1].path == "/is_valid_license_number"
    code, err = _call(download_weights.main, ["-t", "tissue_types"], capsys)
    assert code == 0, err
    request = json.loads(server.seen[-1].body)
    assert server.seen[-1].path == "/download_weights"
    assert request == {"license_number": LICENCE, "task": "tissue_types", "version": "2.18.0"}
    assert _same_as_source(home, TISSUE)


def test_licence_refused_by_the_download_server(home, server, zips, capsys):
    server.licensed["tissue_types"] = zips[TISSUE]
    code, err = _call(set_license.main, ["-l", LICENCE, "-sv"], capsys)
    assert code == 0, err
    before = snapshot(home)
    code, err = _call(download_weights.main, ["-t", "tissue_types"], capsys)
    _assert_one_error_line(code, err, "refused")
    assert snapshot(home) == before


@pytest.mark.parametrize("case", ["invalid", "bad_format", "no_network"])
def test_set_license_refusals_store_nothing(case, home, server, monkeypatch, capsys):
    key, needle = LICENCE, {"invalid": "does not accept", "bad_format": "aca_", "no_network": "-sv"}[case]
    if case == "bad_format":
        key = "aca_short"
    if case == "no_network":
        monkeypatch.setenv("TOTALSEG_WEIGHTS_URL", closed_port_url())
    code, err = _call(set_license.main, ["-l", key], capsys)
    _assert_one_error_line(code, err, needle)
    assert not (home / "config.json").exists()


# --- listing ----------------------------------------------------------------------------------------------


def test_info_lists_states_and_sizes(home, zips, tmp_path, capsys):
    archive = tmp_path / "a.zip"
    archive.write_bytes(zips[FASTEST])
    assert import_weights.main(["-i", str(archive), "-q"]) == 0
    sub = next((WEIGHTS / FAST).iterdir()).name
    (_weights(home) / FAST / sub).mkdir(parents=True)
    (_weights(home) / FAST / sub / "plans.json").write_text("{}")
    capsys.readouterr()
    assert info.main(["-ta", "total", "-ta", "lung_vessels", "--json", "-w"]) == 0
    report = json.loads(capsys.readouterr().out)
    states = {m["folder"]: m for models in report["tasks"].values() for m in models}
    assert states[FASTEST]["state"] == "installed"
    assert states[FASTEST]["bytes"] == sum(p.stat().st_size for p in (WEIGHTS / FASTEST).rglob("*") if p.is_file())
    assert states[FAST]["state"] == "incomplete" and f"{sub}/dataset.json" in states[FAST]["missing"]
    assert states["Dataset291_TotalSegmentator_part1_organs_1559subj"]["state"] == "missing"
    assert info.main(["-ta", "total", "-w"]) == 0
    text = capsys.readouterr().out
    assert "1 installed" in text and FASTEST in text


def test_needed_folds_follow_custom_tasks_json(tmp_path, monkeypatch):
    """A custom task's folds decide what counts as installed: an edit of custom_tasks.json between two
    calls is seen at once, by needed_folds and by the files it requires."""
    from totalseg.install.status import needed_folds, required_files
    from totalseg.registry import get_model

    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path))
    entry = {"folder": "Dataset901_Synth", "trainer": "nnUNetTrainer", "plans": "nnUNetPlans",
             "configuration": "3d_fullres", "classes": {"1": "liver"}}
    path = tmp_path / "custom_tasks.json"
    path.write_text(json.dumps({"tasks": {"synth": entry}}))
    assert needed_folds(901) == (0,)
    path.write_text(json.dumps({"tasks": {"synth": {**entry, "folds": [1, 3]}}}))
    assert needed_folds(901) == (1, 3)
    assert [f.split("/")[1] for f in required_files(get_model(901))[2:]] == ["fold_1", "fold_3"]
    assert needed_folds(291) == needed_folds(291)  # built-in models: unchanged by the edit
