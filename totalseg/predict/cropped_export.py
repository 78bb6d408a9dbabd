"""Labels from logits on a coarser grid, the memory-light way the official tool patches into nnU-Net's export
(``-ho``: "cropped-logits resampling").

The background logit is resampled whole (nnU-Net's own rules, kept in the logits' dtype); then each class that
wins somewhere on the coarse grid, in increasing id, has its logit resampled linearly inside that win's box
(plus a margin of coarse voxels) and takes every voxel where it beats the best score so far. The best score is
stored in the logits' dtype, so a later class competes against the rounded value, as in the official export.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from totalseg.prepare.nnunet_resample import resample_slices, separate_axis

MARGIN = 3  # coarse voxels added around each class's box


def _box(mask: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Start and end (exclusive) of the voxels of ``mask``, widened by ``margin`` within the array."""
    hits = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
            for axis in range(mask.ndim)]
    if any(h.size == 0 for h in hits):
        return None
    start = np.maximum(np.array([h[0] for h in hits]) - margin, 0)
    stop = np.minimum(np.array([h[-1] + 1 for h in hits]) + margin, np.array(mask.shape))
    return start, stop


def _axis_coordinates(first: int, last: int, old: np.int64, new: np.int64, offset: np.int64) -> np.ndarray:
    """Source coordinates (pixel centres aligned) of target positions first..last-1, relative to ``offset``.

    The positions are float32 and the arithmetic float64, as in the official patch (NumPy 2 promotion)."""
    positions = np.arange(first, last, dtype=np.float32) + np.float32(0.5)
    return positions * old / new - 0.5 - offset


def _resampled_box(channel: np.ndarray, new_shape: np.ndarray, start: np.ndarray, stop: np.ndarray):
    """``(target slices, values)``: ``channel`` inside [start, stop) resampled linearly onto the matching part of
    ``new_shape``; ``(None, None)`` when that part is empty."""
    old_shape = np.array(channel.shape)
    scale = new_shape / old_shape
    first = np.maximum(np.floor(start * scale).astype(int), 0)
    last = np.minimum(np.ceil(stop * scale).astype(int), new_shape)
    if np.any(last <= first):
        return None, None
    crop = channel[tuple(slice(a, b) for a, b in zip(start, stop))].astype(np.float64)
    axes = [_axis_coordinates(f, l, o, n, s) for f, l, o, n, s in zip(first, last, old_shape, new_shape, start)]
    coords = np.array(np.meshgrid(*axes, indexing="ij"), dtype=np.float32)
    values = ndimage.map_coordinates(crop, coords, order=1, mode="nearest")
    return tuple(slice(a, b) for a, b in zip(first, last)), values


def _resampled_channel(channel: np.ndarray, shape: Sequence[int], spacing, target, order: int, order_z: int,
                       force_separate_z) -> np.ndarray:
    """One channel through nnU-Net's resampling, stored in its dtype."""
    axis = separate_axis(spacing, target, force_separate_z)
    out = np.empty(tuple(shape), dtype=channel.dtype)
    for i, plane in resample_slices(channel, shape, axis, order, order_z):
        if axis is None:
            out[...] = plane
        else:
            out[tuple(i if a == axis else slice(None) for a in range(3))] = plane
    return out


def cropped_argmax(logits: np.ndarray, shape: Sequence[int], spacing: Sequence[float], target: Sequence[float],
                   dtype=np.uint8, order: int = 1, order_z: int = 0, force_separate_z: bool | None = None,
                   **_: object) -> np.ndarray:
    """Labels (``dtype``) on ``shape`` of (C, *coarse) logits: see the module's description. ``spacing`` is the
    logits' spacing, ``target`` the labels'; ``order``... are the plans' probability-resampling arguments (used
    for the background)."""
    new_shape = np.array(shape).astype(int)
    if np.array_equal(np.array(logits.shape[1:]), new_shape):
        return np.argmax(logits, axis=0).astype(dtype)
    best = _resampled_channel(logits[0], shape, spacing, target, order, order_z, force_separate_z)
    labels = np.zeros(tuple(new_shape), dtype=dtype)
    coarse = np.argmax(logits, axis=0)
    for label in np.unique(coarse):
        label = int(label)
        if label == 0:
            continue
        box = _box(coarse == label, MARGIN)
        if box is None:
            continue
        where, values = _resampled_box(logits[label], new_shape, *box)
        if where is None:
            continue
        wins = values > best[where]
        labels[where][wins] = label
        best[where][wins] = values[wins]  # rounded to the logits' dtype
    return labels


def segment_cropped(image_xyz: np.ndarray, spacing_xyz, plans, runner, step: float) -> np.ndarray:
    """:func:`totalseg.predict.nnunet.segment` with the cropped-logits export: labels on the grid of
    canonical ``image_xyz`` when the model's spacing differs from the image's."""
    from totalseg.predict.nnunet import _preprocess
    from totalseg.predict.sliding_window import check_finite, predict_logits, to_host
    from totalseg.prepare.nnunet_resample import resample_data, target_shape

    full_shape = np.array(image_xyz.shape[::-1])[list(plans.transpose_forward)]
    spacing = np.array(spacing_xyz[::-1], dtype=np.float64)[list(plans.transpose_forward)]
    data, box = _preprocess(image_xyz, plans)
    shape = data.shape[1:]
    data = resample_data(data, target_shape(shape, spacing, plans.spacing), spacing, plans.spacing,
                         **plans.resampling_data)
    logits = predict_logits(runner, data, plans.patch_size, step, plans.num_heads)
    check_finite(logits)
    logits = to_host(logits)
    dtype = np.uint8 if len(plans.labels) < 256 else np.uint16
    labels = cropped_argmax(logits, shape, plans.spacing, spacing, dtype, **plans.resampling_probabilities)
    out = np.zeros(tuple(full_shape), dtype=dtype)
    out[box] = labels
    return np.ascontiguousarray(out.transpose(plans.transpose_backward).transpose(2, 1, 0))


def resamples_itself(image_shape_xyz: Sequence[int], spacing_xyz, plans) -> bool:
    """Whether nnU-Net resamples an image of this shape and spacing (an upper bound: its nonzero crop is not
    known here; a crop that lands on the model's grid only takes the longer way to the same labels)."""
    from totalseg.prepare.nnunet_resample import target_shape

    shape = np.array(image_shape_xyz[::-1])[list(plans.transpose_forward)]
    spacing = np.array(spacing_xyz[::-1], dtype=np.float64)[list(plans.transpose_forward)]
    return not np.allclose(spacing, plans.spacing) or tuple(target_shape(shape, spacing, plans.spacing)) != tuple(shape)


def labeller_cropped_labels(labeller, model, folds: tuple[int, ...] | None, image_xyz: np.ndarray, spacing_xyz,
                            step: float, progress=lambda _: None) -> np.ndarray:
    """The labels of ``model`` with the cropped-logits export; the labeller's own run where nnU-Net would not
    resample (the same labels)."""
    from totalseg.predict.model import read_plans
    from totalseg.predict.probabilities import labeller_run
    from totalseg.weights import model_folder

    plans = read_plans(model_folder(model, getattr(labeller, "weights", None)), model.configuration)
    if not resamples_itself(image_xyz.shape, spacing_xyz, plans):
        return labeller.model_labels(model, folds, image_xyz, spacing_xyz, step, progress)
    progress(f"  running {model.folder} (nnU-Net's resampling, cropped-logits export)")
    with labeller_run(labeller, model, folds) as (plans, runner):
        return segment_cropped(image_xyz, spacing_xyz, plans, runner, step)
