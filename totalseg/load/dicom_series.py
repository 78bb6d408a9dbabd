"""Group DICOM headers into series and pick the series to segment.

A series is keyed by its SeriesInstanceUID (anonymisers sometimes blank it; the study, series number,
description, frame of reference and image size then stand in).  Only image series take part in the choice;
among them the CT and MR ones with the most slices win, and the caller is told when there was a choice.
Every image frame becomes a :class:`Frame` with the geometry the volume builder needs: single-frame files give
one, enhanced multi-frame files one per frame (per-frame functional groups, falling back to the shared ones).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

from totalseg.errors import InputError
from totalseg.load.dicom_files import FileRef, Scan

__all__ = ["Frame", "Series", "group_series", "select_series"]

# Modalities whose files carry no image to segment (pixel data of SEG/RTDOSE are not anatomy).
_NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG", "DOC",
                         "RWV", "AU", "ECG", "HD", "PLAN", "FID"}
_SEGMENTABLE = ("CT", "MR")


@dataclass(frozen=True)
class Frame:
    """One 2D image of a series, with its plane geometry (DICOM patient coordinates, LPS, mm)."""

    ref: FileRef
    frame: int | None  # 0-based frame index in a multi-frame file, None for a single-frame file
    position: tuple[float, float, float] | None  # ImagePositionPatient
    orientation: tuple[float, ...] | None  # ImageOrientationPatient (row cosine, column cosine)
    spacing: tuple[float, float] | None  # PixelSpacing: (between rows, between columns)
    slope: float
    intercept: float
    sop_uid: str
    localizer: bool


@dataclass
class Series:
    """The frames of one series plus the header of its first file (for UIDs and patient data)."""

    key: tuple
    uid: str
    modality: str
    description: str
    frames: list[Frame]
    headers: list[tuple[FileRef, object]]  # (file, header dataset) of every file of the series
    grayscale: bool

    @property
    def label(self) -> str:
        uid = self.uid or "(no SeriesInstanceUID)"
        desc = f' "{self.description}"' if self.description else ""
        return f"{self.modality or '?'} series {uid}{desc} ({len(self.frames)} images)"


def _text(ds, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _floats(value, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _sop_uid(ds) -> str:
    uid = _text(ds, "SOPInstanceUID")
    if not uid and getattr(ds, "file_meta", None) is not None:
        uid = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "").strip()
    return uid


def _is_image(ds) -> bool:
    if _text(ds, "Modality").upper() in _NON_IMAGE_MODALITIES:
        return False
    return "Rows" in ds and "Columns" in ds


def _group_item(ds, index: int, sequence: str):
    """Item 0 of ``sequence`` for frame ``index``: per-frame group first, then the shared group."""
    for groups, i in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq is not None and len(seq) > i:
            inner = seq[i].get(sequence)
            if inner is not None and len(inner):
                return inner[0]
    return None


def _rescale(item) -> tuple[float, float]:
    if item is None:
        return 1.0, 0.0
    try:
        slope = float(item.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(item.get("RescaleIntercept", 0.0) or 0.0)
    except (TypeError, ValueError):
        return 1.0, 0.0
    return slope, intercept


def frames_of(ref: FileRef, ds) -> list[Frame]:
    """The image frames of one file, with geometry and rescaling."""
    localizer = "LOCALIZER" in [str(v).upper() for v in (ds.get("ImageType") or [])]
    sop = _sop_uid(ds)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if "PerFrameFunctionalGroupsSequence" not in ds and "SharedFunctionalGroupsSequence" not in ds:
        slope, intercept = _rescale(ds)
        frame = Frame(ref, None if n == 1 else 0, _floats(ds.get("ImagePositionPatient"), 3),
                      _floats(ds.get("ImageOrientationPatient"), 6), _floats(ds.get("PixelSpacing"), 2),
                      slope, intercept, sop, localizer)
        if n == 1:
            return [frame]
        # Legacy multi-frame without functional groups: no per-frame position to stack by.
        return [Frame(ref, i, None, frame.orientation, frame.spacing, slope, intercept, sop, localizer)
                for i in range(n)]
    out = []
    for i in range(n):
        pos = _group_item(ds, i, "PlanePositionSequence")
        ori = _group_item(ds, i, "PlaneOrientationSequence")
        meas = _group_item(ds, i, "PixelMeasuresSequence")
        slope, intercept = _rescale(_group_item(ds, i, "PixelValueTransformationSequence"))
        out.append(Frame(
            ref, i,
            _floats(pos.get("ImagePositionPatient") if pos is not None else ds.get("ImagePositionPatient"), 3),
            _floats(ori.get("ImageOrientationPatient") if ori is not None else ds.get("ImageOrientationPatient"), 6),
            _floats(meas.get("PixelSpacing") if meas is not None else ds.get("PixelSpacing"), 2),
            slope, intercept, sop, localizer))
    return out


def _series_key(ds) -> tuple:
    uid = _text(ds, "SeriesInstanceUID")
    if uid:
        return ("uid", uid)
    return ("anon", _text(ds, "StudyInstanceUID"), _text(ds, "SeriesNumber"), _text(ds, "SeriesDescription"),
            _text(ds, "Modality"), _text(ds, "FrameOfReferenceUID"), int(ds.get("Rows", 0) or 0),
            int(ds.get("Columns", 0) or 0))


def group_series(scan: Scan) -> tuple[list[Series], int]:
    """Image series of a scan (largest first) and the number of DICOM files that hold no image."""
    by_key: dict[tuple, Series] = {}
    non_image = 0
    for ref, ds in scan.headers:
        if not _is_image(ds):
            non_image += 1
            continue
        key = _series_key(ds)
        series = by_key.get(key)
        if series is None:
            series = Series(key, _text(ds, "SeriesInstanceUID"), _text(ds, "Modality").upper(),
                            _text(ds, "SeriesDescription"), [], [], True)
            by_key[key] = series
        series.headers.append((ref, ds))
        series.frames.extend(frames_of(ref, ds))
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            series.grayscale = False
    ordered = sorted(by_key.values(), key=lambda s: -len(s.frames))
    return ordered, non_image


def _nothing_found(source: str, scan: Scan, non_image: int) -> InputError:
    if scan.n_files == 0:
        return InputError(f"no files found in {source}; pass a folder or zip file holding a DICOM series")
    parts = []
    if scan.n_not_dicom:
        parts.append(f"{scan.n_not_dicom} not DICOM")
    if non_image:
        modalities = Counter(_text(ds, "Modality") or "?" for _, ds in scan.headers if not _is_image(ds))
        parts.append(f"{non_image} DICOM without image data ({', '.join(sorted(modalities))})")
    return InputError(f"no DICOM images in {source}: found {scan.n_files} file(s), "
                      f"{' and '.join(parts)}; pass the folder or zip file of a CT or MR series")


def check_one_patient(series: list[Series]) -> None:
    """Refuse a selection that mixes patients (different non-empty PatientID, else PatientName)."""
    headers = [ds for s in series for _, ds in s.headers]
    for keyword in ("PatientID", "PatientName"):
        values = sorted({_text(ds, keyword) for ds in headers} - {""})
        if len(values) > 1:
            shown = ", ".join(repr(v) for v in values[:3]) + (", ..." if len(values) > 3 else "")
            raise InputError(f"the DICOM files belong to {len(values)} different patients ({keyword} {shown}); "
                             "pass a folder holding one patient's series only")
        if values:
            return


def select_series(source: str, scan: Scan, series_uid: str | None,
                  warn: Callable[[str], None]) -> Series:
    """The series to segment: ``series_uid`` if given, else the CT/MR series with the most images."""
    series, non_image = group_series(scan)
    if not series:
        raise _nothing_found(source, scan, non_image)
    if series_uid:
        chosen = [s for s in series if s.uid == series_uid.strip()]
        if not chosen:
            listed = "; ".join(s.label for s in series[:5])
            raise InputError(f"no series with SeriesInstanceUID {series_uid} in {source}; found: {listed}")
        check_one_patient(chosen)
        pick = chosen[0]
    else:
        check_one_patient(series)
        candidates = [s for s in series if s.grayscale and s.modality in _SEGMENTABLE]
        if not candidates:
            candidates = [s for s in series if s.grayscale]
            if candidates:
                warn(f"no CT or MR series found; using the {candidates[0].label}")
        if not candidates:
            raise InputError(f"{source} holds only colour (RGB) images ({series[0].label}); "
                             "a grayscale CT or MR series is needed")
        pick = candidates[0]
        if len(series) > 1:
            others = len(series) - 1
            warn(f"{len(series)} image series found; using the {pick.label} "
                 f"(the largest CT/MR series; {others} other(s) ignored, choose one with --series_uid)")
    if not pick.grayscale:
        raise InputError(f"the {pick.label} holds colour (RGB) images; a grayscale CT or MR series is needed")
    return pick
