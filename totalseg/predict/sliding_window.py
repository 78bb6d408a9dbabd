"""Sliding-window inference with nnU-Net v2's tiles, Gaussian weights and fp16 accumulation.

Every arithmetic step is the one nnU-Net takes, so the logits are bit-identical: on the CPU the
network runs in float32 and its output is weighted by the float16 Gaussian in float32; on a CUDA
device the network runs under fp16 autocast and the weighting is in float16. The sum and the weight
sum accumulate in float16 (on the device), tiles visited with the first axis outermost.
"""
from __future__ import annotations

import itertools
import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterator

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


@dataclass(frozen=True)
class Runner:
    """How the networks of a model run: where, and through which engine.

    ``networks`` are torch modules on ``device`` (one per fold) or fast-engine callables (CPU);
    ``checks`` holds the answers about exact CPU shortcuts (the lean forward pass). On a CUDA device
    the networks run under nnU-Net's fp16 autocast and the sums stay on the device, as the official
    GPU path does; the ``meta`` device is a dry run (no values) that checks where tensors live.
    """

    networks: list
    device: str = "cpu"
    checks: KernelChecks | None = None
    notice: Callable[[str], None] | None = None
    progress_bar: Callable[[int], Any] | None = None  # total tiles -> a context manager with update(n)

    @property
    def on_cpu(self) -> bool:
        return self.device == "cpu"


def to_host(t) -> np.ndarray:
    """A tensor's values as a numpy array (zeros for a meta tensor, which has no values)."""
    if t.device.type == "meta":
        return np.zeros(tuple(t.shape), dtype=str(t.dtype).replace("torch.", "").replace("bool", "bool_"))
    return t.cpu().numpy()


def _autocast(device):
    import contextlib

    import torch

    # nnU-Net runs the network under fp16 autocast on CUDA only; elsewhere in float32.
    return torch.autocast("cuda", enabled=True) if device.type == "cuda" else contextlib.nullcontext()


def _forward(net, tile):
    import torch

    with torch.inference_mode(), _autocast(tile.device):
        return net(tile)[0]


def _forward_in_worker(net, tile):
    import torch

    torch.set_flush_denormal(True)  # a per-thread setting; pool threads end with the pool
    return _forward(net, tile)


def tile_workers(net, sample) -> int:
    """How many tiles of ``net`` may run at once: all threads for a small torch network on the CPU
    whose output on ``sample`` is bitwise the same with one thread as with all of them, else 1."""
    import torch

    threads = torch.get_num_threads()
    if (threads < 2 or not isinstance(net, torch.nn.Module) or sample.device.type != "cpu"
            or sum(p.numel() for p in net.parameters()) >= SMALL_NETWORK_PARAMETERS):
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
    compute at once (one intra-op thread each, set by the caller) while the caller consumes them."""
    def tile_input(tile):
        return volume[(slice(None), *tile)][None]

    if workers <= 1:
        for tile in tiles:
            yield _forward(net, tile_input(tile))
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        pending = deque()
        for tile in tiles:
            pending.append(pool.submit(_forward_in_worker, net, tile_input(tile)))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def weighted_outputs(net, volume, tiles, weight, workers: int = 1, checks: KernelChecks | None = None,
                     lean: bool = True):
    """``(tile index, z, output * weight)`` for every tile in order, where ``z`` slices the tile's
    first axis: whole tiles, or slabs of them from the memory-lean forward pass (CPU only)."""
    from totalseg.predict.lean_unet import LeanUNet, weighted_head_slabs

    head = getattr(net, "head", None)  # a fast-engine network that leaves its segmentation layer to torch
    if head is not None:
        for i, tile in enumerate(tiles):
            for z, out in weighted_head_slabs(net.features(volume[(slice(None), *tile)][None]), head, weight):
                yield i, z, out
        return
    if lean and workers <= 1 and volume.device.type == "cpu" and LeanUNet.supports(net):
        lean_net = LeanUNet(net, checks)
        for i, tile in enumerate(tiles):
            for z, out in lean_net.weighted_slabs(volume[(slice(None), *tile)][None], weight):
                yield i, z, out
        return
    whole = slice(0, weight.shape[0])
    for i, out in enumerate(network_outputs(net, volume, tiles, workers)):
        out = out.to(weight.device)
        out *= weight  # in the output's dtype: fp32 on the CPU, fp16 under CUDA autocast (as nnU-Net)
        yield i, whole, out


def check_finite(logits) -> None:
    """nnU-Net's refusal of infinite logits (fp16 overflow), in one pass over the values.

    Head by head: each head of a first-axis window of the sums is contiguous, while the window itself
    is not, and ``aminmax`` of a strided tensor first copies it whole (~370 MB for a chest CT at 1.5 mm)."""
    import torch

    from totalseg.errors import UserError

    bounds = torch.stack([torch.stack(torch.aminmax(head)) for head in logits])
    if to_host(torch.isinf(bounds).any()):
        raise UserError("the network produced infinite values (fp16 overflow); the weights may be corrupt")


@contextmanager
def _tile_counter(runner: Runner, total: int) -> Iterator[Callable[[], None]]:
    """A function to call once per finished tile: it moves the runner's progress bar, if any."""
    if runner.progress_bar is None:
        yield lambda: None
        return
    with runner.progress_bar(total) as bar:
        yield lambda: bar.update(1)


@contextmanager
def _one_thread_each(workers: int):
    """Intra-op threads set to one while ``workers`` tiles run side by side; restored after."""
    import torch

    threads = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _workers(runner: Runner, net, volume, tiles) -> int:
    if not runner.on_cpu or len(tiles) <= 8:
        return 1
    return tile_workers(net, volume[(slice(None), *tiles[0])][None])


