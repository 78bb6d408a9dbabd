"""totalseg_batch: a mixed cohort against single TotalSegmentator runs, failures, SIGKILL and resume, the
statistics table, the Python API, and the same cohort on a Ray cluster with a worker killed mid-run."""
from __future__ import annotations

import csv
import filecmp
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from conftest import REF
from weights_server import closed_port_url

from totalseg.batch.discover import Case, case_id, discover_cases
from totalseg.batch.worker import RUN_REPORT
from totalseg.errors import UserError

REPO = Path(__file__).resolve().parents[1]
OPTIONS = ["--fastest", "-s", "-sx", "-d", "cpu"]
GOOD = ["ct_a", "dicom_ct", "sub__ct_b", "sub__dz"]
BAD = {"corrupt": "corrupt", "flat": "2D"}

pytestmark = pytest.mark.skipif(not (REF / "example_ct_dicom").is_dir(), reason="../shared/data not available")


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Six cases: two NIfTI, a DICOM folder, a DICOM zip, a truncated NIfTI, a 2D image (and a note)."""
    root = tmp_path_factory.mktemp("cohort") / "in"
    (root / "sub").mkdir(parents=True)
    ref = nib.load(REF / "example_ct_sm.nii.gz")
    data = np.asanyarray(ref.dataobj)
    shutil.copy(REF / "example_ct_sm.nii.gz", root / "ct_a.nii.gz")
    nib.save(nib.Nifti1Image(data[::-1].copy(), ref.affine), root / "sub" / "ct_b.nii.gz")
    shutil.copytree(REF / "example_ct_dicom", root / "dicom_ct")
    by_z = sorted((REF / "example_ct_dicom").iterdir(),
                  key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    with zipfile.ZipFile(root / "sub" / "dz.zip", "w") as z:  # ten neighbouring slices: another series
        for f in by_z[:10]:
            z.write(f, f"series/{f.name}")
    raw = (REF / "example_ct_sm.nii.gz").read_bytes()
    (root / "corrupt.nii.gz").write_bytes(raw[: len(raw) // 2])
    nib.save(nib.Nifti1Image(data[:, :, 0], ref.affine), root / "flat.nii.gz")
    (root / "notes.txt").write_text("not a case\n")
    return root


@pytest.fixture(scope="module")
def env(fake_home) -> dict:
    return dict(os.environ, TOTALSEG_HOME_DIR=str(fake_home), TOTALSEG_WEIGHTS_URL=closed_port_url(),
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def _batch(args, env, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "totalseg.cli.batch", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600, **kw)


def _start_batch(args, env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "totalseg.cli.batch", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def singles(cohort, fake_home, tmp_path_factory) -> dict[str, Path]:
    """What a single TotalSegmentator run writes for each good case, with the cohort's options."""
    from totalseg.cli.totalsegmentator import main

    inputs = {"ct_a": "ct_a.nii.gz", "dicom_ct": "dicom_ct", "sub__ct_b": "sub/ct_b.nii.gz", "sub__dz": "sub/dz.zip"}
    out = tmp_path_factory.mktemp("singles")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOTALSEG_HOME_DIR", str(fake_home))
        mp.setenv("TOTALSEG_WEIGHTS_URL", closed_port_url())
        for cid, rel in inputs.items():
            assert main(["-i", str(cohort / rel), "-o", str(out / cid), *OPTIONS, "-q",
                         "-rp", str(out / cid / RUN_REPORT)]) == 0
    return {cid: out / cid for cid in inputs}


