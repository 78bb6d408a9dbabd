"""DICOM input: geometry against dicom2nifti, resampling of tilted / incomplete series, decoders, bad input."""
from __future__ import annotations

import glob
import os
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from conftest import DATA, REF
from totalseg.errors import InputError
from totalseg.load.dicom import load_dicom, read_pixels, scan_dicom
from totalseg.load.nifti import load_nifti

D2N = DATA / "dicom2nifti_tests"
ROBUST = DATA / "dicom_robustness"
CT_DICOM = REF / "example_ct_dicom"

# Series that dicom2nifti converts (its outputs are stored beside them) and that form a grayscale volume.
_CONVERTED = sorted(str(Path(p).relative_to(D2N)).replace("_ground_truth_reoriented.nii.gz", "")
                    for p in glob.glob(str(D2N / "**" / "*_ground_truth_reoriented.nii.gz"), recursive=True))
# Not compared voxel for voxel: RGB (no scalar volume; rejected), a single slice (rejected), and the tilted
# series with a missing slice, whose stored output is dicom2nifti's own resampling (we resample differently).
_REJECTED = {"generic/rgb/001": "colour (RGB)", "ge/anatomical/001_single_slice": "single slice"}
_OWN_RESAMPLING = {"failing/sliceincrement/002"}


def _quiet(_):
    pass


def _assert_same_as_dicom2nifti(ours, gt: nib.Nifti1Image) -> None:
    """Our volume is dicom2nifti's output (``gt``): shape, affine within 1e-3 mm, voxel values, layout."""
    gt_data = np.asanyarray(gt.dataobj)
    gt_data = gt_data.reshape(gt_data.shape[:3])  # Philips: trailing time axis of length 1
    # In RAS (nibabel's closest canonical), both must agree: shape, affine within 1e-3 mm, voxel values.
    a = nib.as_closest_canonical(nib.Nifti1Image(ours.volume.data, ours.volume.affine))
    b = nib.as_closest_canonical(nib.Nifti1Image(gt_data, gt.affine))
    assert a.shape == b.shape
    assert np.abs(a.affine - b.affine).max() < 1e-3
    x, y = np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)
    if x.dtype.kind in "iu" and y.dtype.kind in "iu":
        assert np.array_equal(x.astype(np.int64), y.astype(np.int64))
    else:  # dicom2nifti rescales in float32
        assert np.allclose(x, y, rtol=2e-7, atol=0)
    # And our layout is dicom2nifti's (LAS), so outputs line up with the official tool's voxel for voxel.
    assert ours.volume.shape == gt_data.shape
    assert np.abs(ours.volume.affine - gt.affine).max() < 1e-3


@pytest.mark.parametrize("case", [c for c in _CONVERTED if c not in _REJECTED and c not in _OWN_RESAMPLING])
def test_geometry_matches_dicom2nifti(case):
    ours = load_dicom(D2N / case, warn=_quiet)
    _assert_same_as_dicom2nifti(ours, nib.load(D2N / f"{case}_ground_truth_reoriented.nii.gz"))


@pytest.fixture(scope="module")
def ct_by_dicom2nifti(tmp_path_factory) -> nib.Nifti1Image:
    """The example CT series converted by dicom2nifti, as the official tool converts DICOM input."""
    dicom2nifti = pytest.importorskip("dicom2nifti")
    out = tmp_path_factory.mktemp("d2n") / "ct.nii.gz"
    dicom2nifti.dicom_series_to_nifti(str(CT_DICOM), str(out), reorient_nifti=True)
    img = nib.load(out)
    return nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine)  # in memory: the folder may go


