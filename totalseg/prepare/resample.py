"""Resampling between the input grid and a model's grid, value for value as the official tool.

The official tool zooms with ``scipy.ndimage.zoom(mode="nearest")`` (grid corners aligned), with
the zoom factor ``zooms / target`` from the float32 header zooms and the output shape rounded
half to even; an image already at the target spacing is passed through untouched.

With ``threads`` > 1 the output is computed in slabs of its first axis side by side (scipy's
interpolation releases the GIL). Each slab is scipy's own zoom kernel with the whole volume's zoom
factor and the slab's first index as a shift, so every output voxel gets the same coordinates and
the same arithmetic as in one call: the result is identical (checked once per process against
``ndimage.zoom``; where scipy's internals differ, one thread it is).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
from scipy import ndimage

from totalseg.volume import Volume

MODE = "nearest"


def _slab_kernel():
    """scipy's internal zoom kernel and mode code, or None if this scipy has them elsewhere."""
    try:
        from scipy.ndimage import _nd_image, _ni_support

        return _nd_image.zoom_shift, _ni_support._extend_mode_to_code(MODE)
    except (ImportError, AttributeError):
        return None


def _zoom_in_slabs(data: np.ndarray, zoom, order: int, output, threads: int) -> np.ndarray:
    """``ndimage.zoom(data, zoom, order, mode="nearest", output=output)`` computed in first-axis slabs."""
    kernel, mode = _slab_kernel()
    out_shape = tuple(int(round(s * z)) for s, z in zip(data.shape, zoom))
    out = np.empty(out_shape, dtype=np.dtype(output))
    if order > 1:  # the spline coefficients of the whole volume, as ndimage.zoom computes them
        from scipy.ndimage._interpolation import _prepad_for_spline_filter

        padded, npad = _prepad_for_spline_filter(data, MODE, 0.0)
        coefficients = ndimage.spline_filter(padded, order, output=np.float64, mode=MODE)
    else:
        coefficients, npad = data, 0
    # ndimage.zoom's factor for grid_mode=False: (in - 1) / (out - 1), 1 where out is 1.
    across = np.array(out_shape) - 1
    factor = np.divide(np.array(data.shape) - 1, across, out=np.ones(data.ndim), where=across != 0)
    factor = np.ascontiguousarray(factor, dtype=np.float64)
    bounds = np.linspace(0, out_shape[0], min(out_shape[0], 4 * threads) + 1).astype(int)

    def run(i: int) -> None:
        start, stop = bounds[i], bounds[i + 1]
        shift = np.zeros(data.ndim)
        shift[0] = start
        kernel(coefficients, factor, shift, out[start:stop], order, mode, 0.0, npad, False)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, range(len(bounds) - 1)))
    return out


@lru_cache(maxsize=1)
def slabs_are_exact() -> bool:
    """Whether slab-wise zooming gives ``ndimage.zoom``'s values bit for bit with this scipy."""
    if _slab_kernel() is None:
        return False
    rng = np.random.default_rng(0)
    data = rng.normal(size=(23, 17, 11)).astype(np.float32) * 100
    try:
        for zoom, order in (((1.37, 0.61, 0.83), 1), ((0.71, 1.9, 1.0), 3), ((2.3, 0.5, 1.4), 0)):
            expected = ndimage.zoom(data, zoom, order=order, mode=MODE, output=np.float64)
            if not np.array_equal(_zoom_in_slabs(data, zoom, order, np.float64, 3), expected):
                return False
    except Exception:  # noqa: BLE001 - any surprise in scipy's internals: use the public function
        return False
    return True


def zoom(data: np.ndarray, factor, order: int, output, threads: int = 1) -> np.ndarray:
    """``scipy.ndimage.zoom(data, factor, order=order, mode="nearest", output=output)``, in ``threads``."""
    # A factor of 1 everywhere: scipy's own early exit (a copy, in recent releases) decides the values.
    if (threads > 1 and data.ndim == 3 and data.shape[0] > 1 and any(float(f) != 1 for f in factor)
            and slabs_are_exact()):
        return _zoom_in_slabs(data, factor, order, output, threads)
    return ndimage.zoom(data, factor, order=order, mode=MODE, output=np.dtype(output))


def _zoom(vol: Volume, factor: np.ndarray, order: int, dtype, threads: int) -> Volume:
    affine = vol.affine.copy()
    affine[:3, :3] = affine[:3, :3] / factor  # each column scaled by its axis' zoom
    if order == 0:
        # Nearest neighbour copies values; resampling in the label dtype is exact and light.
        data = zoom(vol.data, factor, 0, dtype, threads)
    else:
        # astype truncates toward zero, as the official int32 cast does.
        data = zoom(vol.data, factor, order, np.float64, threads).astype(dtype)
    return Volume(data, affine)


def to_spacing(vol: Volume, spacing, order: int = 1, dtype=np.int32, threads: int = 1) -> Volume:
    """Zoom ``vol`` to voxel size ``spacing`` (mm, per array axis) with spline ``order``."""
    zooms = vol.zooms
    target = np.asarray(spacing, dtype=np.float64)
    if np.array_equal(zooms, target):
        return vol
    return _zoom(vol, zooms / target, order, dtype, threads)


def to_shape(vol: Volume, shape, affine: np.ndarray, order: int = 0, dtype=np.uint8, threads: int = 1) -> Volume:
    """Zoom ``vol`` onto a grid of ``shape`` (labels back to the input grid), giving it ``affine``."""
    factor = np.asarray(shape) / np.asarray(vol.shape)
    zooms = vol.zooms
    if np.array_equal(zooms, zooms / factor):
        return Volume(vol.data, affine)
    out = _zoom(vol, factor, order, dtype, threads)
    return Volume(out.data, affine)
