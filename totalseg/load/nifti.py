"""Load a NIfTI input exactly as the official pipeline sees it, and reject unusable inputs early.

The official tool does ``img = nib.load(path)`` (or takes a passed ``Nifti1Image``), keeps ``[..., 0]`` of a 4D
image and then works on ``img.get_fdata()`` -- float64 values with ``scl_slope``/``scl_inter`` applied.  Every
later step must see those same values, so this loader returns them, but without a whole-volume float64 copy when
that copy would change nothing:

* **No effective scaling** (the proxy's slope is 1 and intercept 0, i.e. the header's ``scl_slope`` is NaN, 0
  or 1 and ``scl_inter`` is NaN or 0) **and an integer, float32 or float64 voxel type**: the array is returned in
  its own dtype (``np.asanyarray(img.dataobj)``, byte-swapped to native order if stored big-endian, never left
  as a memory map of the file).  The array is contiguous in the layout nibabel reads it in -- Fortran order for
  NIfTI files, as ``get_fdata()`` returns it -- and copied to C order only if it is contiguous in neither (a
  C-order copy of the 512x512x141 chest CT costs ~1 s, as much as decompressing it).  Converting it with
  ``astype(np.float64)`` gives exactly ``get_fdata()``.  Exceptions that fall back to float64: 64-bit integers
  whose magnitude exceeds 2**53 (not exactly representable in float64), float16; ``bool`` (in-memory images
  only) becomes uint8 0/1.
* **Scaling applies**: the float64 values of ``get_fdata()`` are returned (exactly those, computed the way
  nibabel computes them).

For 4D inputs only the first volume is read (a warning is emitted when there is more than one); the header copy
then describes a 3D image.  For ``.nii.gz`` files of 3D images the gzip CRC/length trailer is verified after the
data are read (nibabel alone stops reading before it, so a bit-flipped stream would load silently with wrong
voxels); this costs no extra decompression.  The input file is only read, never written.  Image objects
passed in are not modified (``get_fdata`` is called without caching); when the returned array would share
memory with the caller's in-memory array it is returned as a read-only view.
"""
from __future__ import annotations

import gzip
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Union

import nibabel as nib
import numpy as np
from nibabel.orientations import aff2axcodes, io_orientation

from totalseg.errors import InputError
from totalseg.volume import Volume

__all__ = ["InputImage", "load_nifti"]

# Largest |cos(angle)| between two axes of the voxel grid that still counts as orthogonal (no warning).  Float32
# rounding in headers written by ITK/dcm2niix gives ~1e-6; a real shear is orders of magnitude larger.  Sheared
# grids are segmented as the official tool does (see _check_affine), with a warning.
SHEAR_TOLERANCE = 1e-3
_FINITE_CHUNK = 1 << 22  # elements per np.isfinite pass (a 4 MiB boolean temporary at most)
_NIFTI_SUFFIXES = (".nii", ".nii.gz")

Source = Union[str, "os.PathLike[str]", nib.Nifti1Image, nib.Nifti2Image]


@dataclass(frozen=True)
class InputImage:
    """The validated input: its voxels and affine, a copy of its header and a name for messages."""

    volume: Volume  # 3D data + the input's affine (float64 4x4)
    header: nib.Nifti1Header  # a copy of the input's header (outputs copy it, with dtype set to uint8)
    name: str  # file path or "Nifti1Image", for messages


def _default_warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def load_nifti(source: Source, warn: Callable[[str], None] = _default_warn) -> InputImage:
    """Load and validate a NIfTI file (``.nii``/``.nii.gz``) or a nibabel NIfTI image object.

    Raises :class:`~totalseg.errors.InputError` (a one-line message saying what is wrong and what to do) for a
    missing path, a directory, a non-NIfTI or unreadable/corrupt/truncated file, fewer than 3 or more than 4
    dimensions, an empty image, a non-numeric voxel type (RGB, complex, structured), NaN/infinite voxels, a
    non-finite or singular affine.  Near-orthonormal affines (float32 rounding noise) and rotated/oblique ones
    are accepted; a sheared (non-orthogonal) affine is accepted with a warning.  See the module docstring for
    the dtype of the returned data.
    """
    if isinstance(source, nib.Nifti1Image):  # Nifti2Image is a subclass
        img, name, from_file = source, "Nifti1Image", False
    elif isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        img, gz = _open_file(name)
        try:
            return _validate_and_read(img, name, True, warn, gz)
        finally:
            if gz is not None:
                gz.close()
    else:
        raise InputError(
            f"unsupported input of type {type(source).__name__}: pass a path to a NIfTI file (.nii/.nii.gz) "
            "or a nibabel Nifti1Image"
        )
    return _validate_and_read(img, name, from_file, warn, None)


