"""nnU-Net's own resampling to a model's plan spacing, and of its logits back, value for value.

Used by models whose task gives no resample spacing (the model's plans spacing differs from the
image's). nnU-Net's rule: when one spacing (the current or the target one) is more than three times
another and a single axis is the coarsest, resample the other two axes slice by slice with a spline
of ``order`` and the coarse axis with ``order_z`` (0: nearest slice); otherwise resample all three
axes with ``order``. Each resize works like scikit-image's ``resize(mode="edge",
anti_aliasing=False)``: a pixel-centre-aligned ``scipy.ndimage.zoom`` in float64, clipped to the
input's value range.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from scipy import ndimage

ANISOTROPY_THRESHOLD = 3.0


def target_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """Shape after resampling from ``spacing`` to ``target`` (Python rounding, as nnU-Net)."""
    return tuple(int(round(s / t * n)) for s, t, n in zip(spacing, target, shape))


def _coarse_axis(spacing: Sequence[float]) -> int | None:
    spacing = np.asarray(spacing, dtype=np.float64)
    if spacing.max() / spacing.min() <= ANISOTROPY_THRESHOLD:
        return None
    coarsest = np.flatnonzero(spacing.max() / spacing == 1)
    return int(coarsest[0]) if len(coarsest) == 1 else -1


def separate_axis(current: Sequence[float], target: Sequence[float],
                  force_separate_z: bool | None = None) -> int | None:
    """The axis resampled on its own (``order_z``), or None for a joint 3D resampling."""
    if force_separate_z is False:
        return None
    if force_separate_z:
        coarsest = np.flatnonzero(np.max(current) / np.asarray(current, dtype=np.float64) == 1)
        return int(coarsest[0]) if len(coarsest) == 1 else None
    axis = _coarse_axis(current)
    if axis is None:
        axis = _coarse_axis(target)
    return None if axis in (None, -1) else axis


def resize(image: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """float64 ``image`` resized to ``shape`` with pixel centres aligned, edges repeated, clipped."""
    zoom = [1 / f for f in np.divide(image.shape, shape)]
    out = ndimage.zoom(image, zoom, order=order, mode="nearest", grid_mode=True)
    np.clip(out, image.min(), image.max(), out=out)
    return out


def nearest_indices(size: int, new_size: int) -> np.ndarray:
    """Source index of each output position along one axis (centre-aligned nearest neighbour)."""
    coords = float(size) / new_size * (np.arange(new_size) + 0.5) - 0.5
    return ndimage.map_coordinates(np.arange(size, dtype=np.float64), coords[None], order=0, mode="nearest").astype(np.intp)


def _slices(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(volume, index, axis=axis)


def resample_slices(channel: np.ndarray, shape: Sequence[int], axis: int | None, order: int,
                    order_z: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(i, plane)``: the i-th output plane along ``axis`` (or the whole volume when ``axis``
    is None, as ``(0, volume)``) of one channel resampled to ``shape``.

    Each input plane is resized once, however many output planes repeat it.
    """
    data = channel.astype(np.float64, copy=False)
    if axis is None:
        yield 0, resize(data, shape, order)
        return
    if order_z != 0:
        raise NotImplementedError("nnU-Net resampling with order_z > 0 is not supported")
    plane_shape = [s for a, s in enumerate(shape) if a != axis]
    sources = nearest_indices(channel.shape[axis], shape[axis])
    cache: tuple[int, np.ndarray] | None = None
    for i, src in enumerate(sources):
        if cache is None or cache[0] != src:
            cache = (int(src), resize(_slices(data, axis, int(src)), plane_shape, order))
        yield i, cache[1]


def resample_data(data: np.ndarray, shape: Sequence[int], spacing: Sequence[float], target: Sequence[float],
                  order: int = 3, order_z: int = 0, force_separate_z: bool | None = None,
                  **_: object) -> np.ndarray:
    """(C, *spatial) image data resampled to ``shape`` (nnU-Net's data resampling, dtype kept)."""
    if tuple(data.shape[1:]) == tuple(shape):
        return data
    axis = separate_axis(spacing, target, force_separate_z)
    out = np.empty((data.shape[0], *shape), dtype=data.dtype)
    for c in range(data.shape[0]):
        for i, plane in resample_slices(data[c], shape, axis, order, order_z):
            if axis is None:
                out[c] = plane
            else:
                index = [slice(None)] * 3
                index[axis] = i
                out[(c, *index)] = plane
    return out


def _running_argmax(channels: Iterator[np.ndarray], dtype) -> np.ndarray:
    """np.argmax over channels given one at a time: a channel takes a voxel only where it is strictly higher, so
    the first maximal channel wins, as in np.argmax. Values are compared in ``dtype`` (the logits' own, as
    nnU-Net keeps the resampled channels)."""
    best = labels = None
    for c, channel in enumerate(channels):
        values = channel.astype(dtype)
        if best is None:
            best, labels = values, np.zeros(values.shape, dtype=np.intp)
            continue
        higher = values > best
        labels[higher] = c
        np.copyto(best, values, where=higher)
    return labels


def resampled_argmax(logits: np.ndarray, shape: Sequence[int], spacing: Sequence[float],
                     target: Sequence[float], order: int = 1, order_z: int = 0,
                     force_separate_z: bool | None = None, **_: object) -> np.ndarray:
    """Labels of (C, *spatial) fp16 logits resampled to ``shape``, without the full-size probabilities.

    nnU-Net resamples every channel into a float16 array and takes the first maximal channel; the
    same values are formed here plane by plane (one axis resampled apart), or channel by channel into a
    running maximum (a 118-class model on a chest CT: 9 GB of fp16 channels otherwise).
    """
    axis = separate_axis(spacing, target, force_separate_z)
    if axis is None:
        channels = (next(resample_slices(logits[c], shape, None, order))[1] for c in range(logits.shape[0]))
        return _running_argmax(channels, logits.dtype)
    labels = np.empty(tuple(shape), dtype=np.intp)
    streams = [resample_slices(logits[c], shape, axis, order, order_z) for c in range(logits.shape[0])]
    plane_shape = tuple(s for a, s in enumerate(shape) if a != axis)
    stack = np.empty((logits.shape[0], *plane_shape), dtype=logits.dtype)
    for i in range(shape[axis]):
        for c, stream in enumerate(streams):
            stack[c] = next(stream)[1]
        index = [slice(None)] * 3
        index[axis] = i
        labels[tuple(index)] = np.argmax(stack, axis=0)
    return labels
