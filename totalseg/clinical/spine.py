"""Vertebral body heights, volume and density from a vertebrae label image (the spine report's measurements).

For each vertebra of ``vertebrae_pp_refined`` (labels ``vertebrae_C1`` .. ``vertebrae_S1``, clipped to the
vertebral bodies) the official ``totalseg_spine_report`` 2.18.0 measures, on one sagittal slice, the height of
the body at 15 %, 50 % and 85 % of its depth, perpendicular to the spine's local axis (the line between the
neighbouring vertebrae's centres). The slice is the one, among slices 5 mm apart across the middle half of
the body, whose three heights differ most (all three found). Heights are found by walking along a line in
half-voxel steps until a bilinear look-up of the mask falls to 0.5 or below. Density is the mean and median HU
inside the body eroded by a 4 mm ellipsoid. Everything here reproduces those numbers, including the float
arithmetic and the rounding, so that the JSON equals the official one.

All arrays are in the closest canonical (RAS) orientation: axis 0 left-right (sagittal slices), 1 back-front,
2 foot-head.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

# Depth positions of the three heights (posterior, middle, anterior) and their names in the JSON keys.
POSITIONS = (0.15, 0.5, 0.85)
POSITION_KEYS = ("15%", "50%", "85%")
POSITION_NAMES = {"15%": "posterior", "50%": "middle", "85%": "anterior"}
REGION_ORDER = {"C": 1, "T": 2, "L": 3, "S": 4}
STEP = 0.5  # voxels per step of the boundary walk
SCAN_MARGIN = 0.25  # part of the body's width left out at each side when choosing the slice
SCAN_STEP_MM = 5.0
SMOOTH_ERODE_MM = 3.0  # cube erosion before the centre (against spikes)
DENSITY_ERODE_MM = 4.0  # ellipsoid erosion before the HU statistics (against the cortex)
FRACTURE_RATIO = 0.8  # min/max height below this: a possible compression fracture
SPINE_RANGES = ("all", "thoracic_lumbar", "lumbar", "l1_l4")
LUMBAR = ("L1", "L2", "L3", "L4", "L5")


@dataclass
class Vertebra:
    """One measured vertebra: where it was measured and what was found (voxel coordinates, RAS)."""

    name: str
    label: int
    centroid: np.ndarray
    height_axis: np.ndarray | None = None
    x_slice: int = 0
    heights: dict = field(default_factory=dict)  # "15%" / "50%" / "85%" -> measurement dict
    volume_mm3: float = 0.0
    mean_hu: float = 0.0
    median_hu: float = 0.0


# --- ordering and range --------------------------------------------------------------------------------------

def vertebra_key(name: str) -> tuple[int, int]:
    """Head-to-foot order of ``vertebrae_<region><number>`` names; anything else sorts last."""
    part = name.replace("vertebrae_", "").strip()
    if len(part) >= 2 and part[1:].isdigit():
        return REGION_ORDER.get(part[0], 5), int(part[1:])
    return 99, 0


def ordered_vertebrae(label_map: Mapping[int, str]) -> list[tuple[int, str]]:
    """The ``vertebrae_*`` labels of a label table, head to foot."""
    found = [(int(k), v) for k, v in label_map.items() if v.startswith("vertebrae_")]
    return sorted(found, key=lambda item: vertebra_key(item[1]))


def _in_range(name: str, spine_range: str) -> bool:
    if spine_range == "thoracic_lumbar":
        return name.startswith(("vertebrae_T", "vertebrae_L"))
    if spine_range == "lumbar":
        return name.startswith("vertebrae_L")
    return name in {f"vertebrae_L{k}" for k in range(1, 5)}  # l1_l4


def select_range(vertebrae: list[tuple[int, str]], spine_range: str) -> tuple[list[tuple[int, str]], set[str]]:
    """The vertebrae to look at for ``spine_range`` and the neighbours kept only to orient the end ones."""
    if spine_range == "all":
        return vertebrae, set()
    inside = [k for k, (_, name) in enumerate(vertebrae) if _in_range(name, spine_range)]
    if not inside:
        return [], set()
    start, stop = max(0, inside[0] - 1), min(len(vertebrae) - 1, inside[-1] + 1)
    helpers = {vertebrae[k][1] for k in range(start, stop + 1) if k < inside[0] or k > inside[-1]}
    return vertebrae[start:stop + 1], helpers


# --- masks ---------------------------------------------------------------------------------------------------

def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of ``mask`` grown by ``margin`` voxels, inside the image."""
    idx = [np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0] for axis in range(3)]
    return tuple(slice(max(0, int(i[0]) - margin), min(n, int(i[-1]) + margin + 1)) for i, n in zip(idx, mask.shape))


