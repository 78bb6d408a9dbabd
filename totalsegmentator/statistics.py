"""``totalsegmentator.statistics`` of the official API: statistics of a segmentation made before, and radiomics
of a folder of masks, served by :mod:`totalseg.write.statistics` and :mod:`totalseg.write.radiomics`.

Importing this module does not import torch (nor pyradiomics, which the radiomics functions need).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["get_basic_statistics", "get_radiomics_features", "get_radiomics_features_for_entire_dir",
           "touches_border"]

BORDER = 3  # slices at each end of each axis: a mask reaching them is taken as cut off by the field of view


def touches_border(mask) -> bool:
    """True when ``mask`` has a voxel in the first or last three slices along any of its three axes."""
    mask = np.asarray(mask)
    for axis in range(3):
        ends = [slice(None)] * 3
        for end in (slice(None, BORDER), slice(-BORDER, None)):
            ends[axis] = end
            if mask[tuple(ends)].any():
                return True
    return False


def get_basic_statistics(seg, ct_file, file_out=None, quiet: bool = False, task: str = "total",
                         exclude_masks_at_border: bool = True, roi_subset=None, metric: str = "mean",
                         normalized_intensities: bool = False, extra_metrics: bool = False) -> dict:
    """``{class: {"volume": mm3, "intensity": ...}}`` of the label array ``seg`` (on the grid of ``ct_file``, a
    path or nibabel image) for the classes of ``task`` (``roi_subset``: only those), written as JSON to
    ``file_out`` when given. The keywords are ``TotalSegmentator -s``'s: border masks zeroed, ``metric`` mean
    or median, intensities min-max normalised, ``extra_metrics`` as ``-sx`` (the official keys only)."""
    import nibabel as nib

    from totalseg.registry.official_maps import all_class_maps
    from totalseg.write.statistics import compute_statistics, write_statistics

    image = nib.load(os.fspath(ct_file)) if isinstance(ct_file, (str, os.PathLike)) else ct_file
    classes = all_class_maps()[task]
    if roi_subset is not None:
        classes = {k: name for k, name in classes.items() if name in roi_subset}
    stats = compute_statistics(seg, image.get_fdata(), image.header.get_zooms(), classes, exclude_masks_at_border,
                               metric, extra_metrics, normalized_intensities)
    for entry in stats.values():
        entry.pop("incomplete", None)  # totalseg's own -sx key; the official function has none
    if file_out is not None:
        write_statistics(stats, file_out)
    return stats


def get_radiomics_features(seg_file, img_file="ct.nii.gz") -> tuple[str, dict]:
    """``(mask name, {feature: value})``: pyradiomics shape and first-order features of one mask file."""
    from totalseg.write.radiomics import mask_features

    return Path(seg_file).name.split(".")[0], mask_features(img_file, seg_file, print)


def get_radiomics_features_for_entire_dir(ct_file, mask_dir, file_out) -> None:
    """The features of every ``*.nii.gz`` mask in ``mask_dir`` written to ``file_out`` (JSON)."""
    from totalseg.write.radiomics import write_radiomics

    write_radiomics(ct_file, mask_dir, file_out, print)
