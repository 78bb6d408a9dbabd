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
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterator, Protocol

import numpy as np
from scipy.ndimage import gaussian_filter

from totalseg.device import device_kind
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


def to_host(t) -> np.ndarray:
    """A tensor's values as a numpy array (zeros for a meta tensor, which has no values)."""
    if device_kind(t.device) == "meta":
        return np.zeros(tuple(t.shape), dtype=str(t.dtype).replace("torch.", "").replace("bool", "bool_"))
    return t.cpu().numpy()


def run_float32(net, tile):
    """The network's output for one tile (1, C, *patch), in float32: nnU-Net's CPU arithmetic."""
    import torch

    with torch.inference_mode():
        return net(tile)[0]


def run_autocast(net, tile):
    """The network's output for one tile under fp16 autocast: nnU-Net's CUDA arithmetic."""
    import torch

    with torch.inference_mode(), torch.autocast("cuda", enabled=True):
        return net(tile)[0]


def _run_in_worker(run, net, tile):
    import torch

    torch.set_flush_denormal(True)  # a per-thread setting; pool threads end with the pool
    return run(net, tile)


def tile_workers(net, sample) -> int:
    """How many tiles of ``net`` may run at once: all threads for a small torch network on the CPU
    whose output on ``sample`` is bitwise the same with one thread as with all of them, else 1."""
    import torch

    threads = torch.get_num_threads()
    if (threads < 2 or not isinstance(net, torch.nn.Module) or device_kind(sample.device) != "cpu"
            or sum(p.numel() for p in net.parameters()) >= SMALL_NETWORK_PARAMETERS):
        return 1
    reference = run_float32(net, sample)
    torch.set_num_threads(1)
    try:
        single = run_float32(net, sample)
    finally:
        torch.set_num_threads(threads)
    return threads if torch.equal(reference, single) else 1


def _tile_input(volume, tile):
    return volume[(slice(None), *tile)][None]


def network_outputs(net, volume, tiles, workers: int = 1, run: Callable = run_float32):
    """The network's output for each tile (``run(net, tile)``), in tile order; with ``workers`` > 1
    several tiles compute at once (one intra-op thread each, set by the caller) while the caller
    consumes them."""
    if workers <= 1:
        for tile in tiles:
            yield run(net, _tile_input(volume, tile))
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        pending = deque()
        for tile in tiles:
            pending.append(pool.submit(_run_in_worker, run, net, _tile_input(volume, tile)))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _weighted_whole_tiles(net, volume, tiles, weight, workers: int = 1, run: Callable = run_float32):
    """``(tile index, whole first axis, output * weight)`` per tile, the weighting in the output's
    dtype: fp32 on the CPU, fp16 under CUDA autocast (as nnU-Net), where the sums are kept."""
    whole = slice(0, weight.shape[0])
    for i, out in enumerate(network_outputs(net, volume, tiles, workers, run)):
        out = out.to(weight.device)
        out *= weight
        yield i, whole, out


class TileForward(Protocol):
    """How one engine on one device runs a network over the tiles of a volume; chosen once per
    loaded model (:func:`tile_forward`), so the sliding window never asks again.

    ``device``: where the input lives (and the sums, unless moved to the host);
    ``host_fallback``: whether sums that do not fit there may be kept in host memory instead."""

    device: str
    host_fallback: bool

    def workers(self, net, volume, tiles) -> int:
        """How many tiles run side by side (the caller sets one intra-op thread each when > 1)."""

    def weighted_outputs(self, net, volume, tiles, weight, workers: int) -> Iterator[tuple[int, slice, Any]]:
        """``(tile index, z, output * weight)`` for every tile in order; ``z`` slices the tile's
        first axis: whole tiles or slabs of them."""


@dataclass(frozen=True)
class ExactCpuForward:
    """torch's CPU kernels in float32 (the official masks bit for bit): small networks run several
    tiles at once where that gives the same numbers, others the memory-lean forward pass."""

    checks: KernelChecks | None = None
    device: str = "cpu"
    host_fallback: bool = False  # the sums are in host memory already

    def workers(self, net, volume, tiles) -> int:
        if len(tiles) <= 8:  # too few tiles to pay for the check
            return 1
        return tile_workers(net, _tile_input(volume, tiles[0]))

    def weighted_outputs(self, net, volume, tiles, weight, workers: int):
        from totalseg.predict.lean_unet import LeanUNet

        if workers > 1 or not LeanUNet.supports(net):
            return _weighted_whole_tiles(net, volume, tiles, weight, workers)
        lean_net = LeanUNet(net, self.checks)
        return ((i, z, out) for i, tile in enumerate(tiles)
                for z, out in lean_net.weighted_slabs(_tile_input(volume, tile), weight))


