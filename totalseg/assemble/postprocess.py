"""Task postprocessing on the model-resolution labels, and the body task's derived masks.

Connected components are 6-connected (scipy's default structure), as in the official tool.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

BODY_EXTREMITIES_MIN_MM3 = 50000.0


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


def body(labels: np.ndarray, class_map: dict[int, str], voxel_mm3: float) -> None:
    """Body task: one trunk; limb blobs under 50 cm³ go (in place)."""
    ids = {name: k for k, name in class_map.items()}
    keep_largest_component(labels, ids["body_trunc"])
    limbs = labels == ids["body_extremities"]
    labels[limbs & ~drop_small_components(limbs, BODY_EXTREMITIES_MIN_MM3 / voxel_mm3)] = 0


def remove_outside(labels: np.ndarray, mask: np.ndarray, distance_voxels: float) -> None:
    """Zero ``labels`` farther than ``int(distance_voxels)`` dilation steps from ``mask`` (in place).

    As in the official tool, zero steps means scipy's "dilate until nothing changes".
    """
    grown = ndimage.binary_dilation(mask, iterations=int(distance_voxels))
    labels[~grown] = 0


POSTPROCESS = {"body": body}


def apply(name: str | None, labels: np.ndarray, class_map: dict[int, str], voxel_mm3: float) -> None:
    if name in POSTPROCESS:
        POSTPROCESS[name](labels, class_map, voxel_mm3)


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
