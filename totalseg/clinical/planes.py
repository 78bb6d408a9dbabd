"""Cross-sections of a vessel mask: a plane cut through it, the cut's diameters, and the cut laid flat.

Diameters follow the official report: the longest chord between boundary voxels of the first
connected region (scan order), and the longest chord about perpendicular to it (|cos| < 0.1, else
< 0.2, else < 0.5). Boundary = the region minus its 6-connected erosion.
"""
from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial.distance import pdist

from totalseg.clinical.centerline import step_length


def center_of(mask: np.ndarray, integer: bool = False):
    """The mean voxel of ``mask`` (rounded to int32 with ``integer``); None when empty."""
    points = np.argwhere(mask)
    if not len(points):
        return None
    center = points.mean(axis=0)
    return np.round(center).astype(np.int32) if integer else center


def mask_normal(mask: np.ndarray) -> np.ndarray:
    """The unit direction in which ``mask`` is thinnest (its last principal axis, sign as scikit-learn's PCA)."""
    points = np.argwhere(mask > 0.5)
    if not points.size:
        from totalseg.errors import UserError

        raise UserError("a landmark mask is empty where its plane is needed; check the masks")
    if len(points) == 1:
        return np.array([0.0, 0.0, 1.0])
    x = points - points.mean(axis=0)
    axes = _principal_axes(x)
    normal = np.asarray(axes[-1], dtype=float)
    normal = np.pad(normal, (0, 3 - len(normal))) if len(normal) < 3 else normal
    norm = np.linalg.norm(normal)
    return normal / norm if norm > 1e-10 else np.array([0.0, 0.0, 1.0])


def _principal_axes(x: np.ndarray) -> np.ndarray:
    """Principal axes (rows, largest variance first) computed as scikit-learn's PCA does for this shape:
    the covariance eigenvectors for >= 30 points, else an SVD; each row signed so its largest entry is positive."""
    n = len(x)
    mean = np.mean(x, axis=0)
    if n >= 10 * x.shape[1]:
        cov = x.T @ x
        cov -= n * mean.reshape(-1, 1) * mean.reshape(1, -1)
        cov /= n - 1
        _, vecs = np.linalg.eigh(cov)
        vt = np.flip(vecs, axis=1).T
    else:
        from scipy import linalg

        _, _, vt = linalg.svd(x - mean, full_matrices=False)
        vt = vt[:min(3, n)]
    rows = np.argmax(np.abs(vt), axis=1)
    signs = np.sign(vt[np.arange(len(vt)), rows])
    return vt * signs[:, None]


def plane_slab(shape, normal, point) -> np.ndarray:
    """The voxels within 1 voxel of the plane through ``point`` with ``normal`` (uint8)."""
    normal = np.asarray(normal, dtype=float)
    norm = np.linalg.norm(normal)
    if norm == 0:
        return np.zeros(shape, dtype=np.uint8)
    normal = normal / norm
    point = np.asarray(point, dtype=float)
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    dist = 0
    for a in range(len(shape)):  # summed axis by axis, as the official report does
        dist = dist + (grid[a] - point[a]) * normal[a]
    return (np.abs(dist) < 1).astype(np.uint8)


