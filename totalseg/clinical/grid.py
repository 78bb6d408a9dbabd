"""Masks on a common measuring grid: largest/small blobs, mask-box crops, resampling as the reports do it.

The aorta and pulmonary reports measure everything on one 0.8 mm grid cut around the vessel. These helpers
reproduce the official report's choices (6-connected blobs, nearest-mode zoom, constant-zero resampling
onto a reference image) so that the same masks give the same numbers.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage


def largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component (first one on a tie) as uint8; the input when it is empty."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return (labels == int(np.argmax(sizes)) + 1).astype(np.uint8)


def drop_small_blobs(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """``mask`` without 6-connected components of ``min_voxels`` voxels or fewer (0/1 values)."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes > min_voxels
    keep[0] = False
    return keep[labels].astype(np.int32)


def crop_box(img: nib.Nifti1Image, box, dtype) -> nib.Nifti1Image:
    """``img`` cut to ``box`` ([[lo, hi]] per axis) with the origin moved, the data cast to ``dtype``."""
    data = img.get_fdata()[tuple(slice(lo, hi) for lo, hi in box)]
    affine = img.affine.copy()
    affine[:3, 3] = (img.affine @ np.array([box[0][0], box[1][0], box[2][0], 1]))[:3]
    return nib.Nifti1Image(data.astype(dtype), affine)


def box_around(center, half, shape) -> list[list[int]]:
    """The box ``center`` ± ``half`` voxels, clipped to ``shape``."""
    return [[max(0, int(center[a] - half[a])), min(shape[a], int(center[a] + half[a]))] for a in range(3)]


def _mask_on(img: nib.Nifti1Image, masks) -> np.ndarray:
    """The union of ``masks`` (> 0.5) on ``img``'s grid."""
    first = masks[0]
    union = np.zeros(first.shape, dtype=np.uint8)
    for m in masks:
        union[np.asanyarray(m.dataobj) > 0.5] = 1
    if union.shape != img.shape or not np.allclose(first.affine, img.affine):
        from nibabel.processing import resample_from_to

        union = resample_from_to(nib.Nifti1Image(union, first.affine), img, order=0).get_fdata(dtype=np.float32)
    return union


def crop_to_masks(img: nib.Nifti1Image, masks, margin_mm, dtype, fixed_size: bool = False) -> nib.Nifti1Image:
    """``img`` cut to the masks' box plus ``margin_mm``; with ``fixed_size`` a box of ``margin_mm``
    centred on the masks' mean voxel."""
    margin = (np.asarray(margin_mm) / img.header.get_zooms()[:3]).astype(int)
    union = _mask_on(img, masks)
    if fixed_size:
        if union.any():
            where = np.where(union > 0)
            center = [int(np.mean(where[a])) for a in range(3)]
        else:
            center = [s // 2 for s in union.shape]
        return crop_box(img, box_around(center, (margin / 2).astype(int), union.shape), dtype)
    where = np.where(union > 0)
    if not len(where[0]):
        box = [[0, s] for s in union.shape]
    else:
        box = [[max(0, int(w.min()) - margin[a]), min(union.shape[a], int(w.max()) + 1 + margin[a])]
               for a, w in enumerate(where)]
    return crop_box(img, box, dtype)


def crop_around(img: nib.Nifti1Image, center, size_mm: float) -> nib.Nifti1Image:
    """A uint8 cube of about ``size_mm`` around voxel ``center`` of ``img``."""
    half = (np.asarray([size_mm] * 3) / 2 / img.header.get_zooms()[:3]).astype(int)
    return crop_box(img, box_around(center, half, img.shape), np.uint8)


def to_spacing(img: nib.Nifti1Image, spacing: float, order: int) -> nib.Nifti1Image:
    """``img`` zoomed (nearest-mode edges) to isotropic ``spacing``; float64 data, columns of the affine scaled."""
    zooms = np.array(img.header.get_zooms()[:3])
    target = np.array([spacing] * 3)
    if np.array_equal(zooms, target):
        return img
    factor = zooms / target
    affine = img.affine.copy()
    for a in range(3):
        affine[:3, a] = affine[:3, a] / factor[a]
    data = ndimage.zoom(img.get_fdata(), factor, mode="nearest", order=order)
    return nib.Nifti1Image(data, affine)


def load_on(path: Path, ref: nib.Nifti1Image, order: int, mask: bool, cache: Path | None = None):
    """``path`` resampled onto ``ref`` (zero outside): (image, data). Masks are thresholded at 0.5 and
    reduced to their largest blob (uint8); images stay float32. A copy is kept in ``cache``, and reused
    from there by a later run with the same folder (the official tool's cache)."""
    from nibabel.processing import resample_from_to

    path = Path(path)
    if not path.exists() and path.name == "brachiocephalic_trunk.nii.gz":  # the v1 spelling
        alt = path.with_name("brachiocephalic_trunc.nii.gz")
        path = alt if alt.exists() else path
    if not path.exists():
        from totalseg.errors import UserError

        raise UserError(f"the mask {path} does not exist; check the mask folders (-rt/-rd)")
    dtype = np.uint8 if mask else np.float32
    kept = cache / path.name if cache is not None else None
    if kept is not None and kept.exists() and kept != path:
        old = nib.load(kept)
        data = np.asanyarray(old.dataobj).astype(dtype, copy=False)
        return nib.Nifti1Image(data, old.affine, old.header), data
    img = resample_from_to(nib.load(path), ref, order=order)
    data = img.get_fdata(dtype=np.float32)
    data = largest_blob(data > 0.5).astype(dtype, copy=False) if mask else data.astype(dtype, copy=False)
    img = nib.Nifti1Image(data, img.affine, img.header)
    if kept is not None and kept != path:
        nib.save(img, kept)
    return img, data