@dataclass(frozen=True)
class ExactDeviceForward:
    """torch on an accelerator (or the ``meta`` dry run): under nnU-Net's fp16 autocast on CUDA,
    in float32 elsewhere; whole tiles, one at a time."""

    device: str
    autocast: bool = False

    @property
    def host_fallback(self) -> bool:
        return device_kind(self.device) != "meta"  # a dry run allocates nothing

    def workers(self, net, volume, tiles) -> int:
        return 1

    def weighted_outputs(self, net, volume, tiles, weight, workers: int):
        run = run_autocast if self.autocast else run_float32
        return _weighted_whole_tiles(net, volume, tiles, weight, 1, run)


@dataclass(frozen=True)
class FastForward:
    """OpenVINO networks (fast_engine.FastNetwork) on the CPU; where the segmentation layer was left
    to torch (``head``), its output is made and weighted slab by slab."""

    device: str = "cpu"
    host_fallback: bool = False

    def workers(self, net, volume, tiles) -> int:
        return 1  # one infer request per network: tiles take turns anyway

    def weighted_outputs(self, net, volume, tiles, weight, workers: int):
        from totalseg.predict.lean_unet import weighted_head_slabs

        if net.head is None:
            return _weighted_whole_tiles(net, volume, tiles, weight)
        return ((i, z, out) for i, tile in enumerate(tiles)
                for z, out in weighted_head_slabs(net.features(_tile_input(volume, tile)), net.head, weight))


def tile_forward(networks, device: str, checks: KernelChecks | None = None) -> TileForward:
    """The one tile forward for ``networks`` (torch modules on ``device``, or FastNetworks) on ``device``."""
    from totalseg.predict.fast_engine import FastNetwork

    if networks and all(isinstance(net, FastNetwork) for net in networks):
        return FastForward()
    kind = device_kind(device)
    if kind == "cpu":
        return ExactCpuForward(checks)
    return ExactDeviceForward(device, autocast=kind == "cuda")  # nnU-Net autocasts on CUDA only


@dataclass(frozen=True)
class Runner:
    """How the networks of a model run: where, and through which engine.

    ``networks`` are torch modules on ``device`` (one per fold) or fast-engine callables (CPU);
    ``checks`` holds the answers about exact CPU shortcuts (the lean forward pass). On a CUDA device
    the networks run under nnU-Net's fp16 autocast and the sums stay on the device, as the official
    GPU path does; the ``meta`` device is a dry run (no values) that checks where tensors live.
    ``forward`` is how each tile runs, picked once here from the networks and the device.
    """

    networks: list
    device: str = "cpu"
    checks: KernelChecks | None = None
    notice: Callable[[str], None] | None = None
    progress_bar: Callable[[int], Any] | None = None  # total tiles -> a context manager with update(n)
    forward: TileForward = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "forward", tile_forward(self.networks, self.device, self.checks))


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

    if not runner.forward.host_fallback:
        return compute(runner.device)
    try:
        return compute(runner.device)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        if runner.notice is not None:
            runner.notice("WARNING: not enough GPU memory for the sums; keeping them in host memory")
        return compute("cpu")


class _Sums(Protocol):
    """Where the fp16 sums of one network's tiles live: first-axis slices ``base`` onwards."""

    logits: Any  # (heads, first-axis window, *rest)
    norm: Any  # (first-axis window, *rest)
    base: int

    def advance(self, start: int) -> None:
        """The tiles have reached first-axis origin ``start``: slices before it get no more additions."""

    def close(self) -> None:
        """The last tile is in."""