def closest_blob(mask: np.ndarray, point) -> np.ndarray:
    """The 26-connected component of ``mask`` whose voxels are nearest ``point`` on average."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if count == 0:
        return mask
    best, best_dist = None, None
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        where = np.asarray(np.where(labels[box] == i)).T + [s.start for s in box]
        dist = np.linalg.norm(where - point, axis=1).mean()
        if best_dist is None or dist < best_dist:
            best, best_dist = i, dist
    return (labels == best).astype(np.uint8)


def cut(mask: np.ndarray, point, normal) -> np.ndarray:
    """The cross-section of ``mask`` by the plane (``point``, ``normal``): slab ∩ mask, dilated once,
    the piece nearest ``point``."""
    slab = plane_slab(mask.shape, normal, point)
    touching = ndimage.binary_dilation((slab + mask) > 1, iterations=1)
    return closest_blob(touching, point)


def cut_in_crop(img: nib.Nifti1Image, point, normal, size_mm: float):
    """:func:`cut` computed in a cube of ``size_mm`` around ``point``: (the cube's image, the cut)."""
    from totalseg.clinical.grid import crop_around

    cube = crop_around(img, point, size_mm)
    local = (np.linalg.inv(cube.affine) @ img.affine @ np.append(point, 1))[:3]
    return cube, cut(cube.get_fdata().astype(np.uint8), local, normal).astype(np.uint8)


def _farthest_pair(points: np.ndarray):
    """The two points furthest apart (the first such pair in pdist order) and their distance."""
    if len(points) == 1:
        return 0.0, points[0].copy(), points[0].copy()
    dists = pdist(points)
    k = int(np.argmax(dists))
    n = len(points)
    rows = np.arange(n - 1)
    starts = rows * n - rows * (rows + 1) // 2  # where row i of the condensed matrix begins
    i = int(np.searchsorted(starts, k, side="right")) - 1
    j = k - int(starts[i]) + i + 1
    return dists[k], points[i].copy(), points[j].copy()


def _boundary(mask: np.ndarray) -> np.ndarray:
    mask = mask > 0
    return np.logical_xor(mask, ndimage.binary_erosion(mask))


def major_chord(mask: np.ndarray):
    """(length in voxels, start, end) of the longest boundary chord of the first region; None when empty."""
    structure = np.ones((3,) * mask.ndim)
    labels, count = ndimage.label(mask, structure=structure)
    if count == 0:
        return None
    box = ndimage.find_objects(labels)[0]
    points = np.transpose(np.nonzero(_boundary(labels[box] == 1)))
    length, a, b = _farthest_pair(points)
    offset = np.asarray([s.start for s in box])
    return length, a + offset, b + offset


def perpendicular_chord(mask: np.ndarray, start, end):
    """The longest boundary chord of ``mask`` about perpendicular to start→end: (length, a, b)."""
    points = np.transpose(np.where(_boundary(mask)))
    if len(points) < 2:
        return 0.0, None, None
    i, j = np.triu_indices(len(points), 1)
    vecs = points[j] - points[i]
    lengths = np.linalg.norm(vecs, axis=1)
    ref = np.asarray(end) - np.asarray(start)
    cosines = np.abs(vecs @ ref) / (lengths * np.linalg.norm(ref) + 1e-7)
    for limit in (0.1, 0.2, 0.5):
        ok = np.flatnonzero(cosines < limit)
        if len(ok):
            best = ok[int(np.argmax(lengths[ok]))]
            if limit != 0.1 or lengths[best] > 5:
                return lengths[best], points[i[best]], points[j[best]]
    return 0.0, None, None


def diameters(mask: np.ndarray, spacing, perpendicular: bool = True):
    """(major mm, perpendicular mm, (start, end), (start_pd, end_pd) or None) of a cross-section."""
    major = major_chord(mask)
    if major is None:
        return 0.0, 0.0, None, None
    _, start, end = major
    diameter = float(step_length(start, end, spacing))
    if not perpendicular:
        return diameter, 0.0, (start, end), None
    _, a, b = perpendicular_chord(mask, start, end)
    if a is None:
        return diameter, 0.0, (start, end), None
    return diameter, float(step_length(a, b, spacing)), (start, end), (a, b)


def flat_diameters(mask: np.ndarray, spacing, affine: np.ndarray, z: int = 1):
    """Diameters of a flat cut (2-D ``mask``): (major mm, perpendicular mm, voxel end points, world end points).

    End points are [start, end, start_pd, end_pd] as [x, y, z] voxels of the flattened volume and as
    world mm (rounded to 4 decimals) through ``affine``; None when under 5 voxels or no perpendicular.
    """
    if mask.sum() < 5:
        return np.array(0.0), np.array(0.0), None, None
    major, minor, ends, ends_pd = diameters(mask, spacing)
    if ends is None or ends_pd is None:
        return np.array(0.0), np.array(0.0), None, None
    voxels = [p.tolist() + [int(z)] for p in (*ends, *ends_pd)]
    world = [(affine[:3, :3] @ v + affine[:3, 3]).round(4).tolist() for v in voxels]
    return np.asarray(major), np.asarray(minor), voxels, world
