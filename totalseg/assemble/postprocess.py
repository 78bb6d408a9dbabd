"""Task postprocessing on the model-resolution labels, and the body task's derived masks.

Connected components are 6-connected (scipy's default structure), as in the official tool.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

BODY_EXTREMITIES_MIN_MM3 = 50000.0
# vertebrae_pp: the model was trained on vertebral bodies eroded by 3 mm; blobs under 100 mm³ are noise.
VERTEBRAE_MIN_MM3 = 100.0
VERTEBRAE_GROW_MM = 3.0
# vertebrae_pp_refined: grow a little further, then clip to the vertebrae_body model's bodies.
VERTEBRAE_REFINE_GROW_MM = 2.0


def keep_largest_component(labels: np.ndarray, label: int) -> None:
    """Keep only the largest connected component of ``label`` (in place)."""
    components, count = ndimage.label(labels == label)
    if count == 0:
        return
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    labels[(labels == label) & (components != int(np.argmax(sizes)))] = 0


def drop_small_components(mask: np.ndarray, min_size: float, max_size: float = 1e10) -> np.ndarray:
    """``mask`` without the components of ``<= min_size`` or ``> max_size`` voxels."""
    components, count = ndimage.label(mask)
    if count == 0:
        return mask.astype(bool)
    sizes = np.bincount(components.ravel())
    keep = (sizes > min_size) & (sizes <= max_size)
    keep[0] = False
    return keep[components]


def body(labels: np.ndarray, class_map: dict[int, str], spacing) -> None:
    """Body task: one trunk; limb blobs under 50 cm³ go (in place)."""
    voxel_mm3 = float(np.prod(spacing))
    ids = {name: k for k, name in class_map.items()}
    keep_largest_component(labels, ids["body_trunc"])
    limbs = labels == ids["body_extremities"]
    labels[limbs & ~drop_small_components(limbs, BODY_EXTREMITIES_MIN_MM3 / voxel_mm3)] = 0


def remove_small_components(labels: np.ndarray, class_map: dict[int, str], spacing, min_mm3) -> None:
    """``-rmb``: components of every class of ``class_map`` with at most
    ``min_mm3 / voxel volume`` voxels go (in place).

    The threshold is computed as the official tool does (``min_mm3`` as given, over the float32
    product of the voxel sizes), so a component exactly at the threshold goes too.
    """
    threshold = min_mm3 / np.prod(np.asarray(spacing, dtype=np.float32))
    boxes = ndimage.find_objects(labels)
    for k in sorted(class_map):
        if k < 1 or k > len(boxes) or boxes[k - 1] is None:
            continue
        # Components of one class lie within its bounding box: label it there only.
        box = labels[boxes[k - 1]]
        mask = box == k
        box[mask & ~drop_small_components(mask, threshold)] = 0


def upsample_one_hot(labels: np.ndarray, shape, order: int = 1) -> np.ndarray:
    """The LEGACY higher-order resampling: ``labels`` onto a grid of ``shape``, each label resampled as
    its own 0/1 mask (spline ``order``, half-voxel-centred grid, ``mode="nearest"``) within its bounding box
    plus a margin, kept where it reaches 0.5. Labels go in increasing order; a later one wins a voxel."""
    old, new = np.array(labels.shape), np.array(shape).astype(int)
    scale = new / old
    out = np.zeros(new, dtype=labels.dtype)
    margin = max(2, order + 1)
    boxes = ndimage.find_objects(labels)
    for k, box in enumerate(boxes, start=1):
        if box is None:
            continue
        start = np.maximum(np.array([s.start for s in box]) - margin, 0)
        stop = np.minimum(np.array([s.stop for s in box]) + margin, old)
        mask = (labels[tuple(map(slice, start, stop))] == k).astype(np.float32)
        lo = np.maximum(np.floor(start * scale).astype(int), 0)
        hi = np.minimum(np.ceil(stop * scale).astype(int), new)
        if np.any(hi - lo <= 0):
            continue
        axes = [(np.arange(a, b) + 0.5) * n_old / n_new - 0.5 - offset
                for a, b, n_old, n_new, offset in zip(lo, hi, old, new, start)]
        grid = np.array(np.meshgrid(*axes, indexing="ij"))
        inside = ndimage.map_coordinates(mask, grid, order=order, mode="nearest", cval=0) >= 0.5
        out[tuple(map(slice, lo, hi))][inside] = k
    return out


def to_v1_order(labels: np.ndarray, class_map: dict[int, str], v1_map: dict[int, str]) -> np.ndarray:
    """``-v1o``: labels renumbered to the v1 class map by name; classes v1 lacks become 0."""
    ids = {name: k for k, name in class_map.items()}
    lut = np.zeros(max(256, max(class_map, default=0) + 1), dtype=np.uint8)
    for k1, name in v1_map.items():
        if name in ids:
            lut[ids[name]] = k1
    return lut[labels]


def remove_outside(labels: np.ndarray, mask: np.ndarray, distance_voxels: float) -> None:
    """Zero ``labels`` farther than ``int(distance_voxels)`` dilation steps from ``mask`` (in place).

    As in the official tool, zero steps means scipy's "dilate until nothing changes".
    """
    grown = ndimage.binary_dilation(mask, iterations=int(distance_voxels))
    labels[~grown] = 0


def labels_touch(labels: np.ndarray) -> bool:
    """Whether two different non-zero labels are 6-neighbours anywhere."""
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)
        lo, hi = a[:-1], a[1:]
        if np.any((lo != hi) & (lo > 0) & (hi > 0)):
            return True
    return False


def ellipsoid(spacing, radius_mm: float) -> np.ndarray:
    """Boolean ball of ``radius_mm`` on a grid of ``spacing`` (mm per axis).

    Offsets run from -r in steps of one voxel below r + 1 (r = radius in voxels, in the dtype of
    ``spacing``), so a fractional r gives an off-centre kernel; the official tool builds it the
    same way and the exact grid decides which voxels a dilation reaches.
    """
    radii = [radius_mm / s for s in spacing]
    axes = [np.arange(-r, r + 1, dtype=np.result_type(r)) for r in radii]
    x, y, z = np.ix_(*axes)
    rx, ry, rz = radii
    return x * x / (rx * rx) + y * y / (ry * ry) + z * z / (rz * rz) <= 1


def grow_labels(labels: np.ndarray, ids, spacing, radius_mm: float) -> np.ndarray:
    """Each label of ``ids`` dilated by an ellipsoid of ``radius_mm`` into background only.

    Labels grow from the input, in increasing id order, so where two grown labels meet the
    lower id keeps the voxel. Returns a new array.
    """
    out = labels.copy()
    if radius_mm <= 0:
        return out
    ball = ellipsoid(spacing, radius_mm)
    margin = np.ceil([radius_mm / s for s in spacing]).astype(int)
    boxes = ndimage.find_objects(labels)
    for k in sorted(ids):
        if k < 1 or k > len(boxes) or boxes[k - 1] is None:
            continue
        # Dilate within the label's box plus the radius: far cheaper than the whole volume.
        box = tuple(slice(max(sl.start - m, 0), min(sl.stop + m, n))
                    for sl, m, n in zip(boxes[k - 1], margin, labels.shape))
        grown = ndimage.binary_dilation(labels[box] == k, structure=ball)
        target = out[box]
        target[grown & (target == 0)] = k
    return out


def relabel_by_height(labels: np.ndarray, class_map: dict[int, str], voxel_mm3: float,
                      min_mm3: float = VERTEBRAE_MIN_MM3) -> np.ndarray:
    """Vertebra ids given again, one per connected body, in order along z (array axis 2).

    Bodies under ``min_mm3`` go. Counting starts at the highest id present and goes up the
    spine from the lowest body; scans with C1 but no L5 (head and neck) count down from C1
    at the top body instead. Bodies left over when the ids run out go too.
    """
    out = np.zeros(labels.shape, dtype=np.uint8)
    components, count = ndimage.label(labels > 0)
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    kept = np.flatnonzero(sizes * voxel_mm3 >= min_mm3)
    kept = kept[kept != 0]
    if len(kept) == 0:
        return out
    present = set(np.unique(labels[np.isin(components, kept)]).tolist()) & set(class_map)
    if not present:
        return out
    ids = {name: k for k, name in class_map.items()}
    c1, l5 = ids["vertebrae_C1"], ids["vertebrae_L5"]
    # (The official 2.18.0 code fails with an IndexError when exactly one body is left; here that
    # body simply gets the first id of the count.)
    heights = [c[2] for c in ndimage.center_of_mass(np.isin(components, kept), components, kept)]
    if c1 in present and l5 not in present:
        order = sorted(range(len(kept)), key=lambda i: heights[i], reverse=True)
        new_ids = range(c1, max(class_map) + 1)
    else:
        order = sorted(range(len(kept)), key=lambda i: heights[i])
        new_ids = range(max(present), min(class_map) - 1, -1)
    for i, k in zip(order, new_ids):
        out[components == kept[i]] = k
    return out


def vertebrae_pp(labels: np.ndarray, class_map: dict[int, str], spacing) -> None:
    """vertebrae_pp task (in place): bodies relabelled along z if two labels touch, then grown 3 mm.

    The model segments vertebral bodies only, so different labels touching means a mix-up.
    """
    fixed = labels
    if labels_touch(labels):
        fixed = relabel_by_height(labels, class_map, float(np.prod(spacing)))
    labels[...] = grow_labels(fixed, class_map, spacing, VERTEBRAE_GROW_MM)


def refine_vertebrae(labels: np.ndarray, bodies: np.ndarray, class_map: dict[int, str], spacing) -> np.ndarray:
    """vertebrae_pp_refined: labels grown 2 mm, then kept only on ``bodies == 1`` (vertebrae_body's
    vertebral bodies); both on the input grid, ``spacing`` its voxel sizes."""
    if labels.shape != bodies.shape:
        raise ValueError(f"vertebrae labels {labels.shape} and vertebrae_body labels {bodies.shape} differ in shape")
    out = grow_labels(labels, class_map, spacing, VERTEBRAE_REFINE_GROW_MM)
    out[bodies != 1] = 0
    return out


# vertebrae_pp_refined gets the same model-resolution step; its refinement runs on the input grid.
POSTPROCESS = {"body": body, "vertebrae_pp": vertebrae_pp, "vertebrae_pp_refined": vertebrae_pp}


def apply(name: str | None, labels: np.ndarray, class_map: dict[int, str], spacing) -> None:
    """Run the task postprocessing ``name`` on model-resolution ``labels`` (in place); ``spacing``
    is their voxel size in mm per axis (float32, as the official tool reads it from the header)."""
    if name in POSTPROCESS:
        POSTPROCESS[name](labels, class_map, spacing)


def body_masks(labels: np.ndarray, class_map: dict[int, str], image: np.ndarray) -> dict[str, np.ndarray]:
    """The body task's derived masks: ``body`` (trunk and limbs) and ``skin``.

    Skin: a shell from one voxel outside the body to three voxels inside it, limited to
    soft-tissue densities (-200..250 HU), without specks of 5 voxels or fewer.
    """
    ids = {name: k for k, name in class_map.items()}
    whole = np.isin(labels, [ids["body_trunc"], ids["body_extremities"]])
    outer = ndimage.binary_dilation(whole, iterations=1)
    shell = outer & ~ndimage.binary_erosion(outer, iterations=3)
    shell &= (image > -200) & (image < 250)
    return {"body": whole, "skin": drop_small_components(shell, 5)}
