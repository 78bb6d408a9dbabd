"""Bad input: one line on stderr, exit status 1, no traceback and nothing written."""
from __future__ import annotations

import subprocess
from pathlib import Path
import sys

import nibabel as nib
import numpy as np
import pytest

from conftest import REF
from totalseg.cli.totalsegmentator import main


def _run(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def _assert_clean_failure(code, err, out_path, needle):
    assert code == 1
    assert err.startswith("ERROR: ") and "\n" not in err and "Traceback" not in err, err
    assert needle.lower() in err.lower(), err
    assert not out_path.exists()
    assert not [p for p in out_path.parent.iterdir() if p.name.startswith(".")], "temporary files left"


@pytest.fixture
def small(tmp_path):
    ref = nib.load(REF / "example_ct_sm.nii.gz")
    return ref, np.asanyarray(ref.dataobj)


def _save(tmp_path, name, data, affine):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _case_input(tmp_path, kind, small):
    ref, data = small
    if kind == "missing":
        return tmp_path / "nope.nii.gz", "does not exist"
    if kind == "not_nifti":
        p = tmp_path / "notes.txt"
        p.write_text("hello")
        return p, "nifti"
    if kind == "truncated":
        raw = (REF / "example_ct_sm.nii.gz").read_bytes()
        p = tmp_path / "cut.nii.gz"
        p.write_bytes(raw[: len(raw) // 2])
        return p, "corrupt"
    if kind == "2d":
        return _save(tmp_path, "flat.nii.gz", data[:, :, 0], ref.affine), "2D"
    if kind == "nan":
        f = data.astype(np.float32)
        f[5, 5, 5] = np.nan
        return _save(tmp_path, "nan.nii.gz", f, ref.affine), "NaN"
    if kind == "inf":
        f = data.astype(np.float32)
        f[5, 5, 5] = np.inf
        return _save(tmp_path, "inf.nii.gz", f, ref.affine), "inf"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "not_nifti", "truncated", "2d", "nan", "inf"])
def test_bad_image(kind, small, tmp_path, use_home, capsys):
    path, needle = _case_input(tmp_path, kind, small)
    out = tmp_path / "out" / "seg.nii.gz"
    out.parent.mkdir()
    code, err = _run(["-i", str(path), "-o", str(out), "--ml", "--fast", "-d", "cpu"], capsys)
    _assert_clean_failure(code, err, out, needle)


def test_unknown_task(tmp_path, use_home, capsys):
    out = tmp_path / "seg"
    code, err = _run(["-i", str(REF / "example_ct_sm.nii.gz"), "-o", str(out), "-ta", "kidneyz"], capsys)
    _assert_clean_failure(code, err, out, "unknown task")


def test_unknown_roi_class(tmp_path, use_home, capsys):
    out = tmp_path / "seg"
    code, err = _run(["-i", str(REF / "example_ct_sm.nii.gz"), "-o", str(out), "-rs", "liver", "livre"], capsys)
    _assert_clean_failure(code, err, out, "livre")


def test_missing_weights_names_the_folder(tmp_path, monkeypatch, capsys):
    from weights_server import closed_port_url

    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "empty_home"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.setenv("TOTALSEG_WEIGHTS_URL", closed_port_url())  # automatic download, network off
    out = tmp_path / "seg.nii.gz"
    code, err = _run(["-i", str(REF / "example_ct_sm.nii.gz"), "-o", str(out), "--fast", "--ml", "-d", "cpu"],
                     capsys)
    _assert_clean_failure(code, err, out, "Dataset297_TotalSegmentator_total_3mm_1559subj")
    assert "/v2.0.0-weights/Dataset297_TotalSegmentator_total_3mm_1559subj.zip" in err
    assert "totalseg_import_weights" in err and not (tmp_path / "empty_home").exists()


def test_licensed_task_without_licence(tmp_path, use_home, capsys):
    out = tmp_path / "seg"
    code, err = _run(["-i", str(REF / "example_ct_sm.nii.gz"), "-o", str(out), "-ta", "tissue_types",
                      "-d", "cpu"], capsys)
    _assert_clean_failure(code, err, out, "licence")
    assert "license-academic" in err


def test_ml_output_needs_file_name(tmp_path, use_home, capsys):
    # A name without any suffix gets .nii as in the official tool (tests/test_dicom_output.py); another suffix
    # is refused (the official tool's writer fails on it after the whole run).
    out = tmp_path / "seg.txt"
    code, err = _run(["-i", str(REF / "example_ct_sm.nii.gz"), "-o", str(out), "--ml", "--fast"], capsys)
    _assert_clean_failure(code, err, out, ".nii.gz")


def test_fast_refused_where_official_refuses(tmp_path, use_home, capsys):
    from totalseg.registry import get_task, task_names

    refusing = [t for t in task_names() if get_task(t).disallow_fast and not get_task(t).licensed]
    if not refusing:
        pytest.skip("no open task refuses --fast")
    out = tmp_path / "seg"
    code, err = _run(["-i", str(REF / "example_ct_sm.nii.gz"), "-o", str(out), "-ta", refusing[0], "--fast"],
                     capsys)
    _assert_clean_failure(code, err, out, "--fast")


def test_no_traceback_from_the_real_command(tmp_path):
    """Through the console entry point, as users run it."""
    out = tmp_path / "x.nii.gz"
    proc = subprocess.run([sys.executable, "-m", "totalseg.cli.totalsegmentator", "-i", str(tmp_path / "none.nii"),
                           "-o", str(out), "--ml"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_help_and_listing_do_not_import_torch():
    code = ("import sys; from totalseg.cli.totalsegmentator import main\n"
            "try:\n    main(['--list-tasks'])\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "total_mr" in proc.stdout


def test_resampling_threads_must_be_positive(tmp_path, use_home, capsys):
    out = tmp_path / "seg.nii.gz"
    code, err = _run(["-i", str(REF / "example_ct_sm.nii.gz"), "-o", str(out), "--ml", "-nr", "0", "-d", "cpu"],
                     capsys)
    _assert_clean_failure(code, err, out, "--nr_thr_resamp must be 1 or more")


# Every console script of the official TotalSegmentator 2.18.0 package (official-behaviour.md §1).
OFFICIAL_SCRIPTS = {"TotalSegmentator", "totalseg_combine_masks", "crop_to_body", "totalseg_import_weights",
                    "totalseg_download_weights", "totalseg_setup_manually", "totalseg_set_license",
                    "totalseg_get_phase", "totalseg_get_modality", "totalseg_evans_index", "totalseg_get_body_stats",
                    "totalseg_spine_report", "totalseg_info", "totalseg_aorta_report", "totalseg_pulmonary_report",
                    "totalseg_mcp"}


def test_every_console_script_answers_help_without_torch():
    """Each official command exists here, and every command of ours prints its --help without loading torch."""
    import tomllib

    scripts = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert OFFICIAL_SCRIPTS <= set(scripts), OFFICIAL_SCRIPTS - set(scripts)
    for name, target in scripts.items():
        module, func = target.split(":")
        code = (f"import sys; sys.argv = [{name!r}, '--help']; from {module} import {func}\n"
                f"try:\n    {func}()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
                "assert 'torch' not in sys.modules, 'torch imported'")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 0 and "usage" in proc.stdout.lower(), (name, proc.stderr[-500:])