def smoothed(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """``mask`` eroded by a box of about 3 mm half-width (at least 1 voxel); the image border counts as inside."""
    from scipy import ndimage

    radii = [max(1, int(round(SMOOTH_ERODE_MM / float(s)))) for s in spacing]
    out = np.zeros_like(mask)
    if not mask.any():
        return out
    box = _box(mask, max(radii) + 1)  # beyond the box nothing is inside, so cropping changes nothing
    cube = np.ones([2 * r + 1 for r in radii], dtype=bool)
    out[box] = ndimage.binary_erosion(mask[box], structure=cube, border_value=1)
    return out


def density_footprint(spacing: Sequence[float], mm: float = DENSITY_ERODE_MM) -> np.ndarray:
    """The official erosion ellipsoid: grid points ``-r, -r+1, ... < r+1`` with r = mm / spacing per axis."""
    radii = [mm / s for s in spacing]  # float32 with the header's zooms, as the official grid
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    return sum(g * g / (r ** 2) for g, r in zip(grids, radii)) <= 1


def body_density(ct: np.ndarray, mask: np.ndarray, footprint: np.ndarray) -> tuple[float, float]:
    """Mean and median HU inside ``mask`` eroded by ``footprint`` (0, 0 when nothing is left)."""
    from scipy import ndimage

    if not mask.any():
        return 0.0, 0.0
    box = _box(mask, 0)  # outside the image counts as outside the mask: a tight crop is exact
    eroded = ndimage.binary_erosion(mask[box], structure=footprint)
    if not eroded.any():
        return 0.0, 0.0
    values = ct[box][eroded]
    return float(np.mean(values)), float(np.median(values))


def centroid(mask: np.ndarray, offset: Sequence[int] = (0, 0, 0)) -> np.ndarray | None:
    """Mean voxel index per axis (of a crop starting at ``offset``), None for an empty mask."""
    coords = np.nonzero(mask)
    if len(coords[0]) == 0:
        return None
    return np.array([np.mean(c + o) for c, o in zip(coords, offset)])  # whole-image indices: the same sums


def touches_border(box: Sequence[slice], shape: Sequence[int]) -> bool:
    """Whether a tight bounding box reaches a face of the image (the vertebra may be cut off)."""
    return any(sl.start == 0 or sl.stop == n for sl, n in zip(box, shape))


# --- axes and the boundary walk ------------------------------------------------------------------------------

def height_axis(centroids: list, index: int) -> np.ndarray:
    """Unit vector along the spine at ``index``: from the previous to the next centre (or to/from this one)."""
    prev = centroids[index - 1] if index > 0 else None
    nxt = centroids[index + 1] if index < len(centroids) - 1 else None
    here = centroids[index]
    if prev is not None and nxt is not None:
        axis = nxt - prev
    elif prev is not None:
        axis = here - prev
    elif nxt is not None:
        axis = nxt - here
    else:
        axis = np.array([0, 0, 1])
    return axis / np.linalg.norm(axis)


def depth_axis(axis: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """In the sagittal plane, the voxel direction perpendicular (in mm) to the height axis."""
    phys_y, phys_z = axis[1] * spacing[1], axis[2] * spacing[2]
    return np.array([0, -phys_z / spacing[1], phys_y / spacing[2]])


def inside(mask: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Whether points lie inside a 2D mask: bilinear sum of the four neighbours above 0.5 (outside: False)."""
    ok = (y >= 0) & (y < mask.shape[0]) & (z >= 0) & (z < mask.shape[1])
    yi = np.where(ok, y, 0).astype(np.int64)
    zi = np.where(ok, z, 0).astype(np.int64)
    yf, zf = y - yi, z - zi
    value = np.zeros(y.shape)
    for dy in (0, 1):
        for dz in (0, 1):  # this order of the sum, as the official loop adds them
            ny, nz = yi + dy, zi + dz
            valid = ok & (ny < mask.shape[0]) & (nz < mask.shape[1])
            hit = mask[np.where(valid, ny, 0), np.where(valid, nz, 0)] & valid
            weight = (1 - np.abs(dy - yf)) * (1 - np.abs(dz - zf))
            value = value + np.where(hit, weight, 0.0)
    return ok & (value > 0.5)


def _walk(mask: np.ndarray, cy, cz, uy, uz, direction: int):
    """The last point inside the mask walking from (cy, cz) along ±(uy, uz) in half-voxel steps, or None."""
    steps = np.arange(STEP, max(mask.shape) * 1.5, STEP)
    dy, dz = direction * uy, direction * uz
    out = np.nonzero(~inside(mask, cy + dy * steps, cz + dz * steps))[0]
    if out.size == 0:
        return None
    step = steps[out[0]]
    back = np.arange(step - STEP, step, STEP / 4)
    hits = np.nonzero(inside(mask, cy + dy * back, cz + dz * back))[0]
    if hits.size == 0:
        return None
    b = back[hits[0]]
    return (cy + dy * b, cz + dz * b)


def boundary(mask: np.ndarray, cy, cz, ay, az):
    """Where the line through (cy, cz) along (ay, az) leaves the mask backwards and forwards."""
    if not mask.any():
        return None, None
    length = np.sqrt(ay ** 2 + az ** 2)
    if length == 0:
        return None, None
    uy, uz = ay / length, az / length
    return _walk(mask, cy, cz, uy, uz, -1), _walk(mask, cy, cz, uy, uz, 1)


def _no_height(point=None) -> dict:
    return {"height_mm": 0, "height_pixels": 0, "measure_point": point, "height_start": None, "height_end": None}


def slice_heights(mask: np.ndarray, cy, cz, axis: np.ndarray, depth: np.ndarray,
                  spacing: Sequence[float]) -> dict[str, dict]:
    """The three heights on one sagittal slice: the depth line through the centre, then height lines."""
    start, end = boundary(mask, cy, cz, depth[1], depth[2])
    if start is None or end is None:
        return {key: _no_height() for key in POSITION_KEYS}
    found = {}
    for pos, key in zip(POSITIONS, POSITION_KEYS):
        py = start[0] + pos * (end[0] - start[0])
        pz = start[1] + pos * (end[1] - start[1])
        low, high = boundary(mask, py, pz, axis[1], axis[2])
        if low is None or high is None:
            found[key] = _no_height((py, pz))
            continue
        dy_mm = (high[0] - low[0]) * spacing[1]
        dz_mm = (high[1] - low[1]) * spacing[2]
        found[key] = {"height_mm": np.sqrt(dy_mm ** 2 + dz_mm ** 2),
                      "height_pixels": np.sqrt(sum((high[i] - low[i]) ** 2 for i in range(2))),
                      "measure_point": (py, pz), "height_start": low, "height_end": high}
    return found


def height_difference_percent(heights: Mapping[str, dict]) -> int:
    """``round((1 - min / max) * 100)`` of the heights found (0 with fewer than two)."""
    found = [m["height_mm"] for m in heights.values() if m["height_mm"] > 0]
    if len(found) < 2 or max(found) == 0:
        return 0
    return round((1 - min(found) / max(found)) * 100)


def is_fracture(heights: Mapping[str, dict]) -> bool:
    """min / max height below 0.8."""
    found = [m["height_mm"] for m in heights.values() if m["height_mm"] > 0]
    return len(found) >= 2 and max(found) != 0 and min(found) / max(found) < FRACTURE_RATIO


# --- the measurement -----------------------------------------------------------------------------------------

def _best_slice(labels: np.ndarray, label: int, soft_x: np.ndarray, centre: np.ndarray, axis: np.ndarray,
                spacing: Sequence[float]) -> tuple[int, dict]:
    """The sagittal slice (and its heights) with the largest height spread among slices 5 mm apart.

    ``soft_x``: the sagittal slices (whole-image indices) where the smoothed body is present.
    """
    depth = depth_axis(axis, spacing)
    xs = soft_x
    best_x, best, best_spread = None, None, -1.0
    if xs.size:
        first, last = int(xs[0]), int(xs[-1])
        margin = int(round(SCAN_MARGIN * (last - first + 1)))
        top = labels.shape[0] - 1
        start, stop = min(top, max(0, first + margin)), min(top, max(0, last - margin))
        step = max(1, int(round(SCAN_STEP_MM / spacing[0])))
        for x in range(start, stop + 1, step):
            found = slice_heights(labels[x] == label, centre[1], centre[2], axis, depth, spacing)
            heights = [m["height_mm"] for m in found.values()]
            if all(h > 0 for h in heights) and max(heights) - min(heights) > best_spread:
                best_x, best, best_spread = x, found, max(heights) - min(heights)
    if best_x is None:  # no slice with all three heights: the centre's slice, whatever it gives
        best_x = max(0, min(int(round(centre[0])), labels.shape[0] - 1))
        best = slice_heights(labels[best_x] == label, centre[1], centre[2], axis, depth, spacing)
    return best_x, best


def _crops(labels: np.ndarray, wanted: Sequence[int], margin: int) -> dict[int, tuple]:
    """Per present label: its tight bounding box and that box grown by ``margin`` voxels (inside the image)."""
    from scipy import ndimage

    boxes = ndimage.find_objects(labels, max_label=max(wanted, default=0))
    out = {}
    for label in wanted:
        tight = boxes[label - 1] if 0 < label <= len(boxes) else None
        if tight is not None:
            grown = tuple(slice(max(0, b.start - margin), min(n, b.stop + margin)) for b, n in zip(tight, labels.shape))
            out[label] = tight, grown
    return out


def measure_vertebrae(ct: np.ndarray, labels: np.ndarray, label_map: Mapping[int, str],
                      spacing: Sequence[float], spine_range: str = "all",
                      say=lambda message: None) -> list[Vertebra]:
    """Heights, volume and density of each whole vertebra of ``labels`` in ``spine_range``, head to foot.

    ``ct`` and ``labels`` share one canonical (RAS) grid of voxel size ``spacing`` (the CT's zooms). S1,
    vertebrae touching the image border and the neighbours of the range only orient their neighbours.
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        labels = np.rint(labels).astype(np.int32)
    chosen, helpers = select_range(ordered_vertebrae(label_map), spine_range)
    margin = max(max(1, int(round(SMOOTH_ERODE_MM / float(s)))) for s in spacing) + 1
    crops = _crops(labels, [label for label, _ in chosen], margin)
    centres, kept = [], []
    for index, (label, name) in enumerate(chosen):
        if label not in crops:
            centres.append(None)
            continue
        tight, grown = crops[label]
        offset = [sl.start for sl in grown]
        mask = labels[grown] == label
        soft = smoothed(mask, spacing)
        centre = centroid(soft, offset)
        centres.append(centre if centre is not None else centroid(mask, offset))
        if name in helpers or name == "vertebrae_S1":
            continue
        if touches_border(tight, labels.shape):
            say(f"Skipping {name}: body mask touches image border")
            continue
        kept.append((index, label, name, mask, np.nonzero(soft.any(axis=(1, 2)))[0] + offset[0]))
    footprint = density_footprint(spacing)
    voxel_mm3 = float(spacing[0] * spacing[1] * spacing[2])
    result = []
    for index, label, name, mask, soft_x in kept:
        grown = crops[label][1]
        v = Vertebra(name=name, label=label, centroid=centres[index], height_axis=height_axis(centres, index))
        v.volume_mm3 = float(int(np.count_nonzero(mask))) * voxel_mm3
        v.mean_hu, v.median_hu = body_density(ct[grown], mask, footprint)
        v.x_slice, v.heights = _best_slice(labels, label, soft_x, v.centroid, v.height_axis, spacing)
        result.append(v)
    return result


def heights_json(vertebrae: Sequence[Vertebra]) -> dict[str, Any]:
    """The official ``spine_report_heights.json`` content: per vertebra 7 keys, then ``LWS_max``."""
    out: dict[str, Any] = {}
    lumbar = []
    for v in vertebrae:
        for key in POSITION_KEYS:
            out[f"{v.name}_height_{POSITION_NAMES[key]}_mm"] = round(v.heights[key]["height_mm"], 2)
        difference = height_difference_percent(v.heights) / 100.0
        out[f"{v.name}_height_difference"] = round(difference, 3)
        if any(v.name.endswith(f"_L{k}") for k in range(1, 6)):
            lumbar.append(difference)
        out[f"{v.name}_volume_ml"] = round(v.volume_mm3 / 1000.0, 2)
        out[f"{v.name}_intensity"] = round(v.mean_hu, 2)
        out[f"{v.name}_intensity_median"] = round(v.median_hu, 2)
    out["LWS_max"] = round(max(lumbar), 3) if lumbar else None
    return out


# HU below which a lumbar body counts as low attenuation, raised in contrast phases.
HU_THRESHOLD = 90.25
HU_ADDON = {"arterial": 20.0, "portal_venous": 14.75}


def findings(heights: Mapping[str, Any], phase: str) -> tuple[list[str], list[str]]:
    """Lumbar vertebrae with a height difference above 0.2, and those below the HU threshold."""
    limit = HU_THRESHOLD + HU_ADDON.get(phase, 0.0)
    high, low = [], []
    for short in LUMBAR:
        name = f"vertebrae_{short}"
        if f"{name}_intensity" not in heights:
            continue
        if heights[f"{name}_height_difference"] > 0.2:
            high.append(short)
        if heights[f"{name}_intensity_median"] < limit:
            low.append(short)
    return high, low
