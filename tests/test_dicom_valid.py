"""DICOM SEG and RTSTRUCT outputs pass the standard's IOD validator (dciodvfy of Debian's dicom3tools).

One segmentation of the 20-slice CT series (``-ot dicom_seg dicom_rtstruct --fast``, random weights) is
checked, and the writers on sources that take their other paths: a multi-frame Enhanced CT, a series with
a missing slice (resampled grid) and a three-slice series (files not in slice order) holding every class
of the total task.
Errors must be none; the only warnings allowed are those about the source's own data, each checked to be so.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import DATA, REF
from totalseg.load.dicom import load_dicom
from totalseg.registry import get_task
from totalseg.write.dicom_seg import save_dicom_seg
from totalseg.write.rtstruct import save_rtstruct

DCIODVFY = shutil.which("dciodvfy")
pytestmark = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian package dicom3tools) is not installed")

CT_DICOM = REF / "example_ct_dicom"
ROBUST = DATA / "dicom_robustness"


def validate(path: Path) -> tuple[list[str], list[str]]:
    """dciodvfy's error and warning lines for one file."""
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    lines = [ln.strip() for ln in (run.stdout + run.stderr).splitlines() if ln.strip()]
    assert lines, "dciodvfy printed nothing"
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]


def source_warnings(source_file: Path) -> set[str]:
    """The warnings that come from the source's own patient and study data, which the outputs copy."""
    ds = pydicom.dcmread(source_file, stop_before_pixels=True)
    allowed = set()
    for keyword, name in (("PatientID", "Patient ID"), ("StudyID", "Study ID")):
        if not ds.get(keyword):  # anonymised source: empty in the output too
            allowed.add(f"Warning - Missing attribute or value that would be needed to build DICOMDIR - {name}")
    schemes = {item.get("CodingSchemeDesignator") for item in ds.get("ProcedureCodeSequence", [])}
    allowed |= {f"Warning - Unrecognized defined term <{s}> for value 1 of attribute <Coding Scheme Designator>"
                for s in schemes if s not in ("SCT", "DCM", "LN", "SRT", None)}
    if "^" not in str(ds.get("PatientName", "^")):  # old-style person name, copied as is
        allowed.add(f"Warning - Value dubious for this VR - (0x0010,0x0010) PN Patient's Name  PN [1] = "
                    f"<{ds.PatientName}> - Retired Person Name form")
    return allowed


def assert_valid(path: Path, source_file: Path, kind: str) -> None:
    errors, warnings = validate(path)
    assert errors == [], f"{kind}: {errors}"
    assert set(warnings) <= source_warnings(source_file), f"{kind}: {warnings}"
    assert pydicom.dcmread(path).Modality == {"seg": "SEG", "rtstruct": "RTSTRUCT"}[kind]


@pytest.fixture(scope="module")
def cli_outputs(fake_home, tmp_path_factory) -> Path:
    """SEG and RTSTRUCT of one run of the command line on the CT series (random weights, --fast, CPU)."""
    from totalseg.cli.totalsegmentator import main
    from weights_server import closed_port_url

    out = tmp_path_factory.mktemp("dicom_valid") / "seg"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOTALSEG_HOME_DIR", str(fake_home))
        mp.setenv("TOTALSEG_WEIGHTS_URL", closed_port_url())
        mp.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
        assert main(["-i", str(CT_DICOM), "-o", str(out), "-ot", "dicom_seg", "dicom_rtstruct", "--fast",
                     "-d", "cpu", "-q"]) == 0
    return out


def _one_output(folder: Path, pattern: str) -> Path:
    found = sorted(folder.parent.glob(pattern))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("kind", ["seg", "rtstruct"])
def test_cli_output_is_valid(cli_outputs, kind):
    path = _one_output(cli_outputs, f"{cli_outputs.name}*{kind}*.dcm")
    assert_valid(path, sorted(CT_DICOM.iterdir())[0], kind)


def test_rtstruct_frame_of_reference_is_the_source(cli_outputs):
    rt = pydicom.dcmread(_one_output(cli_outputs, f"{cli_outputs.name}*rtstruct*.dcm"))
    src = pydicom.dcmread(sorted(CT_DICOM.iterdir())[0], stop_before_pixels=True)
    assert rt.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert rt.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == src.FrameOfReferenceUID
    assert {roi.ReferencedFrameOfReferenceUID for roi in rt.StructureSetROISequence} == {src.FrameOfReferenceUID}


def _threshold_labels(image) -> np.ndarray:
    """Two classes from the intensities: soft tissue as spleen (1), dense tissue and bone as liver (5)."""
    data = np.asarray(image.volume.data)
    labels = np.zeros(data.shape, dtype=np.uint8)
    labels[(data > -200) & (data <= 150)] = 1
    labels[data > 150] = 5
    return labels


def _every_class(image, classes: dict[int, str]) -> np.ndarray:
    """Every class of the task in its own square patch of each slice (codes of all classes checked)."""
    shape = np.asarray(image.volume.data).shape
    side = int(np.ceil(np.sqrt(len(classes))))
    rows = np.minimum(np.arange(shape[0]) * side // shape[0], side - 1)
    cols = np.minimum(np.arange(shape[1]) * side // shape[1], side - 1)
    tile = rows[:, None] * side + cols[None, :]
    ids = np.array(sorted(classes) + [0] * (side * side - len(classes)), dtype=np.uint8)
    return np.repeat(ids[tile][:, :, None], shape[2], axis=2)


def _series_without_one_slice(tmp_path: Path) -> Path:
    files = sorted(CT_DICOM.iterdir(), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True)
                                                            .ImagePositionPatient[2]))
    folder = tmp_path / "gap"
    folder.mkdir()
    for f in files[:3] + files[4:7]:  # six slices, the fourth missing
        shutil.copy(f, folder / f.name)
    return folder


@pytest.mark.parametrize("case", ["multi_frame", "missing_slice", "three_slices"])
def test_writers_are_valid_on_other_sources(case, tmp_path):
    if case == "multi_frame":
        source = ROBUST / "dicomparser" / "CT0012.explicit_little_endian.dcm"
    elif case == "missing_slice":
        source = _series_without_one_slice(tmp_path)
    else:
        source = tmp_path / "ct"
        source.mkdir()
        for f in sorted((ROBUST / "dcmqi_ct_liver_seg").glob("ct_0*.dcm")):
            shutil.copy(f, source / f.name)
    image = load_dicom(source, warn=lambda _: None)
    assert image.source.on_source_grid == (case != "missing_slice")
    classes = dict(get_task("total").classes)
    labels = _every_class(image, classes) if case == "three_slices" else _threshold_labels(image)
    assert len(np.unique(labels)) > 1
    first = source if source.is_file() else sorted(source.iterdir())[0]
    assert_valid(save_dicom_seg(labels, image.source, classes, tmp_path / "seg.dcm"), first, "seg")
    assert_valid(save_rtstruct(labels, image.source, classes, tmp_path / "rt.dcm"), first, "rtstruct")
