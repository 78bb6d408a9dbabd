"""The predictor: one owner for the device, the engine, the loaded models and torch's settings.

A notebook or a cohort script loads models once and segments many images::

    from totalseg import Predictor

    with Predictor(device="gpu") as predictor:          # or device="cpu", engine="fast"
        for path in paths:
            predictor.segment(path, out_dir / path.name, fast=True, ml=True)

``segment`` takes the options of :func:`totalseg.totalsegmentator` (which itself runs through a
predictor). Torch's intra-op thread count, its denormal setting and cuDNN's flags are set
only while a model runs and are restored afterwards, so the caller's own torch settings stay as
they were. Use one predictor from one thread at a time.
"""
from __future__ import annotations

import gc
import os
import sys
from collections import OrderedDict
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from totalseg import home
from totalseg.device import device_kind, select_device
from totalseg.errors import UserError
from totalseg.notice import notice_printer, timed
from totalseg.registry import Model
from totalseg.run.engine import check_engine, chosen_engine, default_threads

if TYPE_CHECKING:
    from totalseg.predict.int8_engine import Quantization


def flushing_denormals() -> bool:
    """Whether this thread flushes subnormal floats to zero (torch has no getter: a subnormal
    operand reads as zero when it does)."""
    import torch

    return bool((torch.tensor([1e-39]) * torch.tensor([1.0])).item() == 0.0)


@contextmanager
def torch_settings(threads: int | None, flush_denormal: bool, pin_cudnn: bool = False) -> Iterator[None]:
    """Torch's thread count and denormal flushing set for a block, and with ``pin_cudnn`` cuDNN's
    algorithm choice pinned (deterministic algorithms, no benchmark autotuning); all restored after."""
    import torch

    cudnn = torch.backends.cudnn
    before = (torch.get_num_threads(), flushing_denormals(), cudnn.benchmark, cudnn.deterministic)
    if threads is not None:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(flush_denormal)
    if pin_cudnn:
        cudnn.benchmark, cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.set_flush_denormal(before[1])
        cudnn.benchmark, cudnn.deterministic = before[2], before[3]


TileProgress = Callable[[str, int, int], None]  # (model folder, tiles done, tiles of this model run)


@contextmanager
def _tiles_counted(name: str, total: int, bar: bool, progress: TileProgress | None) -> Iterator:
    """What the sliding window moves once per tile: a tqdm bar on stderr (removed when done: the run's own
    lines stay) and/or the caller's ``progress`` function."""
    shown = None
    if bar:
        from tqdm import tqdm

        shown = tqdm(total=total, desc=f"  {name}", unit="tile", file=sys.stderr, leave=False, dynamic_ncols=True)
    done = 0

    def update(n: int) -> None:
        nonlocal done
        done += n
        if shown is not None:
            shown.update(n)
        if progress is not None:
            progress(name, done, total)

    try:
        if progress is not None:
            progress(name, 0, total)
        yield SimpleNamespace(update=update)
    finally:
        if shown is not None:
            shown.close()