def _open_file(path: str) -> tuple[nib.Nifti1Image, gzip.GzipFile | None]:
    """nib.load the file; for .nii.gz, re-open it on our own GzipFile so that the trailer can be checked."""
    if not os.path.exists(path):
        raise InputError(f"input file not found: {path} (check the path)")
    if os.path.isdir(path):
        raise InputError(
            f"input is a directory: {path}; this loader reads a single NIfTI file (.nii or .nii.gz) -- "
            "a folder of DICOM files is not supported by it; pass a NIfTI file or convert the DICOM series first"
        )
    if not path.lower().endswith(_NIFTI_SUFFIXES):
        raise InputError(
            f"input is not a NIfTI file: {path}; a NIfTI image (.nii or .nii.gz) is expected here -- "
            "convert the image to NIfTI first"
        )
    try:
        img = nib.load(path)  # reads (and for .nii.gz decompresses) the header only
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise InputError(f"cannot open input file {path}: {_one_line(exc)}") from exc
    except MemoryError:
        raise
    except Exception as exc:  # gzip.BadGzipFile, EOFError, zlib.error, ImageFileError, HeaderDataError, ...
        raise InputError(_corrupt_message(path, exc)) from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(
            f"input is not a NIfTI image: {path} was read as {type(img).__name__}; "
            "a NIfTI-1/NIfTI-2 image (.nii or .nii.gz) is expected here -- convert it to NIfTI first"
        )
    if not path.lower().endswith(".gz"):
        return img, None
    # Same class and parsing as nib.load, but reading through a file object we hold: nibabel seeks to the data
    # and reads exactly its bytes; afterwards _drain_gzip reads the (few) remaining bytes, which makes Python's
    # gzip verify the CRC32 and length of the whole stream.
    gz = None
    try:
        gz = gzip.GzipFile(path, "rb")
        file_map = type(img).filespec_to_file_map(path)
        file_map["image"].fileobj = gz
        img = type(img).from_file_map(file_map)
    except MemoryError:
        if gz is not None:
            gz.close()
        raise
    except Exception as exc:
        if gz is not None:
            gz.close()
        raise InputError(_corrupt_message(path, exc)) from exc
    return img, gz


def _drain_gzip(gz: gzip.GzipFile) -> None:
    while gz.read(1 << 20):
        pass


def _corrupt_message(name: str, exc: BaseException) -> str:
    return (
        f"cannot read input file {name}: it is corrupt or truncated, or not a valid NIfTI file "
        f"({_one_line(exc)}); re-export or re-download it"
    )


def _validate_and_read(
    img, name: str, from_file: bool, warn: Callable[[str], None], gz: gzip.GzipFile | None
) -> InputImage:
    shape = tuple(int(n) for n in img.shape)
    ndim = len(shape)
    if ndim < 3:
        raise InputError(
            f"input {name} is {ndim}D (shape {shape}); a 3D volume is required -- a single slice cannot be segmented"
        )
    if ndim > 4:
        raise InputError(
            f"input {name} has {ndim} dimensions (shape {shape}); a 3D volume (or a 4D series, of which the first "
            "volume is used) is required -- extract the 3D volume first"
        )
    if 0 in shape:
        raise InputError(f"input {name} has no voxels (shape {shape}); pass a non-empty 3D volume")

    dataobj = img.dataobj
    dtype = np.dtype(getattr(dataobj, "dtype", img.get_data_dtype()))
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise InputError(
            f"input {name} has voxel type {_dtype_name(dtype)}, which is not a single numeric value per voxel "
            "(e.g. RGB or complex); convert it to a grayscale integer or float image first"
        )

    affine = _check_affine(img, name, warn)

    first_only = ndim == 4
    if first_only and shape[3] > 1:
        warn(f"input is 4D; using its first volume (of {shape[3]}) from {name}")
    try:
        data, shared = _read_data(img, dataobj, dtype, first_only)
        if gz is not None and not (first_only and shape[3] > 1):  # 4D: would decompress the unused volumes
            _drain_gzip(gz)
    except MemoryError:
        raise
    except Exception as exc:  # truncation / corruption surfaces only when the data are read
        raise InputError(_corrupt_message(name, exc)) from exc

    _check_finite(data, name)

    if shared and not from_file:
        data = data.view()
        data.flags.writeable = False

    header = img.header.copy()
    if first_only:
        header.set_data_shape(shape[:3])
    return InputImage(volume=Volume(data=data, affine=affine), header=header, name=name)


def _dtype_name(dtype: np.dtype) -> str:
    return str(dtype) if dtype.fields is None else f"structured {dtype.descr}"


