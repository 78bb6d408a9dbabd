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


def weighted_outputs(net, volume, tiles, weight, workers: int = 1, checks: KernelChecks | None = None):
    """``(tile index, z, output * weight)`` for every tile in order, where ``z`` slices the tile's
    first axis: whole tiles, or slabs of them from the memory-lean forward pass."""
    from totalseg.predict.lean_unet import LeanUNet

    if workers <= 1 and LeanUNet.supports(net):
        lean = LeanUNet(net, checks)
        for i, tile in enumerate(tiles):
            for z, out in lean.weighted_slabs(volume[(slice(None), *tile)][None], weight):
                yield i, z, out
        return
    whole = slice(0, weight.shape[0])
    for i, out in enumerate(network_outputs(net, volume, tiles, workers)):
        out *= weight
        yield i, whole, out


def check_finite(logits) -> None:
    """nnU-Net's refusal of infinite logits (fp16 overflow), in one pass over the values."""
    import torch

    from totalseg.errors import UserError

    low, high = torch.aminmax(logits)
    if torch.isinf(low) or torch.isinf(high):
        raise UserError("the network produced infinite values (fp16 overflow); the weights may be corrupt")


def _workers(net, volume, tiles) -> int:
    return tile_workers(net, volume[(slice(None), *tiles[0])][None]) if len(tiles) > 8 else 1


def _prepare(data: np.ndarray, patch, step: float):
    import torch

    padded, keep = pad_to_patch(data, patch)
    volume = torch.from_numpy(np.ascontiguousarray(padded))
    weight = torch.from_numpy(gaussian_weights(tuple(patch)).copy())
    return volume, weight, tile_grid(padded.shape[1:], patch, step), keep


def predict_logits(networks, data: np.ndarray, patch, step: float, num_heads: int,
                   checks: KernelChecks | None = None):
    """Averaged fp16 logits (heads, *spatial) of ``networks`` (folds) over (C, *spatial) float32 data;
    ``checks`` remembers which exact shortcuts hold for these networks on this machine."""
    import torch

    volume, weight, tiles, keep = _prepare(data, patch, step)
    shape = volume.shape[1:]
    total = None
    # Subnormal floats (below 1.2e-38) slow the CPU many times over and cannot move an fp16 logit
    # (this thread's setting; tile workers set their own).
    torch.set_flush_denormal(True)
    try:
        with torch.inference_mode():
            for net in networks:
                logits = torch.zeros((num_heads, *shape), dtype=torch.float16)
                norm = torch.zeros(shape, dtype=torch.float16)
                outputs = weighted_outputs(net, volume, tiles, weight, _workers(net, volume, tiles), checks)
                for i, z, out in outputs:
                    tile = tiles[i]
                    target = (slice(tile[0].start + z.start, tile[0].start + z.stop), *tile[1:])
                    logits[(slice(None), *target)] += out
                    if z.start == 0:
                        norm[tile] += weight
                logits /= norm
                del norm
                total = logits if total is None else total.add_(logits)
                del logits
            if len(networks) > 1:
                total /= len(networks)
    finally:
        torch.set_flush_denormal(False)
    return total[(slice(None), *keep)]


def predict_labels(networks, data: np.ndarray, patch, step: float, num_heads: int, dtype,
                   checks: KernelChecks | None = None) -> np.ndarray:
    """``argmax`` of :func:`predict_logits` as ``dtype``, holding fp16 sums for one patch depth only.

    Tiles come first-axis outermost, so once the tiles move on to a larger first-axis origin, the
    slices before it get no more additions: they are divided, checked and turned into labels, and
    the window moves on. Each voxel sees the same additions in the same order as in the whole-volume
    sum, so the labels are the same. Ensembles of folds take the whole-volume path.
    """
    import torch

    if len(networks) != 1:
        logits = predict_logits(networks, data, patch, step, num_heads, checks)
        check_finite(logits)
        return logits.argmax(0).numpy().astype(dtype)
    net = networks[0]
    volume, weight, tiles, keep = _prepare(data, patch, step)
    shape = volume.shape[1:]
    depth = patch[0]
    logits = torch.zeros((num_heads, depth, *shape[1:]), dtype=torch.float16)
    norm = torch.zeros((depth, *shape[1:]), dtype=torch.float16)
    labels = np.zeros(shape, dtype=dtype)
    base = 0  # first-axis index of the window's first slice

    def finish(n: int) -> None:
        """Labels for the window's first ``n`` slices; then slide the window by ``n``."""
        values = logits[:, :n]
        values /= norm[:n]  # these slices are final: divide in place
        check_finite(values)
        labels[base:base + n] = values.argmax(0).numpy()
        del values
        # Slide in pieces of at most n slices, so no piece overlaps its own source.
        for start in range(0, depth - n, n):
            stop = min(start + n, depth - n)
            logits[:, start:stop] = logits[:, start + n:stop + n]
            norm[start:stop] = norm[start + n:stop + n]
        logits[:, depth - n:] = 0
        norm[depth - n:] = 0

    torch.set_flush_denormal(True)
    try:
        with torch.inference_mode():
            outputs = weighted_outputs(net, volume, tiles, weight, _workers(net, volume, tiles), checks)
            for i, z, out in outputs:
                tile = tiles[i]
                if tile[0].start > base:
                    finish(tile[0].start - base)
                    base = tile[0].start
                local = slice(tile[0].start - base + z.start, tile[0].start - base + z.stop)
                logits[(slice(None), local, *tile[1:])] += out
                if z.start == 0:
                    norm[(slice(None), *tile[1:])] += weight
            finish(depth)
    finally:
        torch.set_flush_denormal(False)
    return labels[keep]
