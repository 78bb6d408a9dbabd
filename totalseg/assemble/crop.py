"""Crop to a mask's bounding box (with a margin in mm) and paste back, on the input's voxel grid."""
from __future__ import annotations

import numpy as np

from totalseg.volume import Volume


def mask_box(mask: np.ndarray, zooms, addon_mm) -> tuple[slice, ...] | None:
    """Bounding box of ``mask > 0`` grown by ``int(addon_mm / zoom)`` voxels, clipped; None if empty."""
    addon = (np.asarray(addon_mm, dtype=np.float64) / np.asarray(zooms)).astype(int)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero((mask > 0).any(axis=other))
        if hit.size == 0:
            return None
        lo = max(0, int(hit[0]) - addon[axis])
        hi = min(mask.shape[axis], int(hit[-1]) + 1 + addon[axis])
        box.append(slice(lo, hi))
    return tuple(box)


def crop(vol: Volume, box: tuple[slice, ...]) -> Volume:
    """The box's voxels (as int32, like the official crop) with the affine moved to its corner."""
    affine = vol.affine.copy()
    affine[:3, 3] = (vol.affine @ np.array([b.start for b in box] + [1]))[:3]
    data = vol.data[box]
    return Volume(data.astype(np.int32), affine)


def uncrop(labels: np.ndarray, box: tuple[slice, ...], shape) -> np.ndarray:
    out = np.zeros(shape, dtype=labels.dtype)
    out[box] = labels
    return out
