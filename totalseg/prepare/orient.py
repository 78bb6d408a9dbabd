"""Canonical (RAS+) orientation and its inverse, as nibabel's ``as_closest_canonical`` does it."""
from __future__ import annotations

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from totalseg.volume import Volume

_RAS = axcodes2ornt("RAS")


def _reorient(vol: Volume, ornt: np.ndarray) -> Volume:
    data = apply_orientation(vol.data, ornt)
    return Volume(data, vol.affine @ inv_ornt_aff(ornt, vol.shape))


def to_canonical(vol: Volume) -> Volume:
    """Flip/permute axes so that they run to R, A and S (no interpolation)."""
    ornt = io_orientation(vol.affine)
    if np.array_equal(ornt, _RAS):
        return vol
    return _reorient(vol, ornt)


def from_canonical(vol: Volume, original_affine: np.ndarray) -> Volume:
    """Undo :func:`to_canonical` for an image on the canonical grid of ``original_affine``."""
    ornt = ornt_transform(_RAS, io_orientation(original_affine))
    if np.array_equal(ornt, _RAS):
        return vol
    return _reorient(vol, ornt)


def ras_array(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``data`` with its axes reordered/flipped to RAS (nearest axes of ``affine``), and the voxel size (the
    affine's column lengths) along those axes: for pictures and checks that need the patient's directions."""
    ornt = io_orientation(affine)
    out = np.ascontiguousarray(apply_orientation(data, ornt))
    zooms = np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))
    spacing = np.empty(3)
    for axis, (target, _) in enumerate(ornt):
        spacing[int(target)] = zooms[axis]
    return out, spacing