def return_freed_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing): what one
    model's run freed in pieces would otherwise stay in the process, and the next model's peak adds to it."""
    import ctypes

    if sys.platform.startswith("linux"):
        trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # the process's own symbols: glibc's, not musl's
        if trim is not None:
            trim(0)


class _Entry:
    """A loaded model: plans, networks on the device, and what runs them."""

    def __init__(self, loaded, runner):
        self.plans = loaded.plans
        self.runner = runner

    def release_memory(self) -> None:
        """Free what the networks hold only while they run (the fast engine's intermediate buffers), so a
        model kept loaded between runs (a cohort keeps every model of a case) costs little more than its weights."""
        for net in self.runner.networks:
            release = getattr(net, "release_memory", None)
            if release is not None:
                release()


class Predictor:
    """Runs nnU-Net models on one device through one engine, loading each model once.

    device: ``gpu`` / ``gpu:N`` (CUDA; the CPU with a notice when there is none), ``cpu``, ``mps``,
    or ``meta`` (a dry run without values, for tests). engine: ``exact`` (the official arithmetic,
    bit for bit), ``fast`` (CPU only: OpenVINO, bf16 where the CPU has it; not bitwise) or ``int8``
    (CPU only: OpenVINO with NNCF's 8-bit quantization, calibrated once per model; not bitwise either).
    keep_models: how many loaded models stay in memory (least recently used dropped first).
    progress_bars: a bar per model on stderr (tiles done, elapsed, ETA); None: when stderr is a terminal.
    progress: called as tiles finish with (model folder, tiles done, tiles of that model run), e.g. to move a
    notebook's or a service's own progress bar; the attribute may be replaced between runs.
    quantization: the int8 engine's NNCF options (``int8_engine.Quantization``; None: its measured default).
    """

    def __init__(self, device: str = "gpu", engine: str = "exact", threads: int | None = None,
                 keep_models: int = 1, home_dir: Path | None = None,
                 notice: Callable[[str], None] | None = None, progress_bars: bool | None = None,
                 quantization: Quantization | None = None, progress: TileProgress | None = None):
        check_engine(engine)
        if quantization is not None and engine != "int8":
            raise UserError(f"quantization options are for the int8 engine, not --engine {engine}")
        self.notice = notice or notice_printer()
        self.device = "meta" if device == "meta" else select_device(device, self.notice)
        if engine in ("fast", "int8") and device_kind(self.device) != "cpu":
            raise UserError(f"--engine {engine} runs on the CPU; use -d cpu with it, or --engine exact on the GPU")
        if engine == "int8":
            from totalseg.predict.int8_engine import missing

            if hint := missing():
                raise UserError(hint)
        self.engine, self.quantization = engine, quantization
        self.threads = threads or default_threads()
        self.keep_models = max(1, keep_models)
        self.progress_bars = sys.stderr.isatty() if progress_bars is None else progress_bars
        self.progress = progress
        self.home = home.home_dir() if home_dir is None else Path(home_dir)
        self.weights = home.weights_dir() if home_dir is None else self.home / "nnunet" / "results"
        self._models: OrderedDict[tuple, _Entry] = OrderedDict()
        self.loads: list[int] = []  # dataset ids in the order they were loaded (for reports and tests)

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Drop every loaded model (and the device memory it held)."""
        self._models.clear()
        if device_kind(self.device) == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _entry(self, model: Model, folds: tuple[int, ...] | None) -> _Entry:
        from totalseg.weights import model_folder

        folder = model_folder(model, self.weights)
        key = (folder, model.configuration, folds)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        while len(self._models) >= self.keep_models:
            self._models.popitem(last=False)  # freed before the next one loads
        entry = self._load(folder, model, folds)
        self._models[key] = entry
        self.loads.append(model.id)
        return entry

    def _load(self, folder: Path, model: Model, folds: tuple[int, ...] | None) -> _Entry:
        from totalseg.predict.kernel_checks import KernelChecks
        from totalseg.predict.model import load_model
        from totalseg.predict.sliding_window import Runner

        loaded = load_model(folder, model.configuration, folds)
        networks = loaded.networks
        if device_kind(self.device) != "cpu":
            networks = [net.to(self.device) for net in networks]
        elif self.engine in ("fast", "int8"):
            networks = self._fast_networks(loaded, model)
            del loaded.networks[:]
            gc.collect()  # torch networks sit in reference cycles: freed now, not at some later collection
        checks = KernelChecks(self.home / "kernel_checks" / f"{model.folder}.json")
        return _Entry(loaded, Runner(networks, self.device, checks, self.notice, partial(self._tiles, model.folder)))

    def _tiles(self, name: str, total: int):
        """The per-tile counter of one model run, read when the run starts (bars and ``progress`` as now set)."""
        return _tiles_counted(name, total, self.progress_bars, self.progress)

    def _fast_networks(self, loaded, model: Model) -> list:
        from totalseg.predict.fast_engine import FastNetwork

        cache = self.home / "engine_cache" / model.folder / model.subfolder
        plans = loaded.plans
        if self.engine == "int8":
            from totalseg.predict.int8_engine import Int8Network, Quantization

            quantization = self.quantization or Quantization()
            return [Int8Network(net, plans, cache, self.threads, self.notice, quantization)
                    for net in loaded.networks]
        return [FastNetwork(net, plans.patch_size, plans.num_input_channels, cache, threads=self.threads)
                for net in loaded.networks]

    def model_labels(self, model: Model, folds: tuple[int, ...] | None, data: np.ndarray, spacing,
                     step: float, progress: Callable[[str], None] = lambda _: None) -> np.ndarray:
        """Labels of ``model`` (its own label ids) on the canonical image ``data`` with voxel size ``spacing``."""
        from totalseg.predict import nnunet

        progress(f"  running {model.folder}")
        with timed(progress, "loaded"):
            entry = self._entry(model, folds)
        with timed(progress, "predicted"), self.settings():
            try:
                return nnunet.segment(data, spacing, entry.plans, entry.runner, step)
            finally:
                entry.release_memory()
                return_freed_memory()

    @contextmanager
    def model_run(self, model: Model, folds: tuple[int, ...] | None) -> Iterator[tuple]:
        """``(plans, runner)`` of ``model``, loaded once like ``model_labels``'s, under this predictor's torch
        settings: for the steps that need the logits themselves (``-sp``'s probabilities, ``-ho``'s export)."""
        entry = self._entry(model, folds)
        with self.settings():
            try:
                yield entry.plans, entry.runner
            finally:
                entry.release_memory()

    @contextmanager
    def settings(self) -> Iterator[None]:
        """Torch configured for this predictor's runs, all restored afterwards: threads (CPU), denormals
        flushed (subnormal floats slow the CPU many times over and cannot move an fp16 logit), and on
        CUDA cuDNN's algorithm choice pinned. nnU-Net lets cuDNN time its algorithms on every run
        (benchmark mode), so the official GPU masks differ between two runs at near-tie voxels; pinned,
        the same input gives the same masks every time, equal to the official tool's with the same pin,
        and no run pays for the timing."""
        cuda = device_kind(self.device) == "cuda"
        with torch_settings(None if cuda else self.threads, True, pin_cudnn=cuda):
            yield

    def segment(self, input, output=None, **options):
        """Segment ``input`` as :func:`totalseg.totalsegmentator` does, with this predictor's
        device, engine and loaded models; returns what that function returns."""
        from totalseg.run.options import collect
        from totalseg.run.steps import run

        for key in ("device", "engine"):
            if key in options:
                raise UserError(f"{key} is the predictor's: Predictor({key}=...), not segment({key}=...)")
        return run(input, output, collect(options), predictor=self)