def test_example_ct_geometry_and_hounsfield_units(ct_by_dicom2nifti):
    img = load_dicom(CT_DICOM, warn=_quiet)
    _assert_same_as_dicom2nifti(img, ct_by_dicom2nifti)
    ref = nib.load(REF / "example_seg_dicom.nii.gz")  # official output: its geometry is the converted CT's
    assert img.volume.shape == ref.shape
    assert np.allclose(img.volume.affine, ref.affine, atol=1e-6)
    assert img.volume.data.dtype.kind == "i"
    # Slice order comes from positions: slice k of the volume is the file at z = -804.5 + 2k.
    by_z = {}
    for f in CT_DICOM.iterdir():
        ds = pydicom.dcmread(f)
        by_z[float(ds.ImagePositionPatient[2])] = ds.pixel_array.astype(np.int32) + int(ds.RescaleIntercept)
    for k in (0, 7, 19):
        # LAS layout: x runs along the DICOM columns (L), y against the rows (rows run P -> voxels run A).
        expected = by_z[-804.5 + 2 * k][::-1, :].T
        assert np.array_equal(img.volume.data[:, :, k], expected)
    assert img.volume.data.min() == -1024


def test_order_does_not_depend_on_file_names(tmp_path):
    """Files named against their positions still give dicom2nifti's volume."""
    case = "generic/anatomical/001"
    files = sorted((D2N / case).iterdir())
    for i, f in enumerate(reversed(files)):  # names now sort in the opposite order of the positions
        shutil.copy(f, tmp_path / f"img{i:03d}.dcm")
    _assert_same_as_dicom2nifti(load_dicom(tmp_path, warn=_quiet),
                                nib.load(D2N / f"{case}_ground_truth_reoriented.nii.gz"))


def test_zip_and_nested_folder_give_the_same_volume(tmp_path, ct_by_dicom2nifti):
    """A zip of the series and a nested folder with a stray file: dicom2nifti's volume of the plain series."""
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(CT_DICOM.iterdir()):
            z.write(f, f"patient/study/{f.name}")
    nested = tmp_path / "a" / "b"
    shutil.copytree(CT_DICOM, nested)
    (tmp_path / "a" / "README.txt").write_text("not an image")
    for source in (archive, tmp_path / "a"):
        _assert_same_as_dicom2nifti(load_dicom(source, warn=_quiet), ct_by_dicom2nifti)


def test_single_multiframe_file():
    """A multi-frame file given as a file, not as its folder: dicom2nifti's volume of the folder."""
    case = "siemens_multiframe/anatomical/001"
    img = load_dicom(next((D2N / case).iterdir()), warn=_quiet)
    _assert_same_as_dicom2nifti(img, nib.load(D2N / f"{case}_ground_truth_reoriented.nii.gz"))


def _synthetic_linear_series(src: Path, dst: Path) -> None:
    """Copy a series, replacing its pixels by f(p) = 2x + 3y + 5z (mm, patient coordinates)."""
    dst.mkdir()
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        ipp = np.array(ds.ImagePositionPatient, float)
        iop = np.array(ds.ImageOrientationPatient, float)
        dr, dc = map(float, ds.PixelSpacing)
        r, c = np.mgrid[0:ds.Rows, 0:ds.Columns]
        p = ipp + c[..., None] * dc * iop[:3] + r[..., None] * dr * iop[3:]
        value = 2 * p[..., 0] + 3 * p[..., 1] + 5 * p[..., 2]
        ds.PixelData = np.rint(value + 3000).astype(np.uint16).tobytes()
        ds.PixelRepresentation, ds.RescaleSlope, ds.RescaleIntercept = 0, 1, -3000
        ds.save_as(dst / f.name)


@pytest.mark.parametrize("case,words", [("failing/gantrytilting/001", ["tilt"]),
                                        ("failing/sliceincrement/002", ["tilt", "missing"]),
                                        ("failing/sliceincrement/001", ["missing"])])
