"""DICOM end to end (oracle parity) and DICOM SEG / RTSTRUCT outputs read back with independent readers."""
from __future__ import annotations

import json

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from conftest import DATA, ORACLE, REF
from parity import assert_image_parity, dice
from totalseg.cli.totalsegmentator import main
from totalseg.load.dicom import load_dicom
from totalseg.registry import get_task
from totalseg.write.dicom_seg import save_dicom_seg
from totalseg.write.labelmap import load_multilabel_nifti
from totalseg.write.rtstruct import save_rtstruct

CT_DICOM = REF / "example_ct_dicom"
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _quiet(_):
    pass


@pytest.fixture(scope="module")
def ct():
    """The 20-slice CT series and a real segmentation of it (official model output, 31 classes)."""
    img = load_dicom(CT_DICOM, warn=_quiet)
    labels = np.asanyarray(nib.load(REF / "example_seg_dicom.nii.gz").dataobj)
    return img, labels, dict(get_task("total").classes)


def test_dicom_fast_ml_matches_oracle(use_home, tmp_path):
    case = next(c for c in json.loads((ORACLE / "cases.json").read_text()) if c["name"] == "dicom_fast_ml")
    args = [a.replace("{ref}", str(REF)).replace("{out}", str(tmp_path)) for a in case["args"]]
    assert main(args + ["-d", "cpu", "-q"]) == 0
    assert_image_parity(tmp_path / "dicom_fast_ml.nii.gz", ORACLE / "dicom_fast_ml.nii.gz")
    assert load_multilabel_nifti(tmp_path / "dicom_fast_ml.nii.gz")[1] == \
        load_multilabel_nifti(ORACLE / "dicom_fast_ml.nii.gz")[1]


def _on_grid(array: np.ndarray, affine_lps: np.ndarray, target: nib.Nifti1Image) -> np.ndarray:
    """Place ``array`` (index (slice, row, column) -> LPS by ``affine_lps``) on ``target``'s voxel grid."""
    to_target = np.linalg.inv(target.affine) @ LPS @ affine_lps
    assert np.allclose(to_target[:3, :3], np.rint(to_target[:3, :3]), atol=1e-4)  # same grid, axes permuted
    idx = np.indices(array.shape).reshape(3, -1)
    pos = np.rint(to_target[:3, :3] @ idx + to_target[:3, 3:4]).astype(int)
    out = np.zeros(target.shape, dtype=array.dtype)
    inside = np.all((pos >= 0) & (pos < np.array(target.shape)[:, None]), axis=0)
    assert inside.all()
    out[tuple(pos)] = array.reshape(-1)
    return out


def test_dicom_seg_round_trip_is_exact(ct, tmp_path):
    img, labels, classes = ct
    path = save_dicom_seg(labels, img.source, classes, tmp_path / "seg.dcm")
    seg = hd.seg.segread(path)
    names = {int(s.SegmentNumber): s.SegmentLabel for s in seg.SegmentSequence}
    present = sorted(int(k) for k in np.unique(labels) if k)
    assert list(names.values()) == [classes[k] for k in present]  # one segment per class present
    by_name = {v: k for k, v in classes.items()}
    vol = seg.get_volume(combine_segments=True, relabel=False)
    lut = np.zeros(max(names) + 1, dtype=np.uint8)
    for number, name in names.items():
        lut[number] = by_name[name]
    target = nib.Nifti1Image(labels, img.volume.affine)
    placed = _on_grid(lut[vol.array], vol.affine, target)
    assert np.array_equal(placed, labels)
    # Codes: SNOMED CT from the table, with laterality as a type modifier.
    liver = next(s for s in seg.SegmentSequence if s.SegmentLabel == "liver")
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    rib = next(s for s in seg.SegmentSequence if s.SegmentLabel == "rib_left_7")
    assert rib.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Left"


