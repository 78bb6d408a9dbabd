"""Per-class volume and intensity statistics (``--statistics``), in the official ``statistics.json`` format.

Semantics (official-behaviour §4.12):

* intensities are the image values cast to int16 (the official casts ``get_fdata()`` to int16);
* classes are reported in class-index order, every class of the map, present or not;
* a class whose mask reaches into the first or last 3 slices along any axis is reported as
  ``{"volume": 0.0, "intensity": 0.0}`` unless ``exclude_border`` is False (``-sii``);
* ``volume`` = voxel count x voxel volume (product of the zooms, unrounded), ``intensity`` = mean
  (or median) of the class's voxels rounded to 5 decimals; an empty class gives 0.0 for both.
* ``-sx`` (``extra``) adds n_voxels, intensity_std/min/max, centroid_vox, bbox_vox and, beyond the
  official, ``"incomplete": true|false``: whether the mask reaches into the border slices, i.e. is
  probably cut off by the field of view (so its zeros, or its numbers with ``-sii``, are not those
  of the whole structure). It is only in the ``-sx`` output so that the default statistics.json
  stays key for key identical to the official one.

Instead of building one full-volume boolean mask per class, one ``scipy.ndimage.find_objects``
pass gives every class's bounding box (which also decides the border test), and each class is
then measured inside its box only. When boxes are huge and overlap (speckle-like label images)
means come from one chunked weighted ``np.bincount`` pass instead. Intensities are integers, so
the sums are exact and the means equal the official ``np.average`` bit for bit; the values taken
from a box keep the C order of the full volume, so medians and standard deviations are also the
same numbers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from totalseg.write.atomic import write_atomic

# Slices at each end of every axis that mark a mask as cut off by the field of view.
BORDER_SLICES = 3

# Voxels per bincount chunk: bounds the temporary intp/float64 copies to ~256 MiB.
_CHUNK = 1 << 24

# Use the whole-volume bincount for means when the class boxes add up to more voxels than this
# many whole volumes.
_BINCOUNT_FACTOR = 16

AGGREGATIONS = ("mean", "median")


def _as_labels(labels: np.ndarray) -> np.ndarray:
    """A non-negative integer label array (values that name no class map to 0)."""
    arr = np.asarray(labels)
    if arr.dtype == bool:
        return arr.view(np.uint8)
    if np.issubdtype(arr.dtype, np.unsignedinteger):
        return arr
    if np.issubdtype(arr.dtype, np.signedinteger):
        return np.where(arr < 0, 0, arr) if arr.size and arr.min() < 0 else arr
    if np.issubdtype(arr.dtype, np.floating):
        # The official compares ``seg == k``: only exactly integral values name a class.
        as_int = np.where(np.isfinite(arr) & (arr > 0), arr, 0).astype(np.int64)
        as_int[as_int != arr] = 0
        return as_int
    raise TypeError(f"labels must be an integer, boolean or float array, not {arr.dtype}")


def _voxel_volume(zooms: Sequence[float]) -> float:
    """Product of the first three zooms, multiplied in their own precision like the official
    (``header.get_zooms()`` gives float32, so 0.977**2 * 2 is the float32 product)."""
    z = list(zooms)[:3]
    if len(z) < 3:
        z += [1.0] * (3 - len(z))
    vol = z[0] * z[1] * z[2]
    return float(vol)


def _counts_and_sums(labels: np.ndarray, ct: np.ndarray | None, max_id: int):
    """Voxel count and (if ``ct`` is given) intensity sum for labels 0..max_id, chunked."""
    nbins = max_id + 2  # the last bin collects labels above max_id
    counts = np.zeros(nbins, dtype=np.int64)
    sums = np.zeros(nbins, dtype=np.float64) if ct is not None else None
    flat_labels = labels.reshape(-1)
    flat_ct = ct.reshape(-1) if ct is not None else None
    needs_clip = labels.size > 0 and int(labels.max()) > max_id
    for start in range(0, flat_labels.size, _CHUNK):
        lab = flat_labels[start:start + _CHUNK]
        if needs_clip:
            lab = np.minimum(lab, max_id + 1)
        counts += np.bincount(lab, minlength=nbins)
        if sums is not None:
            sums += np.bincount(lab, weights=flat_ct[start:start + _CHUNK], minlength=nbins)
    return counts[: max_id + 1], (sums[: max_id + 1] if sums is not None else None)


def _touches_border(box: tuple[slice, ...], shape: tuple[int, ...]) -> bool:
    """True when the box reaches the first or last BORDER_SLICES slices of any axis.

    Same as testing ``mask[:3]`` / ``mask[-3:]`` (and likewise on the other axes) for any voxel.
    """
    return any(
        sl.start < BORDER_SLICES or sl.stop > size - BORDER_SLICES
        for sl, size in zip(box, shape)
    )


def _round(value: float, decimals: int) -> float:
    # np.round (scale, round-half-even, unscale) as the official ``np.float64.round`` does.
    return float(np.round(np.float64(value), decimals))


def _empty_entry(extra: bool, incomplete: bool = False) -> dict[str, Any]:
    entry: dict[str, Any] = {"volume": 0.0, "intensity": 0.0}
    if extra:
        entry.update(
            n_voxels=0, intensity_std=0.0, intensity_min=0.0, intensity_max=0.0,
            centroid_vox=None, bbox_vox=None, incomplete=incomplete,
        )
    return entry


def compute_statistics(
    labels: np.ndarray,
    image: np.ndarray,
    zooms: Sequence[float],
    class_map: Mapping[int, str],
    exclude_border: bool = True,
    aggregation: str = "mean",
    extra: bool = False,
    normalized: bool = False,
) -> dict[str, dict[str, Any]]:
    """``{class name: {"volume": mm3, "intensity": HU, ...}}`` for every class of ``class_map``.

    labels: label image (same shape as ``image``); image: intensities on the same grid (cast to
    int16 as the official does); zooms: voxel size (pass ``header.get_zooms()`` for identical
    volumes); class_map: ``{label id: name}`` (already filtered for a roi subset); exclude_border:
    zero out classes touching the border (False = ``-sii``); aggregation: "mean" or "median";
    extra (``-sx``): add n_voxels, intensity_std, intensity_min, intensity_max, centroid_vox and
    bbox_vox (inclusive voxel index ranges) and incomplete (mask touches the border slices);
    normalized: intensities min-max normalised over the whole image first (:func:`normalised`).
    Empty (or border-excluded) classes get 0 / 0.0 / None for those.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, not {aggregation!r}")
    lab = _as_labels(labels)
    img = np.asarray(image)
    if lab.shape != img.shape:
        raise ValueError(f"labels {lab.shape} and image {img.shape} differ in shape")
    ct = img.astype(np.int16, copy=False)
    if normalized:
        ct = normalised(ct)

    classes = sorted((int(k), str(v)) for k, v in class_map.items())
    stats: dict[str, dict[str, Any]] = {}
    if not classes:
        return stats
    vox_vol = _voxel_volume(zooms)
    max_id = max(k for k, _ in classes)
    todo, at_border = _measured_boxes(lab, [k for k, _ in classes], max_id, exclude_border)

    # Means only need counts and sums. Looking inside each class's bounding box is much cheaper
    # than a weighted bincount over the whole volume (~45x the cost of one comparison pass) unless
    # the boxes are huge and overlapping (e.g. speckle-like label images); then bincount wins.
    box_voxels = sum(int(np.prod([sl.stop - sl.start for sl in box])) for box in todo.values())
    use_bincount = aggregation == "mean" and not extra and not normalized and box_voxels > _BINCOUNT_FACTOR * lab.size
    if use_bincount:
        counts, sums = _counts_and_sums(lab, ct, max_id)
    for k, name in classes:
        box = todo.get(k)
        if box is None:
            stats[name] = _empty_entry(extra, k in at_border)
        elif use_bincount:
            n = int(counts[k])
            stats[name] = {"volume": float(n * vox_vol), "intensity": _round(sums[k] / n, 5)}
        else:
            inside = lab[box] == k
            values = ct[box][inside]
            # float intensities: the official's weighted average over the whole image, for the same rounding
            whole = (lambda: np.average(ct, weights=(lab == k).astype(np.uint8))) if normalized else None
            stats[name] = _box_entry(values, vox_vol, aggregation, whole)
            if extra:
                stats[name].update(_extra_entry(inside, values, box, k in at_border))
    return stats


