"""DICOM SEG output (highdicom): one binary segment per class present, coded with SNOMED CT.

The segmentation references the source series (study, frame of reference, source SOP instances), so viewers
(3D Slicer, OHIF) overlay it on the images.  When the volume is the source's own grid, frame ``k`` of the SEG
is slice ``k`` of the source (for a multi-frame source: frame ``k`` of that file); when the loader had to
resample (missing slices, gantry tilt), the SEG carries its own plane positions on the loader's grid.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from totalseg.version import __version__
from totalseg.load.dicom import DicomSource
from totalseg.write.dicom_common import MANUFACTURER, class_code, present_labels, save_dataset_atomic

__all__ = ["build_dicom_seg", "save_dicom_seg"]

SERIES_NUMBER = 100  # as the official tool


def _quiet(_: str) -> None:
    pass


def _coded(triple):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=triple[1], scheme_designator=triple[0], meaning=triple[2])


def _segment_description(number: int, label: int, name: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    code = class_code(name, label)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="TotalSegmentator", family=codes.cid7162.ArtificialIntelligence, version=__version__)
    desc = hd.seg.SegmentDescription(
        segment_number=number, segment_label=name,
        segmented_property_category=_coded(code.category), segmented_property_type=_coded(code.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        tracking_uid=hd.UID(), tracking_id=name,
        anatomic_regions=[_coded(code.region)] if code.region else None,
        display_color=hd.color.CIELabColor.from_rgb(*code.color))
    if code.type_modifier:
        desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            _coded(code.type_modifier)]
    if code.region and code.region_modifier:
        desc.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [_coded(code.region_modifier)]
    return desc


def build_dicom_seg(labels: np.ndarray, source: DicomSource, class_map: Mapping[int, str],
                    warn: Callable[[str], None] = _quiet, series_description: str = "TotalSegmentator"):
    """A highdicom Segmentation of ``labels`` (on the loaded volume's grid), or None if no class is present."""
    import highdicom as hd

    stack = source.to_stack(labels)
    present = present_labels(stack, class_map)
    if not present:
        return None
    lut = np.zeros(int(stack.max()) + 1, dtype=np.uint16)
    for number, label in enumerate(present, start=1):
        lut[label] = number  # segment numbers 1..n over the classes present, in label order
    segments = lut[stack]
    headers = source.reference_headers(warn)
    descriptions = [_segment_description(n, label, class_map[label]) for n, label in enumerate(present, start=1)]
    grid = source.grid
    extra = {}
    multi_frame = any(f.frame is not None for f in source.series.frames)
    if source.on_source_grid and not multi_frame:
        images = [headers[f.ref] for f in source.slice_frames]  # SEG frame k <- source image k
    else:
        # Multi-frame source or resampled grid: the SEG states its own planes (those of the loaded grid).
        images = [headers[ref] for ref, _ in source.series.headers]
        positions = ([list(f.position) for f in source.slice_frames] if source.on_source_grid
                     else [grid.slice_origin(k).tolist() for k in range(grid.shape[0])])
        step = float(np.linalg.norm(grid.slice_vector))
        extra = dict(
            plane_orientation=hd.PlaneOrientationSequence(
                "PATIENT", [*grid.row_cosine.tolist(), *grid.column_cosine.tolist()]),
            pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=list(grid.spacing), slice_thickness=step,
                                                    spacing_between_slices=step),
            plane_positions=[hd.PlanePositionSequence("PATIENT", p) for p in positions])
    pixels = segments
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # advice on the source's patient-name format
        seg = hd.seg.Segmentation(
            source_images=images, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
            manufacturer_model_name="TotalSegmentator (totalseg)", software_versions=__version__,
            device_serial_number="0", content_label="TOTALSEG", content_description="TotalSegmentator segmentation",
            series_description=series_description, omit_empty_frames=True, **extra)
    return seg


def save_dicom_seg(labels: np.ndarray, source: DicomSource, class_map: Mapping[int, str], path: Path,
                   warn: Callable[[str], None] = _quiet) -> Path | None:
    """Write the DICOM SEG of ``labels`` to ``path`` (atomically); an existing folder gets
    ``<SEG SeriesInstanceUID>.dcm`` inside it.  Nothing is written (and None returned) if no class is present."""
    seg = build_dicom_seg(labels, source, class_map, warn)
    if seg is None:
        warn("no class was found in the image; no DICOM SEG written")
        return None
    path = Path(path)
    if path.is_dir():
        path = path / f"{seg.SeriesInstanceUID}.dcm"
    save_dataset_atomic(seg, path)
    return path