def test_tilted_and_incomplete_series_are_resampled_exactly(case, words, tmp_path):
    """A field linear in patient coordinates survives resampling (linear interpolation) up to rounding, so
    every voxel of the orthogonal grid sits where its affine says."""
    messages = []
    img = load_dicom(D2N / case, warn=messages.append)
    assert all(any(w in m for m in messages) for w in words), messages
    load_nifti(nib.Nifti1Image(img.volume.data, img.volume.affine), warn=_quiet)  # orthogonal, valid

    _synthetic_linear_series(D2N / case, tmp_path / "s")
    lin = load_dicom(tmp_path / "s", warn=_quiet)
    assert lin.volume.shape == img.volume.shape
    data = lin.volume.data.astype(float).ravel()
    idx = np.indices(lin.volume.shape).reshape(3, -1)
    ras = lin.volume.affine[:3, :3] @ idx + lin.volume.affine[:3, 3:4]
    expected = -2 * ras[0] - 3 * ras[1] + 5 * ras[2]  # LPS x = -RAS x, y = -RAS y
    inside = data != -1024  # outside the scanned slab: air
    assert inside.mean() > 0.04
    assert np.abs(data[inside] - expected[inside]).max() <= 1.0


def test_missing_slice_keeps_measured_slices():
    case = D2N / "failing" / "sliceincrement" / "001"
    img = load_dicom(case, warn=_quiet)
    stack = img.source.to_stack(img.volume.data)  # (slice, row, column), slices by position
    assert stack.shape[0] == 5
    files = sorted(case.iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    measured = [pydicom.dcmread(f).pixel_array.astype(np.int32) - 1024 for f in files]
    for k, m in zip((0, 1, 2, 4), measured):
        assert np.array_equal(stack[k], m)
    assert np.abs(stack[3] - (measured[2] + measured[3]) / 2).max() <= 0.5


# Largest |difference| to the uncompressed reference: 0 for lossless syntaxes, MANIFEST values for lossy ones.
_LOSSY = {"J2KI": {"CT1": 352, "CT2": 402}, "JLSN": {"CT1": 4, "CT2": 4}, "jpeg_baseline.51": 1037,
          "jpeg_ls.81": 2}


@pytest.mark.parametrize("path", sorted(glob.glob(str(ROBUST / "nema_wg04" / "*.dcm")))
                         + sorted(glob.glob(str(ROBUST / "dicomparser" / "CT*.dcm"))), ids=os.path.basename)
def test_every_encoding_decodes_to_its_reference(path):
    name = os.path.basename(path)
    if name.startswith("CT0012"):
        ref, limit = ROBUST / "dicomparser" / "CT0012.explicit_little_endian.dcm", 0
        limit = next((v for k, v in _LOSSY.items() if k in name), 0)
    else:
        patient = name[:3]
        ref = ROBUST / "nema_wg04" / f"{patient}_UNC.dcm"
        limit = next((v[patient] for k, v in _LOSSY.items() if k in name and isinstance(v, dict)), 0)
    ours, expected = read_pixels(path), read_pixels(ref)
    assert ours.shape == expected.shape
    diff = np.abs(ours.astype(np.int64) - expected.astype(np.int64)).max()
    assert diff <= limit
    if limit:
        assert diff > 0  # really decoded lossy data, not the reference


def test_enhanced_ct_multiframe_volume():
    img = load_dicom(ROBUST / "dicomparser" / "CT0012.fragmented_no_bot_jpeg_ls.80.dcm", warn=_quiet)
    frames = read_pixels(ROBUST / "dicomparser" / "CT0012.explicit_little_endian.dcm")
    stack = img.source.to_stack(img.volume.data)
    assert stack.shape == frames.shape and img.volume.zooms[2] == pytest.approx(10.0)
    # Slices follow the slice normal (row x column direction), not the frame order of the file.
    ds = pydicom.dcmread(ROBUST / "dicomparser" / "CT0012.explicit_little_endian.dcm", stop_before_pixels=True)
    iop = np.array(ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    z = [np.dot(normal, np.array(f.PlanePositionSequence[0].ImagePositionPatient, float))
         for f in ds.PerFrameFunctionalGroupsSequence]
    assert np.array_equal(stack, frames[np.argsort(z)])


def test_series_choice_and_series_uid(tmp_path):
    shutil.copytree(D2N / "generic" / "anatomical" / "001", tmp_path / "mr")
    shutil.copytree(CT_DICOM, tmp_path / "ct")
    messages = []
    chosen = scan_dicom(tmp_path, warn=messages.append)
    assert chosen.modality == "CT" and len(chosen.frames) == 20  # the largest CT/MR series
    assert any("2 image series" in m and "--series_uid" in m for m in messages)
    mr_uid = str(pydicom.dcmread(next((tmp_path / "mr").iterdir())).SeriesInstanceUID)
    img = load_dicom(tmp_path, warn=_quiet, series_uid=mr_uid)
    assert img.source.modality == "MR" and img.volume.shape == (4, 256, 256)
    with pytest.raises(InputError, match="no series with SeriesInstanceUID 1.2.3"):
        scan_dicom(tmp_path, "1.2.3", warn=_quiet)


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    cases = {}
    (tmp / "empty").mkdir()
    cases["empty folder"] = (tmp / "empty", "no files found")
    (tmp / "other").mkdir()
    (tmp / "other" / "notes.txt").write_text("hello")
    shutil.copy(ROBUST / "rtutils" / "mock_data" / "rt.dcm", tmp / "other")
    cases["only non-image files"] = (tmp / "other", "no DICOM images")
    shutil.copytree(CT_DICOM, tmp / "truncated")
    victim = sorted((tmp / "truncated").iterdir())[5]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    cases["truncated file among good ones"] = (tmp / "truncated", victim.name)
    shutil.copytree(CT_DICOM, tmp / "garbled")
    victim2 = sorted((tmp / "garbled").iterdir())[7]
    data = bytearray(victim2.read_bytes())
    data[140:400] = bytes((i * 37) % 251 for i in range(260))
    victim2.write_bytes(bytes(data))
    cases["garbled header among good ones"] = (tmp / "garbled", victim2.name)
    shutil.copytree(D2N / "generic" / "anatomical" / "001", tmp / "patients")
    other = sorted((tmp / "patients").iterdir())[0]
    ds = pydicom.dcmread(other)
    ds.PatientID = "someone-else"
    ds.save_as(other)
    cases["two patients mixed"] = (tmp / "patients", "2 different patients")
    cases["mixed orientations"] = (D2N / "failing" / "sliceorientation" / "001", "2 slice orientations")
    cases["different images at one position"] = (D2N / "failing" / "notavolume" / "001", "same position")
    cases["single slice"] = (D2N / "ge" / "anatomical" / "001_single_slice", "single slice")
    cases["colour images"] = (D2N / "generic" / "rgb" / "001", "RGB")
    return cases


def test_bad_dicom_gives_one_line_errors(tmp_path):
    for what, (path, words) in _bad_inputs(tmp_path).items():
        with pytest.raises(InputError) as info:
            load_dicom(path, warn=_quiet)
        message = str(info.value)
        assert "\n" not in message, what
        assert words in message, (what, message)


def test_bad_dicom_on_the_command_line(tmp_path, use_home, capsys):
    from totalseg.cli.totalsegmentator import main

    (tmp_path / "in").mkdir()
    cases = _bad_inputs(tmp_path / "in")
    for what in ("empty folder", "only non-image files", "truncated file among good ones", "two patients mixed"):
        path, words = cases[what]
        out = tmp_path / "out" / what.replace(" ", "_")
        assert main(["-i", str(path), "-o", str(out), "-ot", "nifti", "dicom_seg", "dicom_rtstruct",
                     "--fast", "-d", "cpu", "-q"]) == 1, what
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("ERROR: ") and words in err[0], (what, err)
        assert not out.exists() and not list((tmp_path / "out").glob("**/*.*")), what