def _rasterise(points_index: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Even-odd fill of polygons (vertex coordinates (row, column)) at pixel centres, one scanline per row."""
    out = np.zeros(shape, dtype=bool)
    cols = np.arange(shape[1])
    for row in range(shape[0]):
        crossings = []
        for poly in points_index:
            a, b = poly, np.roll(poly, -1, axis=0)
            hit = ((a[:, 0] <= row) & (b[:, 0] > row)) | ((b[:, 0] <= row) & (a[:, 0] > row))
            ya, xa, yb, xb = a[hit, 0], a[hit, 1], b[hit, 0], b[hit, 1]
            crossings.extend((xa + (row - ya) * (xb - xa) / (yb - ya)).tolist())
        crossings.sort()
        for lo, hi in zip(crossings[::2], crossings[1::2]):
            out[row] ^= (cols > lo) & (cols < hi)
    return out


def test_rtstruct_contours_rasterise_back(ct, tmp_path):
    img, labels, classes = ct
    path = save_rtstruct(labels, img.source, classes, tmp_path / "rt.dcm")
    rt = pydicom.dcmread(path)
    # It references the source series: frame of reference and every CT image.
    first = pydicom.dcmread(next(CT_DICOM.iterdir()), stop_before_pixels=True)
    ref_for = rt.ReferencedFrameOfReferenceSequence[0]
    assert ref_for.FrameOfReferenceUID == first.FrameOfReferenceUID
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in CT_DICOM.iterdir()]
    z_of = {str(h.file_meta.MediaStorageSOPInstanceUID): float(h.ImagePositionPatient[2]) for h in headers}
    sops = set(z_of)
    series = ref_for.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert {i.ReferencedSOPInstanceUID for i in series.ContourImageSequence} == sops
    names = {r.ROINumber: r.ROIName for r in rt.StructureSetROISequence}
    assert sorted(names.values()) == sorted(classes[int(k)] for k in np.unique(labels) if k)
    to_voxel = np.linalg.inv(img.volume.affine) @ LPS  # LPS mm -> our voxel (x, y, slice)
    checked = 0
    for roi in rt.ROIContourSequence:
        name = names[roi.ReferencedROINumber]
        label = next(k for k, v in classes.items() if v == name)
        truth = labels == label
        polys_by_slice: dict[int, list[np.ndarray]] = {}
        for contour in roi.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            pts = np.asarray(contour.ContourData, float).reshape(-1, 3)
            # ... on the plane of the image it references
            assert np.allclose(pts[:, 2], z_of[contour.ContourImageSequence[0].ReferencedSOPInstanceUID], atol=1e-3)
            vox = (to_voxel[:3, :3] @ pts.T + to_voxel[:3, 3:4]).T
            k = int(np.rint(vox[0, 2]))
            assert np.allclose(vox[:, 2], k, atol=1e-3)  # planar, in a slice of the CT
            polys_by_slice.setdefault(k, []).append(vox[:, :2])
        ours = np.zeros_like(truth)
        for k, polys in polys_by_slice.items():
            ours[:, :, k] = _rasterise(polys, truth.shape[:2])
        if truth.sum() >= 100:
            assert dice(ours, truth) >= 0.95, name
            checked += 1
    assert checked >= 20


def test_outputs_reference_source_series(tmp_path):
    """A CT with full UIDs: SEG frames point at their source images, whatever the file order."""
    folder = DATA / "dicom_robustness" / "dcmqi_ct_liver_seg"
    (tmp_path / "ct").mkdir()
    for name in ("ct_01.dcm", "ct_02.dcm", "ct_03.dcm"):
        (tmp_path / "ct" / name).write_bytes((folder / name).read_bytes())
    img = load_dicom(tmp_path / "ct", warn=_quiet)
    labels = (img.volume.data > 100).astype(np.uint8) * 5  # "liver" = bright voxels
    seg = hd.seg.segread(save_dicom_seg(labels, img.source, {5: "liver"}, tmp_path / "seg.dcm"))
    source = {str(pydicom.dcmread(tmp_path / "ct" / n).SOPInstanceUID): pydicom.dcmread(tmp_path / "ct" / n)
              for n in ("ct_01.dcm", "ct_02.dcm", "ct_03.dcm")}
    any_ct = next(iter(source.values()))
    assert seg.FrameOfReferenceUID == any_ct.FrameOfReferenceUID
    assert seg.StudyInstanceUID == any_ct.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == any_ct.SeriesInstanceUID
    for uid, ds in source.items():
        expected = (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)) > 100
        got = seg.get_pixels_by_source_instance([uid], combine_segments=True, skip_overlap_checks=True)[0]
        assert np.array_equal(got > 0, expected)


def test_resampled_series_seg_has_the_volume_geometry(tmp_path):
    img = load_dicom(DATA / "dicom2nifti_tests" / "failing" / "sliceincrement" / "001", warn=_quiet)
    labels = np.zeros(img.volume.shape, np.uint8)
    labels[100:300, 150:350, :] = 1
    seg = hd.seg.segread(save_dicom_seg(labels, img.source, {1: "spleen"}, tmp_path / "seg.dcm"))
    vol = seg.get_volume(combine_segments=True)
    placed = _on_grid(vol.array, vol.affine, nib.Nifti1Image(labels, img.volume.affine))
    assert np.array_equal(placed, labels)


def test_mr_series_all_output_types(use_home, tmp_path, capsys):
    """MR DICOM with the default task runs total_mr (with a notice); several types get the official names."""
    src = DATA / "dicom2nifti_tests" / "generic" / "anatomical" / "001"
    out = tmp_path / "res" / "mr.dcm"
    assert main(["-i", str(src), "-o", str(out), "-ot", "nifti,dicom_seg", "dicom", "--fast", "-d", "cpu"]) == 0
    assert "total_mr instead of total" in capsys.readouterr().err
    folder = tmp_path / "res"
    # As the official 2.18.0 names them (checked with it on example_ct_dicom and -o my.seg.dcm: my.nii.gz,
    # my_rtstruct.dcm, my_seg.dcm): the name of -o up to its first dot.
    assert sorted(p.name for p in folder.iterdir()) == ["mr.nii.gz", "mr_rtstruct.dcm", "mr_seg.dcm"]
    nifti = nib.load(folder / "mr.nii.gz")
    names = set(load_multilabel_nifti(nifti)[1].values())
    assert "liver" in names and "lung_left" in names  # the total_mr table
    seg = hd.seg.segread(folder / "mr_seg.dcm")
    present = {int(k) for k in np.unique(np.asanyarray(nifti.dataobj)) if k}
    assert seg.number_of_segments == len(present)


def test_dicom_output_needs_dicom_input(tmp_path, capsys):
    out = tmp_path / "seg.dcm"
    assert main(["-i", str(REF / "example_ct_sm.nii.gz"), "-o", str(out), "-ot", "dicom_seg", "-d", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a DICOM input" in err[0]
    assert not out.exists()


def test_single_outputs_get_the_official_file_names(use_home, tmp_path, capsys):
    """One RT structure set: -o with .dcm added (the official writer adds it); --ml with an -o without suffix:
    <o>.nii, an uncompressed NIfTI (the official writer, nibabel, adds it), with a notice."""
    assert main(["-i", str(CT_DICOM), "-o", str(tmp_path / "rt"), "-ot", "dicom_rtstruct", "--fastest", "-d", "cpu",
                 "-q"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rt.dcm"]
    assert pydicom.dcmread(tmp_path / "rt.dcm").Modality == "RTSTRUCT"
    ml = tmp_path / "ml"
    ml.mkdir()
    assert main(["-i", str(REF / "example_ct_sm.nii.gz"), "-o", str(ml / "seg"), "--ml", "--fastest", "-d",
                 "cpu"]) == 0
    assert "writing" in capsys.readouterr().err and sorted(p.name for p in ml.iterdir()) == ["seg.nii"]
    with open(ml / "seg.nii", "rb") as f:
        assert f.read(2) != b"\x1f\x8b"  # not gzip
    names = load_multilabel_nifti(nib.load(ml / "seg.nii"))[1]
    assert names[5] == "liver"
