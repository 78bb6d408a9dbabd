"""Load a DICOM series (folder, zip or one multi-frame file) as the same ``InputImage`` the NIfTI loader gives.

Steps: read every file's header, group into series and pick one (:mod:`.dicom_series`), drop localizers, check
that all slices share one orientation, order them along the slice normal, decode the pixels (pydicom with the
pylibjpeg plugins for compressed transfer syntaxes) and apply RescaleSlope/RescaleIntercept (Hounsfield units
for CT), drop duplicate slices, and build a regular grid -- resampling when slices are missing, unevenly spaced
or tilted (:mod:`.dicom_geometry`).  The volume comes out in dicom2nifti's LAS layout with a RAS affine (what the
official tool segments), and :class:`DicomSource` keeps the headers, UIDs and grid needed to write DICOM SEG and
RTSTRUCT files that overlay the source series.

Integer-valued rescaling (slope 1, integer intercept -- nearly every CT) keeps an integer array; any other
rescaling gives float64, exactly ``stored * slope + intercept``.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from totalseg.errors import InputError
from totalseg.load.dicom_files import FileRef, is_dicom_input, open_archive, read_full, scan_files
from totalseg.load.dicom_geometry import Grid, check_orientation, las_orientation, regular_grid, \
    resample_to_grid, sort_slices
from totalseg.load.dicom_series import Frame, Series, select_series
from totalseg.load.nifti import InputImage
from totalseg.volume import Volume

__all__ = ["DicomImage", "DicomSource", "is_dicom_input", "load_dicom", "read_pixels", "scan_dicom"]

DUPLICATE_DISTANCE = 1e-2  # mm: slices closer than this are at the same position
# Patient/study attributes (type 2: present, possibly empty) that derived objects copy from their source.
_TYPE2_REFERENCE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "AccessionNumber", "StudyID")


def _default_warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


@dataclass(frozen=True)
class DicomSource:
    """What DICOM outputs need to reference and overlay the source series."""

    series: Series  # headers of the source files (UIDs, patient/study data)
    grid: Grid  # the grid of the loaded volume, in DICOM terms
    slice_frames: tuple[Frame, ...] | None  # source frame of each grid slice; None if resampled
    ornt: np.ndarray  # nibabel orientation: native (column, row, slice) voxel order -> volume layout

    @property
    def modality(self) -> str:
        return self.series.modality

    @property
    def on_source_grid(self) -> bool:
        return self.slice_frames is not None

    def reference_headers(self, warn: Callable[[str], None] = _default_warn) -> dict[FileRef, object]:
        """Copies of the source headers with every UID a reference needs (SEG/RTSTRUCT), by file.

        Anonymisers sometimes blank SOP/study/series UIDs; SOP UIDs are then taken from the file meta, and
        missing study/series/frame-of-reference UIDs are derived deterministically from the files (same values
        in every output of a run), with a warning, since viewers cannot link such outputs automatically.
        """
        from pydicom.uid import generate_uid

        headers = {ref: ds.copy() for ref, ds in self.series.headers}
        seed = sorted(_first_text(ds, "SOPInstanceUID", "MediaStorageSOPInstanceUID") or ref.name
                      for ref, ds in headers.items())
        generated = []
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            values = {str(ds.get(keyword, "") or "").strip() for ds in headers.values()}
            known = sorted(values - {""})
            uid = known[0] if known else generate_uid(entropy_srcs=[keyword, *seed])
            if not known:
                generated.append(keyword)
            for ds in headers.values():
                if not str(ds.get(keyword, "") or "").strip():
                    setattr(ds, keyword, uid)
        for ds in headers.values():
            for keyword in _TYPE2_REFERENCE:  # may be empty, but must be present in what references them
                if keyword not in ds:
                    setattr(ds, keyword, "")
            if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
                del ds.SpecificCharacterSet  # empty means the default repertoire; writers reject ''
            if not ds.get("SliceThickness") and "PerFrameFunctionalGroupsSequence" not in ds:
                ds.SliceThickness = round(float(np.linalg.norm(self.grid.slice_vector)), 6)
            if "PerFrameFunctionalGroupsSequence" in ds:
                _share_common_groups(ds)
            for keyword, meta_keyword in (("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
                                          ("SOPClassUID", "MediaStorageSOPClassUID")):
                if not str(ds.get(keyword, "") or "").strip():
                    setattr(ds, keyword, _first_text(ds, keyword, meta_keyword))
        if generated:
            warn(f"the source series has no {'/'.join(generated)} (anonymised?); the DICOM output uses generated "
                 "ones, so viewers may not link it to the images by themselves")
        return headers

    def to_stack(self, labels: np.ndarray) -> np.ndarray:
        """An array on the volume's grid (as returned by the loader) -> (slice, row, column) order."""
        import nibabel as nib

        back = np.zeros_like(self.ornt)
        for axis, (out_axis, flip) in enumerate(self.ornt):
            back[int(out_axis)] = (axis, flip)
        native = nib.orientations.apply_orientation(labels, back)  # (column, row, slice)
        return np.ascontiguousarray(native.transpose(2, 1, 0))


