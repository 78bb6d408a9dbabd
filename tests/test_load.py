"""Tests for totalseg.load.nifti: exact values (as the official get_fdata() sees them) and one-line errors."""
from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import DATA, REF
from totalseg.errors import InputError
from totalseg.load.nifti import SHEAR_TOLERANCE, InputImage, load_nifti

EXTRA = DATA / "extra_ct"
AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])


def _save(tmp_path: Path, data, affine=AFFINE, name="img.nii.gz", header=None, **kw) -> Path:
    img = nib.Nifti1Image(data, affine, header=header, **kw)
    path = tmp_path / name
    nib.save(img, path)
    return path


def _write_scaled(path: Path, data: np.ndarray, slope: float, inter: float, affine=AFFINE, qform=True) -> Path:
    """Write a NIfTI with the given raw voxels and scl_slope/scl_inter (nib.save would recompute the scaling)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(data.dtype)
    if qform:
        hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr["scl_slope"], hdr["scl_inter"] = slope, inter
    hdr["vox_offset"] = 352
    payload = hdr.binaryblock + b"\0" * 4 + np.asarray(data).astype(data.dtype.newbyteorder("<")).tobytes(order="F")
    path.write_bytes(gzip.compress(payload) if path.name.endswith(".gz") else payload)
    return path


def _error(source, match: str | None = None) -> str:
    with pytest.raises(InputError) as info:
        load_nifti(source)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg and len(msg) > 20
    if match is not None:
        assert match.lower() in msg.lower(), msg
    return msg


def _ct(shape=(8, 9, 10), dtype=np.int16) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(-1024, 2000, size=shape).astype(dtype)


# ---------------------------------------------------------------- real scans


@pytest.mark.parametrize(
    "path, shape, dtype",
    [
        (REF / "example_ct.nii.gz", (122, 101, 112), np.int32),
        (REF / "example_ct_sm.nii.gz", (122, 101, 30), np.int16),
        (REF / "example_mr_sm.nii.gz", (117, 91, 20), np.int16),
        (EXTRA / "itkelastix_chest_ct.nii.gz", (512, 512, 141), np.int16),
        (EXTRA / "niivue_CT_pitch.nii.gz", (175, 248, 58), np.uint8),  # oblique (rotated, orthonormal) affine
    ],
    ids=lambda v: v.name if isinstance(v, Path) else None,
)
def test_real_scans_equal_get_fdata(path: Path, shape, dtype):
    if not path.exists():
        pytest.skip(f"{path} not available")
    before = path.stat().st_mtime_ns
    inp = load_nifti(path)
    ref = nib.load(path)
    assert isinstance(inp, InputImage)
    assert inp.name == str(path)
    assert inp.volume.shape == shape
    assert inp.volume.data.dtype == dtype
    assert inp.volume.data.flags.f_contiguous and type(inp.volume.data) is np.ndarray  # layout as nibabel reads it
    assert np.array_equal(inp.volume.data, ref.get_fdata())
    assert inp.volume.affine.dtype == np.float64 and np.array_equal(inp.volume.affine, ref.affine)
    assert inp.header == ref.header and inp.header is not ref.header
    assert path.stat().st_mtime_ns == before


# ---------------------------------------------------------------- values and dtypes


def test_scaled_int16_gives_float64_get_fdata(tmp_path):
    path = _write_scaled(tmp_path / "s.nii.gz", _ct(), 2.0, -1.0)
    img = nib.load(path)
    assert img.dataobj.slope == 2.0 and img.dataobj.inter == -1.0
    inp = load_nifti(path)
    assert inp.volume.data.dtype == np.float64
    assert np.array_equal(inp.volume.data, img.get_fdata())


def test_fractional_scaling_exact(tmp_path):
    path = _write_scaled(tmp_path / "frac.nii", _ct(), 0.1, -1024.3)
    ref = nib.load(path)
    assert ref.dataobj.slope != 1.0
    inp = load_nifti(path)
    assert inp.volume.data.dtype == np.float64
    assert np.array_equal(inp.volume.data, ref.get_fdata())


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32, np.int64, np.float32, np.float64]
)
def test_unscaled_types_keep_their_dtype(tmp_path, dtype):
    data = (_ct() % 100).astype(dtype)
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    path = _save(tmp_path, data, header=hdr, name="t.nii")  # uncompressed: nibabel memory-maps it
    ref = nib.load(path)
    inp = load_nifti(path)
    assert inp.volume.data.dtype == dtype
    assert type(inp.volume.data) is np.ndarray and inp.volume.data.flags.f_contiguous  # no memmap of the file
    assert np.array_equal(inp.volume.data, ref.get_fdata())
    inp.volume.data[0, 0, 0] = 7  # writeable private copy; the file is untouched
    assert np.array_equal(np.asanyarray(nib.load(path).dataobj), data)


def test_slope_one_float32_is_raw(tmp_path):
    data = np.linspace(-5, 5, 8 * 9 * 10, dtype=np.float32).reshape(8, 9, 10)
    path = _save(tmp_path, data)
    img = nib.load(path)
    assert img.dataobj.slope == 1.0
    inp = load_nifti(path)
    assert inp.volume.data.dtype == np.float32
    assert np.array_equal(inp.volume.data, img.get_fdata())


def test_big_endian_is_native(tmp_path):
    data = _ct()
    hdr = nib.Nifti1Header(endianness=">")
    hdr.set_data_dtype(np.int16)
    path = _save(tmp_path, data, name="be.nii", header=hdr)
    assert nib.load(path).get_data_dtype().byteorder == ">"
    inp = load_nifti(path)
    assert inp.volume.data.dtype == np.int16 and inp.volume.data.dtype.isnative
    assert np.array_equal(inp.volume.data, nib.load(path).get_fdata())


def test_huge_int64_falls_back_to_float64():
    data = np.zeros((4, 4, 4), np.int64)
    data[1, 2, 3] = 2**60 + 1
    img = nib.Nifti1Image(data, AFFINE, dtype=np.int64)
    inp = load_nifti(img)
    assert inp.volume.data.dtype == np.float64
    assert np.array_equal(inp.volume.data, img.get_fdata())


def test_four_d_first_volume_and_warning(tmp_path):
    data = np.stack([_ct(), _ct() + 1, _ct() + 2], axis=-1)
    path = _save(tmp_path, data)
    warnings_seen: list[str] = []
    inp = load_nifti(path, warn=warnings_seen.append)
    assert len(warnings_seen) == 1 and "4D" in warnings_seen[0] and "first volume" in warnings_seen[0]
    assert inp.volume.shape == (8, 9, 10) and inp.volume.data.dtype == np.int16
    assert np.array_equal(inp.volume.data, nib.load(path).get_fdata()[..., 0])
    assert inp.header.get_data_shape() == (8, 9, 10)


def test_four_d_scaled_first_volume_exact(tmp_path):
    data = np.stack([_ct(), _ct() + 1], axis=-1)
    path = _write_scaled(tmp_path / "s4.nii.gz", data, 0.37, -3.3)
    ref = nib.load(path)
    assert ref.dataobj.slope != 1.0
    inp = load_nifti(path, warn=lambda m: None)
    assert inp.volume.data.dtype == np.float64
    assert np.array_equal(inp.volume.data, ref.get_fdata()[..., 0])


def test_single_volume_4d_no_warning(tmp_path):
    path = _save(tmp_path, _ct()[..., None])
    seen: list[str] = []
    inp = load_nifti(path, warn=seen.append)
    assert seen == [] and inp.volume.shape == (8, 9, 10)


# ---------------------------------------------------------------- image objects


def test_image_objects_accepted():
    data = _ct()
    img = nib.Nifti1Image(data, AFFINE)
    inp = load_nifti(img)
    assert inp.name == "Nifti1Image"
    assert np.array_equal(inp.volume.data, img.get_fdata())
    assert not inp.volume.data.flags.writeable  # shares the caller's array: read-only view
    assert img.in_memory and np.array_equal(img.dataobj, data)
    img2 = nib.Nifti2Image(data.astype(np.float32), AFFINE)
    inp2 = load_nifti(img2)
    assert inp2.volume.data.dtype == np.float32 and isinstance(inp2.header, nib.Nifti2Header)


def test_proxy_image_object_not_cached(tmp_path):
    path = _save(tmp_path, _ct())
    img = nib.load(path)
    inp = load_nifti(img)
    assert inp.name == "Nifti1Image"
    assert not img.in_memory
    assert np.array_equal(inp.volume.data, img.get_fdata())


def test_image_object_checks_apply():
    bad = _ct().astype(np.float32)
    bad[1, 1, 1] = np.nan
    _error(nib.Nifti1Image(bad, AFFINE), "NaN")
    _error(nib.Nifti1Image(_ct()[:, :, 0], AFFINE), "2D")


def test_other_source_type():
    _error(np.zeros((3, 3, 3)), "NIfTI")


# ---------------------------------------------------------------- geometry


def test_almost_orthonormal_affine_accepted(tmp_path):
    rng = np.random.default_rng(1)
    aff = AFFINE.copy()
    aff[:3, :3] += rng.normal(scale=1e-7, size=(3, 3))
    path = _save(tmp_path, _ct(), affine=aff)
    inp = load_nifti(path)
    assert np.allclose(inp.volume.affine, aff, atol=1e-6)


def test_rotated_orthonormal_accepted(tmp_path):
    t = np.radians(30)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.8, 0.8, 2.5])
    inp = load_nifti(_save(tmp_path, _ct(), affine=aff))
    assert np.allclose(inp.volume.affine, aff, atol=1e-6)


def test_sheared_affine_accepted_with_one_warning(tmp_path):
    """A sheared grid loads as it is (voxels and affine untouched) with one line saying what is assumed."""
    aff = AFFINE.copy()
    aff[0, 2] = 0.5  # z axis leans along x: gantry-tilt-like shear
    path = _save(tmp_path, _ct(), affine=aff)
    seen: list[str] = []
    inp = load_nifti(path, warn=seen.append)
    assert np.array_equal(inp.volume.data, _ct()) and np.allclose(inp.volume.affine, aff, atol=1e-6)
    assert len(seen) == 1 and "\n" not in seen[0], seen
    angle = np.degrees(np.arccos(0.5 / np.hypot(0.5, 3.0)))  # between the x and the leaning z axis
    assert f"axes {angle:.1f} degrees apart" in seen[0] and "sheared" in seen[0]
    assert "1.5 x 1.5 x 3.041 mm" in seen[0] and "RAS" in seen[0] and "affine" in seen[0]


def test_near_orthogonal_affine_no_warning(tmp_path):
    aff = AFFINE.copy()
    aff[0, 2] = 3.0 * 0.5 * SHEAR_TOLERANCE  # float noise, well inside the tolerance
    seen: list[str] = []
    load_nifti(_save(tmp_path, _ct(), affine=aff), warn=seen.append)
    assert seen == []


def test_collapsed_axes_rejected(tmp_path):
    """Two parallel axes (a singular affine) stay refused, as a shear of 90 degrees cannot be segmented."""
    aff = AFFINE.copy()
    aff[:3, 1] = aff[:3, 0]
    path = _write_scaled(tmp_path / "c.nii.gz", _ct(), 1.0, 0.0, affine=aff, qform=False)
    _error(path, "singular")


@pytest.mark.parametrize("bad", ["zero", "nan", "inf"])
def test_bad_affine_rejected(tmp_path, bad):
    aff = AFFINE.copy()
    if bad == "zero":
        aff[1, 1] = 0.0  # nibabel cannot build a qform from this; write it as an sform-only file
        _error(_write_scaled(tmp_path / "z.nii.gz", _ct(), 1.0, 0.0, affine=aff, qform=False), "singular")
    else:
        aff[0, 3] = np.nan if bad == "nan" else np.inf
        _error(nib.Nifti1Image(_ct(), aff), "affine")


# ---------------------------------------------------------------- paths and files


def test_missing_path(tmp_path):
    msg = _error(tmp_path / "nope.nii.gz", "input file not found")
    assert "nope.nii.gz" in msg


def test_directory_mentions_dicom(tmp_path):
    msg = _error(tmp_path, "directory")
    assert "DICOM" in msg and "NIfTI" in msg


@pytest.mark.parametrize("name", ["scan.mha", "scan.zip", "scan.txt"])
def test_non_nifti_suffix(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"hello")
    msg = _error(p, "not a NIfTI file")
    assert ".nii" in msg and ".nii.gz" in msg


def test_analyze_pair_rejected(tmp_path):
    img = nib.AnalyzeImage(_ct(), AFFINE)
    nib.save(img, tmp_path / "a.img")
    hdr = tmp_path / "a.hdr"
    # an Analyze header renamed to .nii is read as Analyze, not NIfTI
    p = tmp_path / "a.nii"
    p.write_bytes(hdr.read_bytes() + b"\0" * 4 + (tmp_path / "a.img").read_bytes())
    _error(p, "NIfTI")


def test_garbage_nii_gz(tmp_path):
    p = tmp_path / "g.nii.gz"
    p.write_bytes(b"this is not gzip at all" * 20)
    _error(p, "cannot read input file")


def test_plain_text_nii(tmp_path):
    p = tmp_path / "t.nii"
    p.write_bytes(b"x" * 10)
    _error(p, "cannot read input file")


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.999])
def test_truncated_gz_data(tmp_path, fraction):
    path = _save(tmp_path, _ct((40, 40, 40)))
    blob = path.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(blob[: int(len(blob) * fraction)])
    nib.load(cut)  # the header alone still reads fine: the error must come from reading the data
    msg = _error(cut, "corrupt or truncated")
    assert "cut.nii.gz" in msg


def test_truncated_gz_header(tmp_path):
    path = _save(tmp_path, _ct())
    cut = tmp_path / "h.nii.gz"
    cut.write_bytes(path.read_bytes()[:60])
    _error(cut, "cannot read input file")


def _gz_of_noise(tmp_path: Path) -> bytearray:
    raw = _save(tmp_path, _ct((40, 40, 40)), name="r.nii").read_bytes()
    return bytearray(gzip.compress(raw))  # noise barely compresses: bit flips decode silently to wrong voxels


@pytest.mark.parametrize("position", [0.3, 0.5, 0.8])
def test_bit_flipped_gz_stream(tmp_path, position):
    blob = _gz_of_noise(tmp_path)
    blob[int(len(blob) * position)] ^= 0x55
    p = tmp_path / "c.nii.gz"
    p.write_bytes(bytes(blob))
    _error(p, "corrupt")


def test_bad_gz_crc(tmp_path):
    blob = _gz_of_noise(tmp_path)
    blob[-8] ^= 0xFF  # CRC32 of the trailer
    p = tmp_path / "crc.nii.gz"
    p.write_bytes(bytes(blob))
    msg = _error(p, "corrupt")
    assert "CRC" in msg


def test_gz_with_4d_reads_first_volume(tmp_path):
    path = _save(tmp_path, np.stack([_ct((30, 30, 30))] * 3, axis=-1))
    assert np.array_equal(load_nifti(path, warn=lambda m: None).volume.data, nib.load(path).get_fdata()[..., 0])


def test_truncated_uncompressed(tmp_path):
    path = _save(tmp_path, _ct((20, 20, 20)), name="u.nii")
    blob = path.read_bytes()
    cut = tmp_path / "ucut.nii"
    cut.write_bytes(blob[: len(blob) // 2])
    _error(cut, "corrupt or truncated")


def test_input_file_unchanged(tmp_path):
    path = _save(tmp_path, _ct(), name="keep.nii")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    inp = load_nifti(path)
    inp.volume.data[...] = 0
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


# ---------------------------------------------------------------- content checks


def test_two_d_rejected(tmp_path):
    msg = _error(_save(tmp_path, _ct()[:, :, 0]), "2D")
    assert "3D" in msg


def test_five_d_rejected(tmp_path):
    _error(_save(tmp_path, _ct((4, 4, 4, 2, 2))), "5 dimensions")


def test_empty_rejected():
    _error(nib.Nifti1Image(np.zeros((4, 0, 4), np.int16), AFFINE), "no voxels")


def test_rgb_rejected(tmp_path):
    rgb = np.zeros((4, 5, 6), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = _save(tmp_path, rgb, name="rgb.nii.gz")
    assert nib.load(path).get_data_dtype().fields is not None
    _error(path, "RGB")


def test_complex_rejected(tmp_path):
    _error(_save(tmp_path, np.ones((4, 5, 6), np.complex64)), "numeric")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_rejected(tmp_path, value, dtype):
    data = _ct().astype(dtype)
    data[3, 4, 5] = value
    data[7, 8, 9] = value
    msg = _error(_save(tmp_path, data), "NaN or infinite")
    assert "contains 2 " in msg


@pytest.mark.parametrize("name", ["n2.nii", "n2.nii.gz"])
def test_nifti2_file(tmp_path, name):
    data = _ct()
    path = tmp_path / name
    nib.save(nib.Nifti2Image(data, AFFINE), path)
    inp = load_nifti(path)
    assert isinstance(inp.header, nib.Nifti2Header)
    assert inp.volume.data.dtype == np.int16 and np.array_equal(inp.volume.data, nib.load(path).get_fdata())
