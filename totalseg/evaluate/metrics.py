"""Dice and normalised surface distance (NSD, "surface Dice") of two binary masks at a voxel spacing.

The surface follows the definition of DeepMind's ``surface_distance`` package, which the TotalSegmentator
paper's evaluation uses: every 2x2x2 cube of voxels that is neither all inside nor all outside is a surface
element, weighted by the area of its marching-cubes surface at the given spacing, and located at the cube's
position on the voxel grid. ``surfel_areas.json`` holds the triangles of each of the 256 cube configurations
(made by ``tests/data/make_surfel_table.py``).
"""
from __future__ import annotations

import itertools
import json
from functools import lru_cache
from importlib import resources

import numpy as np
from scipy import ndimage

# Bit b of a cube's code is set when corner CORNERS[b] of the cube is inside the mask.
CORNERS = tuple(itertools.product((0, 1), repeat=3))


@lru_cache(maxsize=1)
def _pieces() -> list[np.ndarray]:
    table = json.loads(resources.files(__package__).joinpath("surfel_areas.json").read_text())
    return [np.asarray(p, dtype=np.float64).reshape(-1, 3) / 8.0 for p in table]


@lru_cache(maxsize=16)
def surfel_area_table(spacing: tuple[float, float, float]) -> np.ndarray:
    """Area (mm²) of the surface inside a cube, for each of the 256 cube codes, at ``spacing`` (mm)."""
    sx, sy, sz = (float(s) for s in spacing)
    # A piece's area vector has one component per axis: the face it projects onto scales with the other two.
    scale = np.array([sy * sz, sx * sz, sx * sy])
    return np.array([np.linalg.norm(p * scale, axis=1).sum() for p in _pieces()])


def dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """2|G∩P| / (|G|+|P|); NaN when both are empty."""
    g, p = np.asarray(gt, bool), np.asarray(pred, bool)
    total = int(g.sum()) + int(p.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(g, p).sum()) / total


def _cube_codes(mask: np.ndarray) -> np.ndarray:
    """The code of every 2x2x2 cube of the mask padded by one voxel (shape + 1 per axis)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    n = mask.shape
    codes = np.zeros(tuple(s + 1 for s in n), np.uint8)
    for bit, (i, j, k) in enumerate(CORNERS):
        codes |= padded[i:i + n[0] + 1, j:j + n[1] + 1, k:k + n[2] + 1] << bit
    return codes


def _crop(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union (surfaces and distances lie within it)."""
    idx = np.nonzero(gt | pred)
    if not idx[0].size:
        return gt[:0, :0, :0], pred[:0, :0, :0]
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    return gt[box], pred[box]


def surface_distances(gt: np.ndarray, pred: np.ndarray, spacing) -> dict[str, np.ndarray]:
    """Distances (mm) from each surface element of one mask to the other's surface, with the element areas."""
    g, p = _crop(np.asarray(gt, bool), np.asarray(pred, bool))
    spacing = tuple(float(s) for s in spacing)
    areas = surfel_area_table(spacing)
    out = {}
    codes = {"gt": _cube_codes(g), "pred": _cube_codes(p)}
    border = {k: (c != 0) & (c != 255) for k, c in codes.items()}
    for me, other in (("gt", "pred"), ("pred", "gt")):
        if border[other].any():
            dist = ndimage.distance_transform_edt(~border[other], sampling=spacing)
        else:  # no surface to reach: every element is infinitely far
            dist = np.full(border[other].shape, np.inf)
        out[f"distances_{me}_to_{other}"] = dist[border[me]]
        out[f"areas_{me}"] = areas[codes[me][border[me]]]
    return out


def nsd(gt: np.ndarray, pred: np.ndarray, spacing, tolerance_mm: float = 3.0) -> float:
    """Share of both surfaces (by area) lying within ``tolerance_mm`` of the other; NaN when both are empty."""
    s = surface_distances(gt, pred, spacing)
    total = s["areas_gt"].sum() + s["areas_pred"].sum()
    if total == 0:
        return float("nan")
    close = (s["areas_gt"][s["distances_gt_to_pred"] <= tolerance_mm].sum()
             + s["areas_pred"][s["distances_pred_to_gt"] <= tolerance_mm].sum())
    return float(close / total)
