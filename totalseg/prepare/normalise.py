"""Intensity normalisation of nnU-Net v2, in float32 as nnU-Net computes it."""
from __future__ import annotations

import numpy as np

from totalseg.errors import WeightsError


def nonzero_bbox(data: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of voxels that are non-zero in any channel (``data`` is C, *spatial).

    nnU-Net fills holes in this mask first, which never changes its bounding box.
    """
    mask = np.any(data != 0, axis=0)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, 0))
    return tuple(box)


def normalise_channel(image: np.ndarray, scheme: str, properties: dict | None,
                      use_mask: bool = False, mask: np.ndarray | None = None) -> None:
    """Normalise one float32 channel in place (``image`` may be a strided view).

    CT: clip to the dataset's 0.5/99.5 percentiles, subtract its mean, divide by its std
    (Python floats act as float32 operands). ZScore: the image's own float32 mean and std.
    """
    if scheme == "CTNormalization":
        lo, hi = properties["percentile_00_5"], properties["percentile_99_5"]
        np.clip(image, lo, hi, out=image)
        image -= properties["mean"]
        image /= max(properties["std"], 1e-8)
    elif scheme == "ZScoreNormalization":
        if use_mask and mask is not None:
            values = image[mask]
            mean, std = values.mean(), values.std()
            image[mask] = (image[mask] - mean) / max(std, 1e-8)
        else:
            mean, std = image.mean(), image.std()
            image -= mean
            image /= max(std, 1e-8)
    elif scheme == "NoNormalization":
        pass
    elif scheme == "RescaleTo01Normalization":
        image -= image.min()
        image /= np.clip(image.max(), a_min=1e-8, a_max=None)
    else:
        raise WeightsError(f"normalisation scheme '{scheme}' is not supported")
