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

from totalseg.predict.kernel_checks import KernelChecks


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


# Networks with fewer parameters than this are tried with tiles run side by side, one thread each:
# small convolutions gain nothing from intra-op threads, and their results do not depend on them.
SMALL_NETWORK_PARAMETERS = 2_000_000


def _forward(net, tile):
    import torch

    with torch.inference_mode():
        return net(tile)[0]


def _forward_in_worker(net, tile):
    import torch

    torch.set_flush_denormal(True)  # a per-thread setting; pool threads end with the pool
    return _forward(net, tile)


def tile_workers(net, sample) -> int:
    """How many tiles of ``net`` may run at once: all threads for a small network whose output on
    ``sample`` is bitwise the same with one thread as with all of them, else 1 (intra-op threads)."""
    import torch

    threads = torch.get_num_threads()
    if threads < 2 or sum(p.numel() for p in net.parameters()) >= SMALL_NETWORK_PARAMETERS:
        return 1
    reference = _forward(net, sample)
    torch.set_num_threads(1)
    try:
        single = _forward(net, sample)
    finally:
        torch.set_num_threads(threads)
    return threads if torch.equal(reference, single) else 1


def network_outputs(net, volume, tiles, workers: int = 1):
    """The network's output for each tile, in tile order; with ``workers`` > 1 several tiles
    compute at once (one intra-op thread each) while the caller consumes them in order."""
    import torch

    def tile_input(tile):
        return volume[(slice(None), *tile)][None]

    if workers <= 1:
        for tile in tiles:
            yield _forward(net, tile_input(tile))
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            pending = deque()
            for tile in tiles:
                pending.append(pool.submit(_forward_in_worker, net, tile_input(tile)))
                if len(pending) > 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:
        torch.set_num_threads(threads)


def _accumulator(net, volume, tiles, workers, num_heads, weight, shape, checks):
    """Sum of the Gaussian-weighted outputs of ``net`` over ``tiles`` and the sum of the weights
    (both float16, nnU-Net's order of additions)."""
    import torch

    from totalseg.predict.lean_unet import LeanUNet

    logits = torch.zeros((num_heads, *shape), dtype=torch.float16)
    norm = torch.zeros(shape, dtype=torch.float16)
    if workers <= 1 and LeanUNet.supports(net):
        lean = LeanUNet(net, checks)
        for tile in tiles:
            target = logits[(slice(None), *tile)]
            lean.add_weighted(volume[(slice(None), *tile)][None], weight,
                              lambda z, out: target[:, z].add_(out))
            del target
            norm[tile] += weight
        return logits, norm
    for i, out in enumerate(network_outputs(net, volume, tiles, workers)):
        tile = tiles[i]
        out *= weight
        logits[(slice(None), *tile)] += out
        norm[tile] += weight
    return logits, norm


def predict_logits(networks, data: np.ndarray, patch, step: float, num_heads: int,
                   checks: KernelChecks | None = None):
    """Averaged fp16 logits (heads, *spatial) of ``networks`` (folds) over (C, *spatial) float32 data;
    ``checks`` remembers which exact shortcuts hold for these networks on this machine."""
    import torch

    padded, keep = pad_to_patch(data, patch)
    volume = torch.from_numpy(np.ascontiguousarray(padded))
    weight = torch.from_numpy(gaussian_weights(tuple(patch)).copy())
    tiles = tile_grid(padded.shape[1:], patch, step)
    total = None
    # Subnormal floats (below 1.2e-38) slow the CPU many times over and cannot move an fp16 logit
    # (this thread's setting; tile workers set their own).
    torch.set_flush_denormal(True)
    with torch.inference_mode():
        for net in networks:
            workers = tile_workers(net, volume[(slice(None), *tiles[0])][None]) if len(tiles) > 8 else 1
            logits, norm = _accumulator(net, volume, tiles, workers, num_heads, weight, padded.shape[1:],
                                        checks)
            logits /= norm
            del norm
            total = logits if total is None else total.add_(logits)
            del logits
        if len(networks) > 1:
            total /= len(networks)
    torch.set_flush_denormal(False)
    return total[(slice(None), *keep)]