@dataclass(frozen=True)
class DicomImage(InputImage):
    """An :class:`InputImage` read from DICOM, with its :class:`DicomSource`."""

    source: DicomSource


def scan_dicom(source, series_uid: str | None = None,
               warn: Callable[[str], None] = _default_warn) -> Series:
    """Read the headers of ``source`` and choose the series to load (cheap: no pixel data decoded)."""
    name = os.fspath(source)
    return select_series(name, scan_files(name), series_uid, warn)


def load_dicom(source, warn: Callable[[str], None] = _default_warn, series_uid: str | None = None,
               series: Series | None = None) -> DicomImage:
    """Load a DICOM series as a 3D volume (see the module docstring); ``series`` skips the header scan."""
    import nibabel as nib

    name = os.fspath(source)
    if series is None:
        series = scan_dicom(name, series_uid, warn)
    what = series.label
    frames = [f for f in series.frames if not f.localizer]
    if len(frames) < len(series.frames) and frames:
        warn(f"{what}: ignoring {len(series.frames) - len(frames)} localizer image(s)")
    else:
        frames = list(series.frames)
    _check_geometry_present(frames, what)
    orientation = check_orientation([f.orientation for f in frames], what)
    spacing = _common_spacing(frames, what)
    positions = np.asarray([f.position for f in frames], float)
    order = sort_slices(positions, np.cross(orientation[:3], orientation[3:]))
    frames = [frames[i] for i in order]
    positions = positions[order]

    raw = _decode(frames, what)
    frames, positions, raw = _drop_duplicates(frames, positions, raw, what, warn)
    if len(frames) < 2:
        single = "one 2D image" if len(series.frames) == 1 else f"{len(series.frames)} images at one position"
        raise InputError(f"{what} is a single slice ({single}); a 3D volume of at least 2 slices is needed -- "
                         "pass the folder holding the whole series")
    rows, cols = raw[0].shape
    stack = _rescale(frames, raw)
    del raw

    grid, own = regular_grid(positions, orientation, spacing, rows, cols, what, warn)
    if not own:
        fill = float(stack.min())
        if series.modality == "CT":
            fill = max(fill, -1024.0)  # air outside the scanned region
        stack = resample_to_grid(stack, positions, orientation, spacing, grid, fill)

    affine_native = grid.affine_ras()
    ornt = las_orientation(affine_native)
    native = stack.transpose(2, 1, 0)  # (column, row, slice): the NIfTI voxel order of a DICOM stack
    data = np.ascontiguousarray(nib.orientations.apply_orientation(native, ornt))
    affine = affine_native @ nib.orientations.inv_ornt_aff(ornt, native.shape)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    dsource = DicomSource(series, grid, tuple(frames) if own else None, ornt)
    return DicomImage(volume=Volume(data=data, affine=affine), header=img.header.copy(), name=name,
                      source=dsource)