@pytest.fixture(scope="module")
def local_run(cohort, env, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    proc = _batch(["-i", cohort, "-o", out, *OPTIONS], env)
    return out, proc


def _rows(out: Path) -> dict[str, dict]:
    with open(out / "cases.csv", newline="") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def _assert_same_tree(a: Path, b: Path) -> None:
    """Same file names, byte for byte the same files; the run reports the same but for the paths and times
    (a's names its own case folder)."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and RUN_REPORT in names
    _, mismatch, errors = filecmp.cmpfiles(a, b, [n for n in names if n != RUN_REPORT], shallow=False)
    assert not mismatch and not errors, (mismatch, errors)
    report, single = (json.loads((d / RUN_REPORT).read_text()) for d in (a, b))
    assert Path(report["output"]) == a.absolute()
    for key in ("input", "output", "runtime_seconds"):
        del report[key], single[key]
    assert report == single


def _assert_cohort_result(out: Path, singles: dict[str, Path]) -> None:
    rows = _rows(out)
    assert sorted(rows) == sorted(GOOD + list(BAD))
    for cid in GOOD:
        assert rows[cid]["status"] == "done" and rows[cid]["error"] == ""
        assert "Dataset298_TotalSegmentator_total_6mm_1559subj@v2.0.0-weights" in rows[cid]["models"]
        _assert_same_tree(out / cid, singles[cid])
    for cid, needle in BAD.items():
        assert rows[cid]["status"] == "failed" and needle.lower() in rows[cid]["error"].lower()
        assert "\n" not in rows[cid]["error"] and not (out / cid).exists()
    assert not (out / ".staging").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(GOOD + ["cases.csv", "statistics.csv"])


# ---------------------------------------------------------------------------------------- discovery
def test_case_ids_are_relative_paths_made_safe(cohort, tmp_path):
    cases = discover_cases([cohort])
    assert [c.case_id for c in cases] == ["corrupt", "ct_a", "flat", "dicom_ct", "sub__ct_b", "sub__dz"]
    assert case_id("a b/é-x.nii.gz") == "a_b___-x" and case_id(".hidden/x.zip") == "hidden__x"
    listing = tmp_path / "list.csv"
    listing.write_text(f"case_id,input\np1,{cohort / 'ct_a.nii.gz'}\np2,sub/ct_b.nii.gz\n")
    (tmp_path / "sub").symlink_to(cohort / "sub")
    assert discover_cases([listing]) == [Case("p1", cohort / "ct_a.nii.gz"),
                                         Case("p2", tmp_path / "sub" / "ct_b.nii.gz")]
    txt = tmp_path / "list.txt"
    txt.write_text(f"# cases\n{cohort / 'ct_a.nii.gz'}\n\n{cohort / 'dicom_ct'}\n")
    assert [c.case_id for c in discover_cases([txt])] == ["ct_a", "dicom_ct"]
    with pytest.raises(UserError, match="same case id 'ct_a'|case id 'ct_a'"):
        discover_cases([cohort / "ct_a.nii.gz", txt])


def test_duplicate_ids_fail_before_any_work(cohort, env, tmp_path):
    proc = _batch(["-i", cohort / "ct_a.nii.gz", cohort / "ct_a.nii.gz", "-o", tmp_path / "out", *OPTIONS], env)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("ERROR: two inputs have the case id 'ct_a'")
    assert "\n" not in proc.stderr.strip() and not (tmp_path / "out").exists()


def test_a_case_that_must_run_alone_waits_for_the_others_and_is_not_overtaken():
    import threading

    from totalseg.batch.worker import _Turns

    turns, log = _Turns(), []

    def case(name: str, alone: bool, hold: float) -> threading.Thread:
        def body():
            with turns.hold(alone):
                log.append(f"+{name}")
                time.sleep(hold)
                log.append(f"-{name}")
        t = threading.Thread(target=body)
        t.start()
        time.sleep(0.05)
        return t

    threads = [case("a", False, 0.3), case("dicom", True, 0.1), case("b", False, 0.0)]
    for t in threads:
        t.join(5)
    assert log == ["+a", "-a", "+dicom", "-dicom", "+b", "-b"]


# ------------------------------------------------------------------------------------------ a cohort
def test_cohort_equals_single_runs_and_isolates_failures(local_run, singles):
    out, proc = local_run
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: 2 of 6 cases failed (corrupt, flat)") and "Traceback" not in proc.stderr
    _assert_cohort_result(out, singles)
    rows = _rows(out)
    assert rows["ct_a"]["totalseg_version"] and float(rows["ct_a"]["seconds"]) > 0
    # each case's warnings, as its run report lists them: ct_b is ct_a mirrored left-right in its voxels
    for cid in GOOD:
        assert rows[cid]["warnings"] == " | ".join(json.loads((out / cid / RUN_REPORT).read_text())["warnings"])
    assert "flip" not in rows["ct_a"]["warnings"] and "left-right" in rows["sub__ct_b"]["warnings"]


def test_statistics_table_equals_case_files(local_run):
    out, _ = local_run
    with open(out / "statistics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    want = []
    for cid in GOOD:
        for structure, entry in json.loads((out / cid / "statistics.json").read_text()).items():
            want.append({"case_id": cid, "structure": structure, **entry})
    assert len(table) == len(want) and len(want) > 4 * 100
    for got, ref in zip(table, want):
        assert {k: (v if k in ("case_id", "structure") else json.loads(v)) for k, v in got.items()} == ref
    assert list(table[0]) == ["case_id", "structure", "volume", "intensity", "n_voxels", "intensity_std",
                              "intensity_min", "intensity_max", "centroid_vox", "bbox_vox", "incomplete"]


def test_sigkill_mid_cohort_then_rerun_finishes_each_case_once(cohort, env, singles, tmp_path):
    out = tmp_path / "out"
    proc = _start_batch(["-i", cohort, "-o", out, *OPTIONS, "-q"], env)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once a case is done and another is being written
        rows = _rows(out) if (out / "cases.csv").is_file() else {}
        staging = list((out / ".staging").glob("*")) if (out / ".staging").is_dir() else []
        if any(r["status"] == "done" for r in rows.values()) and staging:
            break
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {cid: _snapshot(out / cid) for cid in GOOD if (out / cid).exists()}
    assert 0 < len(before) < len(GOOD)
    for cid in before:  # a case folder is complete or absent
        _assert_same_tree(out / cid, singles[cid])

    rerun = _batch(["-i", cohort, "-o", out, *OPTIONS, "-q"], env)
    assert rerun.returncode == 1 and rerun.stderr.strip().startswith("ERROR: 2 of 6 cases failed")
    _assert_cohort_result(out, singles)
    assert {cid: _snapshot(out / cid) for cid in before} == before  # finished cases were not redone

    again = _batch(["-i", cohort, "-o", out, *OPTIONS, "--retry-failed"], env)
    assert again.returncode == 1 and "4 already done" in again.stderr and "2 to run" in again.stderr
    _assert_cohort_result(out, singles)


def _snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in [folder, *folder.iterdir()]}


def test_python_api_reuses_a_predictor_and_never_imports_ray(cohort, env, tmp_path):
    code = (
        "import sys\n"
        "from totalseg import Predictor\n"
        "from totalseg.batch import segment_cohort\n"
        f"inputs = [{str(cohort / 'corrupt.nii.gz')!r}, {str(cohort / 'ct_a.nii.gz')!r}]\n"
        "with Predictor('cpu', progress_bars=False) as p:\n"
        f"    r = segment_cohort(inputs, {str(tmp_path / 'out')!r}, predictor=p, fastest=True, quiet=True)\n"
        "    p.segment(inputs[1], " + repr(str(tmp_path / 'one')) + ", fastest=True, quiet=True, report="
        + repr(str(tmp_path / "one" / RUN_REPORT)) + ")\n"
        "print([x.status for x in r.rows], p.loads, 'ray' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['failed', 'done'] [298] False"  # one load for the cohort and the next call
    _assert_same_tree(tmp_path / "out" / "ct_a", tmp_path / "one")


# ------------------------------------------------------------------------------------------------ Ray
@pytest.fixture
def ray_head(tmp_path):
    """A 2-CPU Ray head on this machine, token-authenticated with a fresh token, stopped afterwards."""
    pytest.importorskip("ray", reason="ray is not installed (extra 'ray')")
    ray_bin = Path(sys.executable).with_name("ray")
    ray_bin = ray_bin if ray_bin.exists() else Path(shutil.which("ray") or "ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths live under it
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | auth  # workers get totalseg from Ray
    log = tmp_path / "ray_head.log"
    with open(log, "w") as sink:
        head = subprocess.Popen([str(ray_bin), "start", "--head", f"--port={port}", "--num-cpus=2",
                                 "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
                                 f"--object-store-memory={200 << 20}", "--block"],
                                env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while "Ray runtime started" not in log.read_text(errors="replace"):
            assert head.poll() is None and time.time() < deadline, log.read_text(errors="replace")[-2000:]
            time.sleep(0.5)
        yield port, auth, head.pid
    finally:
        head.send_signal(signal.SIGTERM)  # it stops the processes it started
        head.wait(timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as f:
                children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(d))
        except (OSError, ValueError, IndexError):
            continue
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _busy_case_worker(head_pid: int) -> int | None:
    """A Ray worker of the head that is running a case (its process title names the method)."""
    for pid in set(_descendants(head_pid)):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(b"ray::CaseWorker.run"):
                    return pid
        except OSError:
            continue
    return None


def test_ray_cluster_gives_the_same_cohort_and_survives_a_dead_worker(cohort, env, local_run, singles,
                                                                      ray_head, tmp_path):
    port, auth, head_pid = ray_head
    out = tmp_path / "out"
    # Ray replaces a loopback address by the machine's own, where `ray start` listens.
    proc = _start_batch(["-i", cohort, "-o", out, *OPTIONS, "--ray", f"127.0.0.1:{port}",
                         "--ray-cpus-per-worker", "1"], env | auth)
    killed, deadline = None, time.time() + 400
    while proc.poll() is None and time.time() < deadline:
        if killed is None:
            staging = list((out / ".staging").glob("*")) if (out / ".staging").is_dir() else []
            pid = _busy_case_worker(head_pid) if staging else None
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed = pid
        time.sleep(0.2)
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 1, stderr
    assert killed is not None, "no worker was caught running a case"
    assert "Ray worker died while segmenting" in stderr and "retrying it on a new worker" in stderr
    _assert_cohort_result(out, singles)
    local_out, _ = local_run
    assert _without_seconds(_rows(out)) == _without_seconds(_rows(local_out))
    assert (out / "statistics.csv").read_bytes() == (local_out / "statistics.csv").read_bytes()


def _without_seconds(rows: dict[str, dict]) -> dict[str, dict]:
    return {k: {c: v for c, v in r.items() if c != "seconds"} for k, r in rows.items()}


def test_html_report_at_the_end_shows_every_case(cohort, env, local_run, tmp_path):
    """`-hr DIR`: the rerun (all cases finished or failed before: nothing runs) ends with the cohort's gallery."""
    out, _ = local_run
    proc = _batch(["-i", cohort, "-o", out, *OPTIONS, "-hr", tmp_path / "gallery"], env)
    assert proc.returncode == 1 and "Cohort report written to" in proc.stderr, proc.stderr
    page = (tmp_path / "gallery" / "index.html").read_text()
    text = page + "".join(p.read_text(errors="ignore") for p in (tmp_path / "gallery").rglob("*.js")
                          if "niivue" not in p.name)
    for cid in GOOD + list(BAD):
        assert cid in text, cid
