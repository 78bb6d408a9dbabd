"""Calibration tiles for the int8 engine, cut from one real CT shipped with the package.

``example_ct_6mm.nii.gz`` is TotalSegmentator's example CT (Apache-2.0, see NOTICE.md beside it) averaged
over 2x2x2 voxel blocks to 6 mm, stored as int16 (220 KB). For a model it is brought to the model's grid and
intensities as nnU-Net's preprocessing does for a scan (crop to the non-zero box, normalise with the plans'
scheme and properties, resample to the plans' spacing with the plans' resampling), zero-padded to at least
one tile and cut into tiles spread evenly over the volume (smaller than a patch: NNCF holds every layer's
activations of a tile at once).
"""
from __future__ import annotations

import hashlib
import itertools
import math
from importlib import resources

import numpy as np

CT_FILE = "example_ct_6mm.nii.gz"
CT_SPACING = (6.0, 6.0, 6.0)  # x, y, z (mm), as in the file's header
MAX_TILES = 12  # each costs one forward pass per NNCF statistics pass; more add little for activation ranges


def ct_bytes() -> bytes:
    """The shipped CT file's bytes."""
    return (resources.files(__name__) / CT_FILE).read_bytes()


def _ct_xyz() -> np.ndarray:
    import gzip
    import io

    import nibabel as nib

    image = nib.Nifti1Image.from_stream(io.BytesIO(gzip.decompress(ct_bytes())))
    return np.asarray(image.dataobj, dtype=np.float32)


def model_volume(plans) -> np.ndarray:
    """The CT as a model sees it: (1, *spatial) float32 in nnU-Net's axis order, normalised, at ``plans.spacing``."""
    from totalseg.predict.nnunet import _preprocess
    from totalseg.prepare.nnunet_resample import resample_data, target_shape

    data, _ = _preprocess(_ct_xyz(), plans)
    spacing = np.array(CT_SPACING[::-1])[list(plans.transpose_forward)]
    shape = target_shape(data.shape[1:], spacing, plans.spacing)
    return resample_data(data, shape, spacing, plans.spacing, **plans.resampling_data)


def _starts(size: int, patch: int) -> list[int]:
    """Tile origins along one axis: as few as cover it, evenly spaced, the last one flush with the end."""
    n = max(1, math.ceil(size / patch))
    return sorted({int(round(s)) for s in np.linspace(0, max(size - patch, 0), n)})


def calibration_tiles(plans, in_channels: int, shape=None, max_tiles: int = MAX_TILES) -> list[np.ndarray]:
    """At most ``max_tiles`` float32 tiles (1, in_channels, *shape) of the shipped CT for a model with ``plans``
    (``shape``: the patch if None).

    Models with several input channels get the CT in every channel (there is one scan)."""
    volume = model_volume(plans)[0]
    patch = tuple(plans.patch_size if shape is None else shape)
    need = [max(p - s, 0) for p, s in zip(patch, volume.shape)]
    volume = np.pad(volume, [(n // 2, n - n // 2) for n in need])  # zeros, as the sliding window pads
    origins = list(itertools.product(*(_starts(s, p) for s, p in zip(volume.shape, patch))))
    if len(origins) > max_tiles:
        origins = [origins[int(i)] for i in np.linspace(0, len(origins) - 1, max_tiles).round()]
    tiles = []
    for origin in origins:
        tile = volume[tuple(slice(o, o + p) for o, p in zip(origin, patch))]
        tiles.append(np.ascontiguousarray(np.broadcast_to(tile, (1, in_channels, *patch)), dtype=np.float32))
    return tiles


def calibration_digest(plans, settings: str) -> str:
    """A short hash of what the tiles and the quantization depend on: the CT, the plans' grid and intensity
    settings, and ``settings`` (the quantizer's options)."""
    h = hashlib.blake2b(ct_bytes(), digest_size=6)
    h.update(repr((plans.patch_size, plans.spacing, plans.transpose_forward, plans.normalization,
                   plans.use_mask_for_norm, sorted(plans.intensity_properties.items()),
                   sorted(plans.resampling_data.items()), MAX_TILES, settings)).encode())
    return h.hexdigest()
