"""Input checks that only warn (totalseg/checks.py): not HU, wrong modality, flipped orientation, cut-off classes.

The rules are checked on the real scans of the shared data as they are (no warning) and on copies whose
voxels are flipped under an unchanged affine (a warning naming the flipped axis, and no other); then a few
cases run through the ``TotalSegmentator`` command with the random-weights home: they run to the end, warn on
stderr and in the run report, are silent with ``-q``, and write the same masks as with the checks switched off.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import totalseg.run.steps
from conftest import DATA, REF
from totalseg.load.image_checks import cut_off_warning, image_warnings
from totalseg.cli.totalsegmentator import main
from totalseg.load.nifti import load_nifti
from totalseg.volume import Volume

CT_SM = REF / "example_ct_sm.nii.gz"  # upper abdomen with the lung bases, 3 mm, RAS
MR_SM = REF / "example_mr_sm.nii.gz"  # abdominal MR, intensities -47..833
SCANS = {
    "abdomen_pelvis": REF / "example_ct.nii.gz",
    "upper_abdomen": CT_SM,
    "aorta_cta_crop": REF / "aorta_report" / "test_result" / "models" / "ct_cropped.nii.gz",
    "pulmonary_cta_crop": REF / "pulmonary_report" / "models" / "ct_cropped.nii.gz",
    "chest": DATA / "extra_ct" / "itkelastix_chest_ct.nii.gz",
}
AXIS_WORDS = {0: "left-right", 1: "front-back", 2: "head-foot"}  # canonical RAS axes of these scans
# Flips each scan's field of view holds the evidence for (measured; the crops lack a whole torso for the spine
# rule, the pelvis part of the abdomen scan is not needed).
DETECTED = [("abdomen_pelvis", 0), ("abdomen_pelvis", 1), ("abdomen_pelvis", 2), ("upper_abdomen", 0),
            ("upper_abdomen", 1), ("upper_abdomen", 2), ("aorta_cta_crop", 0), ("aorta_cta_crop", 2),
            ("pulmonary_cta_crop", 0), ("chest", 0), ("chest", 1), ("chest", 2)]

_loaded: dict[str, Volume] = {}


def _scan(name: str) -> Volume:
    path = SCANS[name]
    if not path.exists():
        pytest.skip(f"{path} is not available")
    if name not in _loaded:
        _loaded[name] = load_nifti(path).volume
    return _loaded[name]


def _flipped(volume: Volume, axis: int) -> Volume:
    """The voxels flipped along a canonical axis, the affine kept: what a wrong orientation header gives."""
    assert nib.aff2axcodes(volume.affine) in (("R", "A", "S"), ("L", "P", "S"))
    return Volume(np.ascontiguousarray(np.flip(volume.data, axis)), volume.affine)


def _orientation_lines(warnings: list[str]) -> list[str]:
    return [w for w in warnings if "looks flipped" in w]


@pytest.mark.parametrize("name", list(SCANS))
def test_real_scans_as_they_are_give_no_warning(name):
    assert image_warnings(_scan(name), "ct", "total") == []


@pytest.mark.parametrize("name,axis", DETECTED)
def test_flipped_copies_warn_about_that_axis_only(name, axis):
    lines = _orientation_lines(image_warnings(_flipped(_scan(name), axis), "ct", "total"))
    assert len(lines) == 1 and AXIS_WORDS[axis] in lines[0], lines


def test_intensity_and_modality_rules():
    ct = _scan("upper_abdomen").data.astype(np.float64)
    mr = load_nifti(MR_SM).volume.data
    warn = lambda data, modality="ct": image_warnings(Volume(data, np.eye(4)), modality, "total")  # noqa: E731
    assert "all >= 0 (range 0.." in warn(np.clip(ct + 1024, 0, 4095))[0]  # a 0..4095 rescale
    assert "within 0..1" in warn((ct - ct.min()) / (ct.max() - ct.min()))[0]
    assert "within 0..255" in warn(np.clip((ct + 1000) / 2000 * 255, 0, 255).round())[0]
    assert "does not look like a CT in Hounsfield units" in warn(ct + 1024)[0]  # shifted, some values < 0
    assert "an MR image (use an MR task" in warn(mr)[0] and len(warn(mr)) == 1
    assert "looks like a CT" in warn(ct, "mr")[0] and warn(mr, "mr") == []


def test_cut_off_warning_lists_classes_at_the_faces():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[8:12, 8:12, 8:12] = 1  # well inside
    labels[0:2, 5:9, 5:9] = 2  # on a face
    labels[5:9, 5:9, 17:20] = 3  # within 3 slices of the last z face
    names = {1: "liver", 2: "spleen", 3: "aorta", 4: "heart"}
    (line,) = cut_off_warning(labels, names)
    assert line.startswith("2 classes touch the edge") and "(spleen, aorta)" in line and "liver" not in line
    labels[:, :, 0] = 4
    labels[19, 19, 10] = 1
    assert "(liver, spleen, aorta, heart)" in cut_off_warning(labels, names)[0]
    assert "(liver, spleen, ...)" in cut_off_warning(labels, names, shown=2)[0]
    assert cut_off_warning(np.zeros((9, 9, 9), np.uint8), names) == []


def _write_copy(tmp_path: Path, name: str, change) -> Path:
    img = nib.load(CT_SM)
    data = change(np.asarray(img.dataobj))
    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine, img.header), path)
    return path


def _run(src: Path, out: Path, task: str, *extra: str) -> None:
    speed = "--fast" if task == "total_mr" else "--fastest"
    assert main(["-i", str(src), "-o", str(out), "--ml", "-ta", task, speed, "-d", "cpu", *extra]) == 0
    assert out.exists()


CLI_CASES = {
    "as_is": (lambda p: CT_SM, "total", None),
    "rescaled_0_4095": (lambda p: _write_copy(p, "rescaled", lambda d: np.clip(d + 1024, 0, 4095).astype(np.uint16)),
                        "total", "not Hounsfield units"),
    "up_down": (lambda p: _write_copy(p, "up_down", lambda d: d[:, :, ::-1]), "total", "head-foot"),
    "mr_to_total": (lambda p: MR_SM, "total", "an MR image (use an MR task"),
    "ct_to_total_mr": (lambda p: CT_SM, "total_mr", "looks like a CT"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_command_warns_and_runs_to_the_end(case, use_home, tmp_path, capsys):
    make, task, words = CLI_CASES[case]
    report = tmp_path / "report.json"
    stats = ["-s"] if case == "as_is" else []  # the cut-off line is printed only with statistics
    _run(make(tmp_path), tmp_path / "seg.nii.gz", task, "-rp", str(report), *stats)
    printed = [line[len("WARNING: "):] for line in capsys.readouterr().err.splitlines()
               if line.startswith("WARNING: ")]
    image = [line for line in printed if "field of view" not in line]
    assert image == [] if words is None else len(image) == 1 and words in image[0], printed
    cut_off = [line for line in printed if "field of view" in line]
    assert len(cut_off) == (1 if stats else 0), printed
    reported = json.loads(report.read_text())["warnings"]
    assert [w for w in reported if "field of view" not in w] == image  # the report lists what was said...
    assert len([w for w in reported if "field of view" in w]) == 1  # ...and the cut-off line, printed or not


def test_checks_never_change_outputs_and_quiet_silences_them(use_home, tmp_path, capsys, monkeypatch):
    src = _write_copy(tmp_path, "left_right", lambda d: d[::-1])
    _run(src, tmp_path / "checked.nii.gz", "total", "-q", "-rp", str(tmp_path / "report.json"))
    assert capsys.readouterr().err == ""
    warnings = json.loads((tmp_path / "report.json").read_text())["warnings"]
    assert any("left-right" in w for w in warnings) and any("field of view" in w for w in warnings)
    monkeypatch.setattr(totalseg.run.steps, "image_warnings", lambda *a, **k: [])
    monkeypatch.setattr(totalseg.run.steps, "cut_off_warning", lambda *a, **k: [])
    _run(src, tmp_path / "unchecked.nii.gz", "total")
    assert "WARNING" not in capsys.readouterr().err
    checked, unchecked = nib.load(tmp_path / "checked.nii.gz"), nib.load(tmp_path / "unchecked.nii.gz")
    assert np.array_equal(np.asarray(checked.dataobj), np.asarray(unchecked.dataobj))
    assert np.array_equal(checked.affine, unchecked.affine)