def normalised(ct: np.ndarray) -> np.ndarray:
    """The official normalised intensities of statistics: ``(ct - min) / (max - min)`` of the int16 image, in
    its int16 arithmetic (a range over 32767 wraps, as officially; a constant image gives NaN)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return (ct - ct.min()) / (ct.max() - ct.min())


def _measured_boxes(lab: np.ndarray, ids: list[int], max_id: int,
                    exclude_border: bool) -> tuple[dict[int, tuple[slice, ...]], set[int]]:
    """``(boxes, at_border)``: the bounding box of each class that gets real numbers (present, and not
    cut off by the border unless ``exclude_border`` is off), and the classes touching the border."""
    boxes = ndimage.find_objects(lab, max_label=max_id) if max_id > 0 and lab.ndim else []
    todo: dict[int, tuple[slice, ...]] = {}
    at_border: set[int] = set()
    for k in ids:
        box = boxes[k - 1] if 0 < k <= len(boxes) else None
        if box is not None and _touches_border(box, lab.shape):
            at_border.add(k)
        if box is not None and not (exclude_border and k in at_border):
            todo[k] = box
    return todo, at_border


def _box_entry(values: np.ndarray, vox_vol: float, aggregation: str,
               whole_mean: Callable[[], float] | None = None) -> dict[str, Any]:
    """Volume and intensity of a class, from the intensities of its voxels (``whole_mean``: how to take the
    mean of float intensities)."""
    n = int(values.size)
    if aggregation == "median":
        intensity = _round(np.median(values), 5)  # the middle values themselves: any order gives them
    elif whole_mean is not None:
        intensity = _round(whole_mean(), 5)
    else:
        # Exact integer sum / count: the same correctly rounded quotient as np.average.
        intensity = _round(int(values.sum(dtype=np.int64)) / n, 5)
    return {"volume": float(n * vox_vol), "intensity": intensity}


def _extra_entry(inside: np.ndarray, values: np.ndarray, box, incomplete: bool) -> dict[str, Any]:
    """The ``-sx`` fields of one class (``inside``: its mask in its bounding ``box``; ``values``: its
    intensities): voxel count, intensity spread, centroid and box in voxels."""
    n = int(values.size)
    centroid = []
    for axis, sl in enumerate(box):
        others = tuple(a for a in range(inside.ndim) if a != axis)
        profile = inside.sum(axis=others, dtype=np.int64)
        centroid.append(_round(int(profile @ np.arange(sl.start, sl.stop, dtype=np.int64)) / n, 2))
    return {"n_voxels": n, "intensity_std": _round(np.std(values), 5), "intensity_min": float(values.min()),
            "intensity_max": float(values.max()), "centroid_vox": centroid,
            "bbox_vox": [[int(sl.start), int(sl.stop) - 1] for sl in box], "incomplete": incomplete}


def write_statistics(stats: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write ``stats`` as JSON (indent 4) to ``path`` atomically: a temporary file in the same
    folder is written and then renamed over the target, so readers never see half a file."""
    text = json.dumps(stats, indent=4)
    write_atomic(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
