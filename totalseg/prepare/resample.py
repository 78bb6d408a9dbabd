"""Resampling between the input grid and a model's grid, value for value as the official tool.

The official tool zooms with ``scipy.ndimage.zoom(mode="nearest")`` (grid corners aligned), with
the zoom factor ``zooms / target`` from the float32 header zooms and the output shape rounded
half to even; an image already at the target spacing is passed through untouched.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from totalseg.volume import Volume


def _zoom(vol: Volume, zoom: np.ndarray, order: int, dtype) -> Volume:
    affine = vol.affine.copy()
    affine[:3, :3] = affine[:3, :3] / zoom  # each column scaled by its axis' zoom
    if order == 0:
        # Nearest neighbour copies values; resampling in the label dtype is exact and light.
        data = ndimage.zoom(vol.data, zoom, order=0, mode="nearest", output=np.dtype(dtype))
    else:
        data = ndimage.zoom(vol.data, zoom, order=order, mode="nearest", output=np.float64)
        # astype truncates toward zero, as the official int32 cast does.
        data = data.astype(dtype)
    return Volume(data, affine)


def to_spacing(vol: Volume, spacing, order: int = 1, dtype=np.int32) -> Volume:
    """Zoom ``vol`` to voxel size ``spacing`` (mm, per array axis) with spline ``order``."""
    zooms = vol.zooms
    target = np.asarray(spacing, dtype=np.float64)
    if np.array_equal(zooms, target):
        return vol
    return _zoom(vol, zooms / target, order, dtype)


def to_shape(vol: Volume, shape, affine: np.ndarray, order: int = 0, dtype=np.uint8) -> Volume:
    """Zoom ``vol`` onto a grid of ``shape`` (labels back to the input grid), giving it ``affine``."""
    zoom = np.asarray(shape) / np.asarray(vol.shape)
    zooms = vol.zooms
    if np.array_equal(zooms, zooms / zoom):
        return Volume(vol.data, affine)
    out = _zoom(vol, zoom, order, dtype)
    return Volume(out.data, affine)