def _check_affine(img, name: str, warn: Callable[[str], None]) -> np.ndarray:
    raw = img.affine if img.affine is not None else img.header.get_best_affine()
    affine = np.array(raw, dtype=np.float64, copy=True)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or not np.array_equal(affine[3], [0, 0, 0, 1]):
        raise InputError(
            f"input {name} has an invalid affine (NaN/infinite values or a malformed last row); "
            "fix the header's sform/qform (e.g. re-export the image)"
        )
    cols = affine[:3, :3]
    norms = np.sqrt((cols**2).sum(axis=0))
    # io_orientation drops (NaN) an axis it cannot resolve; the canonical reorientation would then fail.
    if not np.all(norms > 0) or np.linalg.det(cols) == 0 or np.isnan(io_orientation(affine)).any():
        raise InputError(
            f"input {name} has a singular affine (voxel sizes {np.round(norms, 6).tolist()} mm: zero voxel size "
            "or collapsed axes); fix the header's pixdim/sform/qform"
        )
    unit = cols / norms
    cosines = unit.T @ unit
    worst = max(abs(cosines[0, 1]), abs(cosines[0, 2]), abs(cosines[1, 2]))
    if worst > SHEAR_TOLERANCE:
        warn(_shear_message(name, affine, norms, worst))
    return affine


def _shear_message(name: str, affine: np.ndarray, norms: np.ndarray, worst_cosine: float) -> str:
    """What a sheared grid is segmented as.  The official tool (2.18.0) rebuilds the image from its affine, so
    resampling and the models' spacing use the affine's column lengths (not the header's pixdim), reorients to
    the nearest RAS axes (nibabel's io_orientation) and leaves the shear in the affine: the voxels are never
    resampled to remove it.  The pipeline does the same with Volume.zooms and prepare.orient."""
    angle = float(np.degrees(np.arccos(min(worst_cosine, 1.0))))
    sizes = " x ".join(f"{z:.4g}" for z in norms.astype(np.float32))  # as Volume.zooms
    axes = "".join(aff2axcodes(affine))
    return (
        f"input {name} has a sheared grid (axes {angle:.1f} degrees apart instead of 90); segmented on its voxel "
        f"grid as the official tool does: voxel sizes {sizes} mm (the affine's column lengths), nearest axis "
        f"orientation {axes}; outputs keep the input's affine"
    )


def _read_data(img, dataobj, dtype: np.dtype, first_only: bool) -> tuple[np.ndarray, bool]:
    """Return (data, shares_memory_with_caller's_array)."""
    slicer = (slice(None), slice(None), slice(None), 0) if first_only else ()
    if nib.is_proxy(dataobj):
        slope = float(getattr(dataobj, "slope", 1.0))
        inter = float(getattr(dataobj, "inter", 0.0))
        scaled = (slope, inter) != (1.0, 0.0)
    else:
        scaled = False  # get_fdata() of an in-memory array is a plain float64 cast (header scaling ignored)

    if scaled or dtype == np.float16:
        if not nib.is_proxy(dataobj):
            data = np.asarray(dataobj)[slicer].astype(np.float64)
        elif first_only and hasattr(dataobj, "_get_scaled"):
            # What get_fdata() computes, restricted to the first volume (same elementwise scaling arithmetic).
            data = np.asarray(dataobj._get_scaled(dtype=np.float64, slicer=slicer), dtype=np.float64)
        else:
            data = img.get_fdata(caching="unchanged")[slicer]
        return _contiguous(data), False

    raw = np.asanyarray(dataobj[slicer] if first_only else dataobj)
    if raw.dtype != dtype and raw.dtype.kind != dtype.kind:  # defensive: a proxy that scaled after all
        return _contiguous(img.get_fdata(caching="unchanged")[slicer]), False
    shared = not nib.is_proxy(dataobj)
    if isinstance(raw, np.memmap) or type(raw) is not np.ndarray:
        raw = np.array(raw, order="K", copy=True)  # detach from the file mapping / subclass
        shared = False
    if raw.dtype.kind == "b":
        return _contiguous(raw.astype(np.uint8, order="K")), False
    if not raw.dtype.isnative:
        raw = raw.astype(raw.dtype.newbyteorder("="), order="K")
        shared = False
    if not (raw.flags.c_contiguous or raw.flags.f_contiguous):
        raw = np.ascontiguousarray(raw)
        shared = False
    if raw.dtype.kind in "iu" and raw.dtype.itemsize == 8:
        limit = 2**53
        if int(raw.max()) > limit or (raw.dtype.kind == "i" and int(raw.min()) < -limit):
            return raw.astype(np.float64), False  # float64 is what the official pipeline sees here
    return raw, shared


def _contiguous(data: np.ndarray) -> np.ndarray:
    return data if data.flags.c_contiguous or data.flags.f_contiguous else np.ascontiguousarray(data)


def _check_finite(data: np.ndarray, name: str) -> None:
    if data.dtype.kind != "f":
        return
    flat = data.ravel(order="K")  # a view: data is contiguous (C or F)
    for start in range(0, flat.size, _FINITE_CHUNK):
        if not np.isfinite(flat[start : start + _FINITE_CHUNK]).all():
            bad = sum(
                int(chunk.size - np.count_nonzero(np.isfinite(chunk)))
                for chunk in (flat[i : i + _FINITE_CHUNK] for i in range(start, flat.size, _FINITE_CHUNK))
            )
            raise InputError(
                f"input {name} contains {bad} NaN or infinite voxel value(s); replace them with a finite value "
                "(e.g. the background intensity) before segmenting"
            )
