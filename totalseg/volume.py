"""The value object that travels through the pipeline: voxels plus their geometry."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Volume:
    """A 3D array with its voxel-to-world affine (RAS mm, NIfTI convention).

    ``zooms`` are the voxel sizes as nibabel derives them from the affine (column norms, float32),
    which is what the official pipeline uses for every spacing decision.
    """

    data: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def zooms(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)).astype(np.float32)

    def with_data(self, data: np.ndarray, affine: np.ndarray | None = None) -> "Volume":
        return replace(self, data=data, affine=self.affine if affine is None else affine)