def _share_common_groups(ds) -> None:
    """Make a multi-frame header state its (checked common) pixel measures and orientation in the shared
    functional group, where DICOM writers look for them, when it gives them per frame only."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    if "SharedFunctionalGroupsSequence" not in ds or not len(ds.SharedFunctionalGroupsSequence):
        ds.SharedFunctionalGroupsSequence = Sequence([Dataset()])
    shared = ds.SharedFunctionalGroupsSequence[0]
    first = ds.PerFrameFunctionalGroupsSequence[0] if len(ds.PerFrameFunctionalGroupsSequence) else Dataset()
    for keyword in ("PixelMeasuresSequence", "PlaneOrientationSequence"):
        if keyword not in shared and keyword in first:
            setattr(shared, keyword, first.get(keyword))


def _first_text(ds, keyword: str, meta_keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip()
    meta = getattr(ds, "file_meta", None)
    if not value and meta is not None:
        value = str(meta.get(meta_keyword, "") or "").strip()
    return value


def _check_geometry_present(frames: list[Frame], what: str) -> None:
    for f in frames:
        if f.position is None or f.orientation is None:
            where = f.ref.name + ("" if f.frame is None else f" frame {f.frame + 1}")
            raise InputError(f"{what}: image {where} has no ImagePositionPatient/ImageOrientationPatient, so no 3D "
                             "volume can be built; export the series with its geometry (or convert it to NIfTI)")


def _common_spacing(frames: list[Frame], what: str) -> tuple[float, float]:
    values = {f.spacing for f in frames}
    if None in values:
        raise InputError(f"{what}: PixelSpacing is missing; export the series with its geometry")
    arr = np.asarray(sorted(values), float)
    if np.any(arr <= 0):
        raise InputError(f"{what}: invalid PixelSpacing {arr[0].tolist()}; export the series again")
    if np.max(np.abs(arr - arr[0])) > 1e-4 * float(np.max(arr)):
        raise InputError(f"{what} mixes pixel spacings ({', '.join(str(tuple(a)) for a in arr[:3])}); "
                         "a volume needs one in-plane grid")
    return float(arr[0][0]), float(arr[0][1])


def read_pixels(path) -> np.ndarray:
    """Pixel values (rescaled) of every frame of one DICOM file, as (frames, rows, columns).

    The decoding the loader uses: pydicom with the pylibjpeg plugins, any transfer syntax it supports.
    """
    from totalseg.load.dicom_series import frames_of

    ref = FileRef(os.fspath(path))
    frames = frames_of(ref, read_full(ref))
    raw = _decode(frames, ref.name)
    return _rescale(frames, raw)


def _decode(frames: list[Frame], what: str) -> list[np.ndarray]:
    """Stored pixel values of every frame (no rescaling), in the order of ``frames``."""
    by_file: dict[FileRef, np.ndarray] = {}
    archive = open_archive([f.ref for f in frames])
    try:
        for ref in dict.fromkeys(f.ref for f in frames):
            ds = read_full(ref, archive)
            try:
                pixels = ds.pixel_array
            except Exception as exc:  # noqa: BLE001 - decoder errors come in many types
                missing = "PixelData" not in ds
                reason = "has no pixel data" if missing else f"cannot be decoded ({_short(exc)})"
                hint = ("; the pylibjpeg plugins may be missing for its transfer syntax "
                        f"{ds.file_meta.get('TransferSyntaxUID', '?')}" if "plugin" in str(exc).lower()
                        or "decod" in str(exc).lower() and "handler" in str(exc).lower() else "")
                raise InputError(f"DICOM file {ref.name} {reason}{hint}; remove it or export the series "
                                 "again") from exc
            by_file[ref] = np.asarray(pixels)
    finally:
        if archive is not None:
            archive.close()
    out = []
    shape = None
    for f in frames:
        arr = by_file[f.ref]
        img = arr if f.frame is None else (arr[f.frame] if arr.ndim == 3 else arr)
        if img.ndim != 2:
            raise InputError(f"{what}: image {f.ref.name} is not a grayscale 2D image "
                             f"(array shape {img.shape}); a CT or MR series is needed")
        if shape is None:
            shape = img.shape
        elif img.shape != shape:
            raise InputError(f"{what} mixes image sizes ({shape[0]}x{shape[1]} and "
                             f"{img.shape[0]}x{img.shape[1]}, e.g. {f.ref.name}); a volume needs one size")
        out.append(img)
    return out


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:120] + "...") if len(text) > 120 else (text or type(exc).__name__)


def _drop_duplicates(frames, positions, raw, what, warn):
    keep = [0]
    dropped = 0
    for i in range(1, len(frames)):
        j = keep[-1]
        if np.linalg.norm(positions[i] - positions[j]) < DUPLICATE_DISTANCE:
            same = (raw[i].shape == raw[j].shape and np.array_equal(raw[i], raw[j])
                    and frames[i].slope == frames[j].slope and frames[i].intercept == frames[j].intercept)
            if not same:
                raise InputError(
                    f"{what} has different images at the same position (e.g. {frames[j].ref.name} and "
                    f"{frames[i].ref.name}): several echoes, phases or acquisitions in one series; export one of "
                    "them as its own series")
            dropped += 1
            continue
        keep.append(i)
    if dropped:
        warn(f"{what}: ignoring {dropped} duplicate image(s) (same position, same pixels)")
    return [frames[i] for i in keep], positions[keep], [raw[i] for i in keep]


def _rescale(frames: list[Frame], raw: list[np.ndarray]) -> np.ndarray:
    """(slice, row, column) array of ``stored * slope + intercept``; integer when that is exact."""
    integral = all(f.slope == 1.0 and float(f.intercept).is_integer() and a.dtype.kind in "iub"
                   for f, a in zip(frames, raw))
    shape = (len(raw),) + raw[0].shape
    if integral:
        lo = min(int(a.min()) + int(f.intercept) for f, a in zip(frames, raw))
        hi = max(int(a.max()) + int(f.intercept) for f, a in zip(frames, raw))
        dtype = next(t for t in (np.int16, np.int32, np.int64)
                     if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)
        stack = np.empty(shape, dtype=dtype)
        for k, (f, a) in enumerate(zip(frames, raw)):
            np.add(a, int(f.intercept), out=stack[k], casting="unsafe", dtype=np.int64)
        return stack
    stack = np.empty(shape, dtype=np.float64)
    for k, (f, a) in enumerate(zip(frames, raw)):
        stack[k] = a.astype(np.float64) * f.slope + f.intercept
    return stack
