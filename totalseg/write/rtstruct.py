"""DICOM RTSTRUCT output (pydicom): one ROI per class present, closed planar contours per slice.

Contours follow the pixel edges of the mask (corners at half-pixel positions), so filling them with the
even-odd rule at pixel centres gives back exactly the mask.  A hole is its own contour inside the outer one --
the usual RTSTRUCT convention (treatment planning systems and 3D Slicer XOR nested contours of one slice).
Pixels that touch only at a corner belong to separate contours.  Contours lie in the planes of the loaded
volume's slices; on the source grid each contour references its source image.
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from totalseg.version import __version__
from totalseg.load.dicom import DicomSource
from totalseg.write.dicom_common import MANUFACTURER, class_code, present_labels, save_dataset_atomic

__all__ = ["trace_contours", "build_rtstruct", "save_rtstruct"]

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"
SERIES_NUMBER = 101


def _quiet(_: str) -> None:
    pass


def _runs(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of True along the last axis: (line index, first, one past last)."""
    padded = np.zeros((edges.shape[0], edges.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = edges
    d = np.diff(padded, axis=1)
    line, start = np.nonzero(d == 1)
    _, stop = np.nonzero(d == -1)
    return line, start, stop


def trace_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed boundary polygons of a 2D boolean mask, as (n, 2) arrays of (row, column) vertices.

    Vertices are pixel corners (x.5 coordinates); every edge between a pixel inside and one outside belongs to
    exactly one polygon.  Outer boundaries and hole boundaries run in opposite directions.
    """
    m = np.pad(np.asarray(mask, dtype=bool), 1).astype(np.int8)
    horizontal = m[1:, 1:-1] - m[:-1, 1:-1]  # [y, x]: pixel (y, x) minus pixel (y-1, x); corner row y
    vertical = m[1:-1, 1:] - m[1:-1, :-1]  # [y, x]: pixel (y, x) minus pixel (y, x-1); corner column x
    starts: list[tuple[int, int]] = []
    ends: list[tuple[int, int]] = []
    # Walk with the inside on the left (image axes: x right, y down).
    for sign in (1, -1):
        y, x0, x1 = _runs(horizontal == sign)
        for yy, a, b in zip(y.tolist(), x0.tolist(), x1.tolist()):
            if sign == 1:  # inside below: travel towards -x
                starts.append((yy, b)), ends.append((yy, a))
            else:
                starts.append((yy, a)), ends.append((yy, b))
        x, y0, y1 = _runs((vertical == sign).T)
        for xx, a, b in zip(x.tolist(), y0.tolist(), y1.tolist()):
            if sign == 1:  # inside to the right: travel towards +y
                starts.append((a, xx)), ends.append((b, xx))
            else:
                starts.append((b, xx)), ends.append((a, xx))
    outgoing: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(starts):
        outgoing.setdefault(s, []).append(i)

    def direction(i: int) -> tuple[int, int]:
        (ya, xa), (yb, xb) = starts[i], ends[i]
        return (int(np.sign(yb - ya)), int(np.sign(xb - xa)))

    def successor(i: int) -> int:
        options = outgoing[ends[i]]
        if len(options) == 1:
            return options[0]
        dy, dx = direction(i)
        left = (-dx, dy)  # (dy, dx) turned left with y pointing down
        return next(j for j in options if direction(j) == left)

    used = np.zeros(len(starts), dtype=bool)
    loops = []
    for first in range(len(starts)):
        if used[first]:
            continue
        vertices = []
        i = first
        while True:
            used[i] = True
            vertices.append(starts[i])
            i = successor(i)
            if i == first:
                break
        loops.append(np.asarray(vertices, dtype=float) - 0.5)  # corner (y, x) = pixel coordinate - 0.5
    return loops


def _raw(tag: int, vr: str, text: str):
    """A data element kept as its encoded text: pydicom writes it as is, without validating each number
    (which costs far more than tracing when a structure set holds many contours)."""
    from pydicom.dataelem import RawDataElement

    value = text.encode("ascii")
    if len(value) % 2:
        value += b" "
    return RawDataElement(tag, vr, len(value), value, 0, False, True)


def _ds_text(points: np.ndarray) -> str:
    """Decimal-string text of the coordinates (0.1 micrometre precision, at most 16 characters each)."""
    return "\\".join(f"{v:.4f}".rstrip("0").rstrip(".") or "0"
                     for v in points.ravel().tolist())


def _contour(points: np.ndarray, image_ref):
    from pydicom.dataset import Dataset

    contour = Dataset()
    if image_ref is not None:
        contour.ContourImageSequence = image_ref
    contour[0x30060042] = _raw(0x30060042, "CS", "CLOSED_PLANAR")  # ContourGeometricType
    contour[0x30060046] = _raw(0x30060046, "IS", str(len(points)))  # NumberOfContourPoints
    contour[0x30060050] = _raw(0x30060050, "DS", _ds_text(points))  # ContourData
    return contour


def _copy(dst, src, keywords) -> None:
    for keyword in keywords:
        if keyword in src:
            setattr(dst, keyword, src.get(keyword))


def _image_item(sop_class: str, sop_uid: str, frame: int | None):
    """A reference to one source image (and frame of a multi-frame one)."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_uid
    if frame is not None:
        item.ReferencedFrameNumber = frame
    return item


def _structure_set(first, label: str):
    """The RTSTRUCT dataset's file meta, patient, study, series and structure set attributes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    now = datetime.datetime.now()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = first.get("SpecificCharacterSet") or "ISO_IR 100"
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    # Patient and study: the source's, so the structure set files under the same patient and study.
    _copy(ds, first, ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                      "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                      "StudyDescription"))
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        if keyword not in ds:
            setattr(ds, keyword, "")
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = label
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "TotalSegmentator (totalseg)"
    ds.SoftwareVersions = __version__
    ds.OperatorsName = ""
    ds.StructureSetLabel = label
    ds.StructureSetName = label
    ds.StructureSetDate = ds.InstanceCreationDate
    ds.StructureSetTime = ds.InstanceCreationTime
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


def _referenced_frame(source: DicomSource, headers: dict, first):
    """ReferencedFrameOfReferenceSequence: every source instance (once, also for a multi-frame file), in
    slice order where known."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    refs = [f.ref for f in (source.slice_frames or source.series.frames)]
    refs += [ref for ref, _ in source.series.headers]
    images = [(str(headers[r].SOPClassUID), str(headers[r].SOPInstanceUID)) for r in dict.fromkeys(refs)]
    series_item = Dataset()
    series_item.SeriesInstanceUID = str(first.SeriesInstanceUID)
    series_item.ContourImageSequence = Sequence([_image_item(c, u, None) for c, u in images])
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = DETACHED_STUDY_MANAGEMENT
    study_item.ReferencedSOPInstanceUID = str(first.StudyInstanceUID)
    study_item.RTReferencedSeriesSequence = Sequence([series_item])
    for_item = Dataset()
    for_item.FrameOfReferenceUID = str(first.FrameOfReferenceUID)
    for_item.RTReferencedStudySequence = Sequence([study_item])
    return Sequence([for_item])


def _contours(stack: np.ndarray, present: list[int], source: DicomSource, headers: dict) -> dict[int, list]:
    """Contour items per class: slice by slice, per class present in it (bounding boxes found once for
    all classes), in patient coordinates; each references its source image where the grid is the source's."""
    from scipy import ndimage
    from pydicom.sequence import Sequence

    grid = source.grid
    u, v = grid.row_cosine, grid.column_cosine
    dr, dc = grid.spacing
    contours: dict[int, list] = {k: [] for k in present}
    for k in range(stack.shape[0]):
        plane = stack[k]
        boxes = ndimage.find_objects(plane)
        origin = grid.slice_origin(k)
        slice_frame = source.slice_frames[k] if source.on_source_grid else None
        image_ref = None
        if slice_frame is not None:
            h = headers[slice_frame.ref]
            image_ref = Sequence([_image_item(str(h.SOPClassUID), str(h.SOPInstanceUID),
                                              None if slice_frame.frame is None else slice_frame.frame + 1)])
        for label_id in present:
            if label_id > len(boxes) or boxes[label_id - 1] is None:
                continue
            rs, cs = boxes[label_id - 1]
            for loop in trace_contours(plane[rs, cs] == label_id):
                rows = loop[:, 0] + rs.start
                cols = loop[:, 1] + cs.start
                points = origin + np.outer(cols * dc, u) + np.outer(rows * dr, v)
                contours[label_id].append(_contour(points, image_ref))
    return contours


def _roi_sequences(ds, present: list[int], class_map: Mapping[int, str], contours: dict[int, list],
                   frame_uid: str) -> None:
    """The structure set's ROI, ROI contour and observation sequences, one item per class present."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    roi_items, contour_items, observation_items = [], [], []
    for number, label_id in enumerate(present, start=1):
        name = class_map[label_id]
        code = class_code(name, label_id)
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = frame_uid
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi_items.append(roi)
        rc = Dataset()
        rc.ROIDisplayColor = list(code.color)
        rc.ReferencedROINumber = number
        rc.ContourSequence = Sequence(contours[label_id])
        contour_items.append(rc)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = "ORGAN"
        obs.ROIInterpreter = ""
        if code.known:
            ident = Dataset()
            ident.CodeValue, ident.CodingSchemeDesignator, ident.CodeMeaning = \
                code.type[1], code.type[0], code.type[2]
            obs.RTROIIdentificationCodeSequence = Sequence([ident])
        observation_items.append(obs)
    ds.StructureSetROISequence = Sequence(roi_items)
    ds.ROIContourSequence = Sequence(contour_items)
    ds.RTROIObservationsSequence = Sequence(observation_items)


def build_rtstruct(labels: np.ndarray, source: DicomSource, class_map: Mapping[int, str],
                   warn: Callable[[str], None] = _quiet, label: str = "TotalSegmentator"):
    """A pydicom RTSTRUCT dataset for ``labels`` (on the loaded volume's grid), or None if no class is present."""
    stack = source.to_stack(labels)
    present = present_labels(stack, class_map)
    if not present:
        return None
    headers = source.reference_headers(warn)
    first = next(iter(headers.values()))
    ds = _structure_set(first, label)
    # Frame of Reference module: the structure set's coordinates are those of the source's frame.
    ds.FrameOfReferenceUID = str(first.FrameOfReferenceUID)
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator") or ""
    ds.ReferencedFrameOfReferenceSequence = _referenced_frame(source, headers, first)
    _roi_sequences(ds, present, class_map, _contours(stack, present, source, headers), str(first.FrameOfReferenceUID))
    return ds


def save_rtstruct(labels: np.ndarray, source: DicomSource, class_map: Mapping[int, str], path: Path,
                  warn: Callable[[str], None] = _quiet) -> Path | None:
    """Write the RTSTRUCT of ``labels`` to ``path`` (atomically); an existing folder gets ``segmentations.dcm``.
    Nothing is written (and None returned) if no class is present."""
    ds = build_rtstruct(labels, source, class_map, warn)
    if ds is None:
        warn("no class was found in the image; no RTSTRUCT written")
        return None
    path = Path(path)
    if path.is_dir():
        path = path / "segmentations.dcm"
    save_dataset_atomic(ds, path)
    return path
