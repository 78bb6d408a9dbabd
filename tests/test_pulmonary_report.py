"""totalseg_pulmonary_report on the reference masks of the official test data (subject D), compared with
the official TotalSegmentator 2.18.0."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REF = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "totalseg_reference" / "pulmonary_report"
MODELS = REF / "models"
NODEINFO = REF.parent / "aorta_report" / "example_nodeinfo.json"
OFFICIAL_VENV = Path.home() / ".cache/totalseg/official-2.18.0-torch2.13.0-py3.11"

pytestmark = pytest.mark.skipif(not MODELS.exists(), reason="reference data not available")

# The official 2.18.0 report on these masks (its own code, rendering left out): area (cm²), diameter,
# diameter_pd (cm), start and start_voxel of the major diameter. The stored reference JSON is report
# version 0.2.0 of an older release, which measured differently (e.g. landmark 2: 3.9 cm², 2.5 x 2.1 cm).
OFFICIAL_2_18 = {
    "1": (4.9, 2.9, 2.3, [-36.4997, 184.9747, 676.1684], [26, 9, 27]),
    "2": (5.3, 3.0, 2.4, [-34.064, 174.2278, 682.6612], [26, 8, 26]),
    "3": (4.8, 2.7, 2.3, [-29.7838, 165.4828, 714.9218], [14, 37, 27]),
    "4": (3.3, 2.2, 2.0, [-26.7328, 155.6997, 720.6256], [25, 40, 26]),
    "5": (3.4, 2.2, 2.1, [-9.1884, 158.4547, 692.8282], [14, 30, 27]),
}


def _main(argv):
    from totalseg.cli.pulmonary_report import main

    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pulmonary")
    out = tmp / "out"
    rc = _main(["-i", MODELS / "ct_cropped.nii.gz", "-rt", MODELS, "-rd", MODELS, "-n", NODEINFO,
                "-o", out / "pulmonary_report.nii.gz", "-j", out / "pulmonary_report.json", "-l", out / "log.txt",
                "-tmp", tmp / "work"])
    assert rc == 0
    return out


def test_json_matches_official(report):
    got = json.loads((report / "pulmonary_report.json").read_text())
    ref = json.loads((REF / "pulmonary_report.json").read_text())
    assert list(got) == ["landmarks", "metadata"]
    assert got["metadata"] == {**ref["metadata"], "version": "0.2.1"}
    assert list(got["landmarks"]) == list(OFFICIAL_2_18)
    for number, lm in got["landmarks"].items():
        assert list(lm) == list(ref["landmarks"][number]), number
        assert lm["name"] == ref["landmarks"][number]["name"]
        area, diameter, diameter_pd, start, start_voxel = OFFICIAL_2_18[number]
        assert (lm["area"], lm["diameter"], lm["diameter_pd"]) == (area, diameter, diameter_pd), number
        assert lm["start"] == pytest.approx(start, abs=1e-4) and lm["start_voxel"] == start_voxel, number


def test_log_and_page(report):
    log = (report / "log.txt").read_text().splitlines()
    assert log[0].endswith("Getting metadata...")
    assert [line[6:] for line in log if "Processing landmark" in line] == [f"  Processing landmark {n}"
                                                                            for n in range(1, 6)]
    img = nib.load(report / "pulmonary_report.nii.gz")
    assert img.shape[2] == 24 and img.get_data_dtype().names == ("R", "G", "B")
    data = np.asanyarray(img.dataobj)
    assert (data[:, :, 0]["G"] != data[:, :, 6]["G"]).any()  # the 3-D view turns


def test_missing_landmark_is_one_line(tmp_path, capsys):
    (tmp_path / "rd").mkdir()
    rc = _main(["-i", MODELS / "ct_cropped.nii.gz", "-rt", MODELS, "-rd", tmp_path / "rd",
                "-o", tmp_path / "o.nii.gz", "-j", tmp_path / "o.json", "-l", tmp_path / "log.txt"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("ERROR: the pulmonary report needs these masks") and "pul_annulus" in err[-1]


def test_modal_host_refused(tmp_path, capsys):
    rc = _main(["-i", MODELS / "ct_cropped.nii.gz", "-rm", "--host", "modal", "-o", tmp_path / "o.nii.gz",
                "-j", tmp_path / "o.json", "-l", tmp_path / "log.txt"])
    assert rc == 1 and "--host local" in capsys.readouterr().err


def test_help_without_torch():
    code = "import sys; from totalseg.cli.pulmonary_report import main\ntry: main(['--help'])\nexcept SystemExit: pass\n" \
           "assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--pulmonary_fn" in done.stdout and "{local,modal}" in done.stdout


@pytest.mark.slow
@pytest.mark.skipif(not (OFFICIAL_VENV / "bin" / "python").exists(), reason="official 2.18.0 venv not installed")
def test_equals_official_live(report, tmp_path):
    """The official 2.18.0 report code on the same masks (its pictures left out)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("aorta_tests", Path(__file__).with_name("test_aorta_report.py"))
    aorta_tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(aorta_tests)
    harness_text, _assert_close = aorta_tests.harness_text, aorta_tests._assert_close
    harness = tmp_path / "harness.py"
    harness.write_text(harness_text())
    done = subprocess.run([str(OFFICIAL_VENV / "bin" / "python"), str(harness), "pulmonary", str(tmp_path / "off")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    official = json.loads((tmp_path / "off" / "report.json").read_text())
    _assert_close(json.loads((report / "pulmonary_report.json").read_text()), official)


@pytest.mark.slow
def test_run_models_stops_at_the_licence(use_home, tmp_path, capsys):
    """-rm runs the fast heart model (random tiny weights here); the licensed heartchambers_highres is refused."""
    ct = REF.parent / "example_ct_sm.nii.gz"
    rc = _main(["-i", ct, "-rm", "-t", "basic", "-o", tmp_path / "r.nii.gz", "-j", tmp_path / "r.json",
                "-l", tmp_path / "log.txt", "-tmp", tmp_path / "work"])
    captured = capsys.readouterr()
    last = captured.err.strip().splitlines()[-1]
    assert rc == 1 and last.startswith("ERROR: task heartchambers_highres needs a licence"), last
    assert "progress: 10, status: Running TotalSegmentator - pulmonary_artery" in captured.out
    assert (tmp_path / "work" / "models" / "ct_cropped.nii.gz").exists()