class _WholeSums:
    """Sums over the whole volume: no slice is final before the last tile; then divided in place."""

    base = 0

    def __init__(self, num_heads: int, shape, results: str) -> None:
        import torch

        self.logits = torch.zeros((num_heads, *shape), dtype=torch.float16, device=results)
        self.norm = torch.zeros(shape, dtype=torch.float16, device=results)

    def advance(self, start: int) -> None:
        pass

    def close(self) -> None:
        self.logits /= self.norm
        self.norm = None  # freed before the next network's sums


def _accumulate(forward: TileForward, net, volume, tiles, weight, sums: _Sums, tile_done) -> None:
    """The one accumulation loop: every tile's weighted output and the weight added into ``sums`` in
    fp16, tiles in order (first axis outermost), then ``sums.close()``."""
    workers = forward.workers(net, volume, tiles)
    with _one_thread_each(workers):
        for i, z, out in forward.weighted_outputs(net, volume, tiles, weight, workers):
            tile = tiles[i]
            sums.advance(tile[0].start)
            first = tile[0].start - sums.base  # the tile's first slice in the sums' window
            sums.logits[(slice(None), slice(first + z.start, first + z.stop), *tile[1:])] += out
            del out  # not held while the next tile is computed
            if z.start == 0:
                sums.norm[(slice(first, first + weight.shape[0]), *tile[1:])] += weight
                tile_done()
        sums.close()


def predict_logits(runner: Runner, data: np.ndarray, patch, step: float, num_heads: int):
    """Averaged fp16 logits (heads, *spatial) of the runner's networks (folds) over (C, *spatial)
    float32 data, on the device where the sums were kept."""
    return _on_device_or_host(runner, lambda results: _logits(runner, data, patch, step, num_heads, results))


def _logits(runner: Runner, data, patch, step: float, num_heads: int, results: str):
    import torch

    volume, weight, tiles, keep = _prepare(data, patch, step, runner.device, results)
    total = None
    with torch.inference_mode(), _tile_counter(runner, len(tiles) * len(runner.networks)) as tile_done:
        for net in runner.networks:
            sums = _WholeSums(num_heads, volume.shape[1:], results)
            _accumulate(runner.forward, net, volume, tiles, weight, sums, tile_done)
            total = sums.logits if total is None else total.add_(sums.logits)
            del sums
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


class _StreamedSums:
    """Sums for one patch depth of first-axis slices: finished slices become labels and the window slides."""

    def __init__(self, num_heads: int, shape, depth: int, dtype, results: str) -> None:
        import torch

        self.logits = torch.zeros((num_heads, depth, *shape[1:]), dtype=torch.float16, device=results)
        self.norm = torch.zeros((depth, *shape[1:]), dtype=torch.float16, device=results)
        self.labels = np.zeros(shape, dtype=dtype)
        self.depth = depth
        self.base = 0  # first-axis index of the window's first slice

    def advance(self, start: int) -> None:
        if start > self.base:
            self._finish(start - self.base)
            self.base = start

    def close(self) -> None:
        self._finish(self.depth)

    def _finish(self, n: int) -> None:
        """Labels for the window's first ``n`` slices; then slide the window by ``n``."""
        logits, norm, depth, base = self.logits, self.norm, self.depth, self.base
        values = logits[:, :n]
        values /= norm[:n]  # these slices are final: divide in place
        check_finite(values)
        labels = self.labels
        for s in range(0, n, ARGMAX_SLICES):  # argmax's int64 output, a slab at a time
            labels[base + s:base + min(s + ARGMAX_SLICES, n)] = self._labels(values[:, s:s + ARGMAX_SLICES])
        del values
        # Slide in pieces of at most n slices, so no piece overlaps its own source.
        for start in range(0, depth - n, n):
            stop = min(start + n, depth - n)
            logits[:, start:stop] = logits[:, start + n:stop + n]
            norm[start:stop] = norm[start + n:stop + n]
        logits[:, depth - n:] = 0
        norm[depth - n:] = 0

    def _labels(self, values) -> np.ndarray:
        """The labels of final slices' averaged values (heads, slices, *rest)."""
        return to_host(values.argmax(0))