def _prepare(data: np.ndarray, patch, step: float, device: str, results: str):
    """The padded input on ``device``, the Gaussian on ``results`` (where sums are kept), the tiles."""
    import torch

    padded, keep = pad_to_patch(data, patch)
    volume = torch.from_numpy(np.ascontiguousarray(padded)).to(device)
    weight = torch.from_numpy(gaussian_weights(tuple(patch)).copy()).to(results)
    return volume, weight, tile_grid(padded.shape[1:], patch, step), keep


def _on_device_or_host(runner: Runner, compute):
    """``compute(results_device)`` with the sums on the runner's device; if the device runs out of
    memory, again with the sums in host memory (nnU-Net's own fallback)."""
    import torch

    if runner.on_cpu or runner.device == "meta":
        return compute(runner.device)
    try:
        return compute(runner.device)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        if runner.notice is not None:
            runner.notice("WARNING: not enough GPU memory for the sums; keeping them in host memory")
        return compute("cpu")


def predict_logits(runner: Runner, data: np.ndarray, patch, step: float, num_heads: int):
    """Averaged fp16 logits (heads, *spatial) of the runner's networks (folds) over (C, *spatial)
    float32 data, on the device where the sums were kept."""
    return _on_device_or_host(runner, lambda results: _logits(runner, data, patch, step, num_heads, results))


def _logits(runner: Runner, data, patch, step: float, num_heads: int, results: str):
    import torch

    volume, weight, tiles, keep = _prepare(data, patch, step, runner.device, results)
    shape = volume.shape[1:]
    total = None
    with torch.inference_mode(), _tile_counter(runner, len(tiles) * len(runner.networks)) as tile_done:
        for net in runner.networks:
            logits = torch.zeros((num_heads, *shape), dtype=torch.float16, device=results)
            norm = torch.zeros(shape, dtype=torch.float16, device=results)
            workers = _workers(runner, net, volume, tiles)
            with _one_thread_each(workers):
                for i, z, out in weighted_outputs(net, volume, tiles, weight, workers, runner.checks,
                                                  runner.on_cpu):
                    tile = tiles[i]
                    target = (slice(tile[0].start + z.start, tile[0].start + z.stop), *tile[1:])
                    logits[(slice(None), *target)] += out
                    if z.start == 0:
                        norm[tile] += weight
                        tile_done()
            logits /= norm
            del norm
            total = logits if total is None else total.add_(logits)
            del logits
        if len(runner.networks) > 1:
            total /= len(runner.networks)
    return total[(slice(None), *keep)]


ARGMAX_SLICES = 16  # first-axis slices turned into labels at once (the same labels at any number)


def predict_labels(runner: Runner, data: np.ndarray, patch, step: float, num_heads: int, dtype) -> np.ndarray:
    """``argmax`` of :func:`predict_logits` as ``dtype``, holding fp16 sums for one patch depth only.

    Tiles come first-axis outermost, so once the tiles move on to a larger first-axis origin, the
    slices before it get no more additions: they are divided, checked and turned into labels, and
    the window moves on. Each voxel sees the same additions in the same order as in the whole-volume
    sum, so the labels are the same. Ensembles of folds take the whole-volume path.
    """
    if len(runner.networks) != 1:
        logits = predict_logits(runner, data, patch, step, num_heads)
        check_finite(logits)
        return to_host(logits.argmax(0)).astype(dtype)
    return _on_device_or_host(runner, lambda results: _streamed_labels(runner, data, patch, step, num_heads,
                                                                        dtype, results))


def _streamed_labels(runner: Runner, data, patch, step: float, num_heads: int, dtype, results: str):
    import torch

    net = runner.networks[0]
    volume, weight, tiles, keep = _prepare(data, patch, step, runner.device, results)
    shape = volume.shape[1:]
    depth = patch[0]
    logits = torch.zeros((num_heads, depth, *shape[1:]), dtype=torch.float16, device=results)
    norm = torch.zeros((depth, *shape[1:]), dtype=torch.float16, device=results)
    labels = np.zeros(shape, dtype=dtype)
    base = 0  # first-axis index of the window's first slice

    def finish(n: int) -> None:
        """Labels for the window's first ``n`` slices; then slide the window by ``n``."""
        values = logits[:, :n]
        values /= norm[:n]  # these slices are final: divide in place
        check_finite(values)
        for s in range(0, n, ARGMAX_SLICES):  # argmax's int64 output, a slab at a time
            labels[base + s:base + min(s + ARGMAX_SLICES, n)] = to_host(values[:, s:s + ARGMAX_SLICES].argmax(0))
        del values
        # Slide in pieces of at most n slices, so no piece overlaps its own source.
        for start in range(0, depth - n, n):
            stop = min(start + n, depth - n)
            logits[:, start:stop] = logits[:, start + n:stop + n]
            norm[start:stop] = norm[start + n:stop + n]
        logits[:, depth - n:] = 0
        norm[depth - n:] = 0

    workers = _workers(runner, net, volume, tiles)
    with torch.inference_mode(), _one_thread_each(workers), _tile_counter(runner, len(tiles)) as tile_done:
        for i, z, out in weighted_outputs(net, volume, tiles, weight, workers, runner.checks, runner.on_cpu):
            tile = tiles[i]
            if tile[0].start > base:
                finish(tile[0].start - base)
                base = tile[0].start
            local = slice(tile[0].start - base + z.start, tile[0].start - base + z.stop)
            logits[(slice(None), local, *tile[1:])] += out
            if z.start == 0:
                norm[(slice(None), *tile[1:])] += weight
                tile_done()
        finish(depth)
    return labels[keep]
