"""A plane cut laid flat: rotate the cut (and images with it) so that its normal becomes the z axis.

The cut and the images are cropped to a fixed box around the cut, the box is turned about the cut's
centre, and everything is resampled back onto the box's grid; the cut then lies in one z slice.
"""
from __future__ import annotations

import nibabel as nib
import numpy as np

from totalseg.clinical.grid import crop_to_masks
from totalseg.clinical.planes import center_of, mask_normal


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v if n == 0 else v / n


def rotation_between(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 3x3 rotation taking direction ``source`` to ``target`` (Rodrigues; half turn when opposite)."""
    source, target = _unit(source), _unit(target)
    if not np.linalg.norm(source) or not np.linalg.norm(target):
        return np.eye(3)
    dot = np.clip(np.dot(source, target), -1.0, 1.0)
    if np.isclose(dot, 1):
        return np.eye(3)
    if np.isclose(dot, -1):
        axis = _unit(np.cross(source, np.eye(3)[np.argmin(np.abs(source))]))
        return 2 * np.outer(axis, axis) - np.eye(3)
    c = np.cross(source, target)
    k = np.array([[0, -c[2], c[1]], [c[2], 0, -c[0]], [-c[1], c[0], 0]])
    return np.eye(3) + k + k @ k * (1 - dot) / np.linalg.norm(c) ** 2


def _turn(center: np.ndarray, normal: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The world transform turning ``normal`` onto ±``target`` about ``center``."""
    if np.dot(normal, target) < 0:
        target = -target
    rot = np.eye(4)
    rot[:3, :3] = rotation_between(normal, target)
    back, there = np.eye(4), np.eye(4)
    back[:3, 3] -= center
    there[:3, 3] += center
    return there @ rot @ back


def flatten(cut: nib.Nifti1Image, others, margin_mm: float, dtypes, orders):
    """Lay ``cut`` flat: (flat cut, flat others..., voxel→world affine of the flat grid).

    ``others`` are images on the cut's grid (None allowed), cropped with ``dtypes`` and resampled with
    ``orders``; the returned affine maps flat-grid voxels back to the original world positions.
    """
    from nibabel.processing import resample_from_to

    margin = [margin_mm] * 3
    box = crop_to_masks(cut, [cut], margin, dtype=np.uint8, fixed_size=True)
    crops = [None if o is None else crop_to_masks(o, [cut], margin, dtype=d, fixed_size=True)
             for o, d in zip(others, dtypes)]
    data = box.get_fdata()
    center_vox = center_of(data)
    if center_vox is None:
        center_vox, normal_vox = (np.asarray(data.shape) - 1) / 2, np.array([0.0, 0.0, 1.0])
    else:
        normal_vox = mask_normal(data)
    a = box.affine
    turn = _turn(a[:3, :3] @ center_vox + a[:3, 3], a[:3, :3] @ normal_vox, a[:3, :3] @ np.array([0, 0, 1]))
    turned = turn @ box.affine

    def lay(img, order):
        if img is None:
            return None
        return resample_from_to(nib.Nifti1Image(img.get_fdata(), turned), box, order=order)

    flats = [lay(box, 0)] + [lay(c, o) for c, o in zip(crops, orders)]
    return (*flats, np.linalg.inv(turn) @ box.affine)