class _FeatureSums(_StreamedSums):
    """Streamed fp16 sums of a fast engine's weighted last feature maps instead of its logits.

    The segmentation layer is linear (a 1x1x1 convolution), so applied once to the averaged features it gives
    the averaged logits, up to rounding: 3-4x fewer values added per tile (32 channels, not 118 classes) and
    one matrix product per voxel instead of one per tile covering it. Not the exact engine's sums, so only
    where the trunk itself is coarser than fp16 (bf16, int8): there the labels agree with exact as often either way
    (fake_weights_tiny, example_ct_sm against the official: bf16 99.73 % with fp16 logit sums, 99.70 % this way),
    while f32 keeps the fp16 logit sums (99.9997 %; 99.94 % this way). Kept in fp16 like those and streamed along
    the axis of smallest cross-section (a chest CT at 1.5 mm: 0.5 GB instead of 1.7 GB in float32 along the
    first axis); coarse, like fp16 logit sums, only at a volume's edges, which only tile corners cover, with
    weights below fp16's normal range."""

    def __init__(self, head, shape, depth: int, dtype) -> None:
        super().__init__(head.in_channels, shape, depth, dtype, "cpu")
        self.head = head

    def _labels(self, values) -> np.ndarray:
        return self.head.labels(values).numpy()


def streaming_order(shape) -> tuple[int, ...]:
    """The spatial axes with the one of smallest cross-section first (the first on ties): streamed along
    it, the sums hold one patch depth of the smallest planes (a chest CT at 1.5 mm: 333x188 instead of
    333x333 voxels a slice)."""
    def plane(axis: int) -> int:
        return math.prod(s for a, s in enumerate(shape) if a != axis)

    first = min(range(len(shape)), key=lambda a: (plane(a), a))
    return (first, *(a for a in range(len(shape)) if a != first))


class _WeightedFeatures:
    """The fast engine's tiles as weighted last feature maps in fp16, whole tiles in order (for _FeatureSums),
    with their axes in ``order``: tiles are given in that order, the network and ``weight`` (its Gaussian, fp16)
    are in its own. A float32 tile is copied into one fp16 buffer: torch adds float32 into fp16 sums through
    temporary float32 copies of the whole tile."""

    def __init__(self, order: tuple[int, ...], weight) -> None:
        self.order, self.weight = order, weight

    def workers(self, net, volume, tiles) -> int:
        return 1

    def weighted_outputs(self, net, volume, tiles, weight, workers: int):
        import torch

        whole = slice(0, weight.shape[0])
        back = tuple(int(a) for a in np.argsort(self.order))
        buffer = None
        for i, tile in enumerate(tiles):
            out = net.features(_tile_input(volume, tuple(tile[a] for a in back)))[0]
            out *= self.weight
            out = out.permute(0, *(1 + a for a in self.order))  # a view: the sums read it in this order
            if out.dtype != torch.float16:
                if buffer is None:
                    buffer = torch.empty(out.shape, dtype=torch.float16)
                out = buffer.copy_(out)
            yield i, whole, out


def _feature_labels(net, volume, weight, patch, step: float, dtype, tile_done) -> np.ndarray:
    """Labels of a bf16 or int8 trunk from _FeatureSums streamed along :func:`streaming_order`'s first axis."""
    shape = volume.shape[1:]
    order = streaming_order(shape)
    ordered = [shape[a] for a in order]
    sums = _FeatureSums(net.head, ordered, patch[order[0]], dtype)
    tiles = tile_grid(ordered, [patch[a] for a in order], step)  # the streamed axis outermost
    forward = _WeightedFeatures(order, weight)
    _accumulate(forward, net, volume, tiles, weight.permute(order).contiguous(), sums, tile_done)
    return sums.labels.transpose(np.argsort(order))


def _streamed_labels(runner: Runner, data, patch, step: float, num_heads: int, dtype, results: str):
    import torch

    volume, weight, tiles, keep = _prepare(data, patch, step, runner.device, results)
    net, forward = runner.networks[0], runner.forward
    with torch.inference_mode(), _tile_counter(runner, len(tiles)) as tile_done:
        if isinstance(forward, FastForward) and net.head is not None and net.precision != "f32":
            labels = _feature_labels(net, volume, weight, patch, step, dtype, tile_done)
        else:
            sums = _StreamedSums(num_heads, volume.shape[1:], patch[0], dtype, results)
            _accumulate(forward, net, volume, tiles, weight, sums, tile_done)
            labels = sums.labels
    return labels[keep]
