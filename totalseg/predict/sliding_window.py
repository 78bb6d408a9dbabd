"""Sliding-window inference with nnU-Net v2's tiles, Gaussian weights and fp16 accumulation.

Every arithmetic step is the one nnU-Net takes on the CPU, so the logits are bit-identical:
the network runs in float32, its output is weighted by the float16 Gaussian in float32, and the
sum and the weight sum accumulate in float16, tiles visited with the first axis outermost.
"""
from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter


def tile_starts(size: int, patch: int, step: float) -> list[int]:
    """Tile origins along one axis: as few as the step allows, spread evenly, rounded half-even."""
    stride = patch * step
    count = math.ceil((size - patch) / stride) + 1
    if count <= 1:
        return [0]
    spread = (size - patch) / (count - 1)
    return [int(np.round(spread * i)) for i in range(count)]


def tile_grid(shape, patch, step: float) -> list[tuple[slice, ...]]:
    """All tiles of a padded volume, first axis outermost."""
    starts = [tile_starts(s, p, step) for s, p in zip(shape, patch)]
    return [tuple(slice(o, o + p) for o, p in zip(origin, patch)) for origin in itertools.product(*starts)]


@lru_cache(maxsize=4)
def gaussian_weights(patch: tuple[int, ...]) -> np.ndarray:
    """float16 importance map: a Gaussian (sigma = patch/8) peaking at 10, no zeros."""
    delta = np.zeros(patch)
    delta[tuple(p // 2 for p in patch)] = 1
    g = gaussian_filter(delta, [p / 8 for p in patch], 0, mode="constant", cval=0)
    g = (g / (g.max() / 10)).astype(np.float16)
    g[g == 0] = g[g != 0].min()
    g.setflags(write=False)
    return g


def pad_to_patch(data: np.ndarray, patch) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad the spatial axes of (C, *spatial) up to the patch size, extra voxel after."""
    spatial = data.shape[1:]
    if all(s >= p for s, p in zip(spatial, patch)):
        return data, tuple(slice(0, s) for s in spatial)
    widths = [(0, 0)]
    keep = []
    for s, p in zip(spatial, patch):
        diff = max(p - s, 0)
        before = diff // 2
        widths.append((before, diff - before))
        keep.append(slice(before, before + s))
    return np.pad(data, widths, mode="constant", constant_values=0), tuple(keep)


def predict_logits(networks, data: np.ndarray, patch, step: float, num_heads: int):
    """Averaged fp16 logits (heads, *spatial) of ``networks`` (folds) over (C, *spatial) float32 data."""
    import torch

    padded, keep = pad_to_patch(data, patch)
    volume = torch.from_numpy(np.ascontiguousarray(padded))
    weight = torch.from_numpy(gaussian_weights(tuple(patch)).copy())
    tiles = tile_grid(padded.shape[1:], patch, step)
    total = None
    with torch.inference_mode():
        for net in networks:
            logits = torch.zeros((num_heads, *padded.shape[1:]), dtype=torch.float16)
            norm = torch.zeros(padded.shape[1:], dtype=torch.float16)
            for tile in tiles:
                out = net(volume[(slice(None), *tile)][None])[0]
                out *= weight
                logits[(slice(None), *tile)] += out
                norm[tile] += weight
            logits /= norm
            total = logits if total is None else total.add_(logits)
        if len(networks) > 1:
            total /= len(networks)
    return total[(slice(None), *keep)]
