"""Opt-in int8 CPU engine: the fast engine's OpenVINO trunk quantized to 8-bit integers by NNCF.

On CPUs with AVX-512 VNNI or AVX-VNNI, OpenVINO runs int8 convolutions with about four times the
multiply-adds per cycle of f32. NNCF's post-training quantization needs activation ranges, measured once
per model on tiles of a real CT shipped with the package (``totalseg.predict.calibration``). The quantized
IR is cached beside the fast engine's, named by OpenVINO and NNCF versions, network hash and calibration
digest; the segmentation layer stays a float32 matrix product in torch, as in the fast engine.

Never bitwise and never called identical: its agreement with the exact engine is measured
(tests/test_int8_engine.py, bench/engines.py, bench/README.md).
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
from pathlib import Path
from typing import Callable

from totalseg.errors import UserError
from totalseg.predict import fast_engine

INSTALL_HINT = 'the int8 engine needs OpenVINO and NNCF: pip install "totalseg[fast]"'
# Kept in f32 (a pattern on OpenVINO node names of the traced trunk), chosen by measurement (bench/README.md,
# "int8 engine"): the first convolution, whose input is the CT itself (one channel: a negligible share of the
# work). Keeping the full-resolution decoder stage too gained 0.17 % of voxels for 20-45 % more time a tile.
IGNORED_PATTERNS = (r".*encoder\.stages\.0\.0\.convs\.0\..*",)
PRESET = "mixed"  # asymmetric activations: LeakyReLU outputs are far from symmetric around zero
# Activation ranges from quantiles rather than min/max: a few extreme activations otherwise widen the int8 step
# for all the others (measured: more voxels agree with f32, bench/README.md "int8 engine").
RANGES = "mean_quantile"
# NNCF's accuracy-aware mode when set: quantized layers go back to f32, the most harmful first, until the argmax
# agreement with the float model on the calibration tiles has dropped by at most this fraction; None: plain PTQ.
MAX_DROP: float | None = None


def missing() -> str | None:
    """The install hint if OpenVINO or NNCF cannot be found (without importing either); else None."""
    for name in ("openvino", "nncf"):
        try:
            if importlib.util.find_spec(name) is None:
                return INSTALL_HINT
        except (ImportError, ValueError):
            return INSTALL_HINT
    return None


def settings_text(patterns, shape) -> str:
    """The quantizer's options and the calibration tiles' shape as text, hashed into the cached model's name."""
    control = "" if MAX_DROP is None else f";max_drop={MAX_DROP}"
    return f"preset={PRESET};ranges={RANGES};ignored={'|'.join(patterns)};tile={shape}{control}"


def calibration_shape(trunk, patch) -> tuple[int, ...]:
    """Half the patch per axis, down to a multiple of the network's total stride (at least one stride).

    NNCF keeps every quantized layer's input of a tile at once and sorts them for the quantiles: for a
    whole 3 mm patch that peaked at 11 GB; an eighth of the voxels gives nearly the same activation ranges."""
    from totalseg.predict.model import total_stride

    strides = getattr(getattr(trunk, "encoder", None), "strides", None)
    steps = total_stride(strides, len(patch)) if strides else [1] * len(patch)
    return tuple(max(t, p // 2 // t * t) for p, t in zip(patch, steps))


def int8_name(float_xml: Path, nncf_version: str, calibration: str) -> str:
    """File name (.xml) of the quantized IR: the float IR's name (OpenVINO release, patch, channels, network
    hash) with the NNCF release and the calibration digest."""
    release = re.sub(r"[^0-9A-Za-z.]", "_", nncf_version)
    return f"{float_xml.stem}_nncf-{release}_int8-{calibration}.xml"


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF's INFO lines and progress bars off while it runs (the run's own notices say what happens)."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        try:
            yield
        finally:
            logger.setLevel(level)


def _settings(patterns, tiles) -> tuple[dict, object]:
    """The quantizer's options shared by both modes (preset, layers kept in f32, ...) and its advanced parameters
    (the activation ranges), which the two NNCF functions take under different names."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    ranges = getattr(RangeEstimatorParametersSet, RANGES.upper())
    return (dict(preset=nncf.QuantizationPreset(PRESET), subset_size=len(tiles), fast_bias_correction=True,
                 ignored_scope=nncf.IgnoredScope(patterns=list(patterns), validate=False)),
            AdvancedQuantizationParameters(activations_range_estimator_params=ranges))


def quantize(model, tiles, patterns):
    """``model`` (OpenVINO, f32) with int8 convolutions, calibrated on ``tiles``; ``patterns`` stay f32."""
    with _quiet_nncf():
        import nncf

        settings, advanced = _settings(patterns, tiles)
        return nncf.quantize(model, nncf.Dataset(tiles), advanced_parameters=advanced, **settings)


def quantize_with_control(model, tiles, patterns, head, max_drop: float):
    """``quantize`` with NNCF's accuracy control: the metric is the share of voxels whose argmax over classes
    (``head`` on the trunk's features) equals the float model's, on ``tiles``."""
    import torch

    core = fast_engine._openvino().Core()
    reference = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def labels(compiled, tile):
        return head.labels(torch.from_numpy(compiled(tile)[0])[0])

    pairs = [(tile, labels(reference, tile)) for tile in tiles]

    def agreement(compiled, data):
        scores = [float((labels(compiled, tile) == want).double().mean()) for tile, want in data]
        return sum(scores) / len(scores), scores

    with _quiet_nncf():
        import nncf

        settings, advanced = _settings(patterns, tiles)
        data = nncf.Dataset(pairs, lambda pair: pair[0])
        return nncf.quantize_with_accuracy_control(model, data, data, agreement, max_drop=max_drop,
                                                   advanced_quantization_parameters=advanced, **settings)


class Int8Network(fast_engine.FastNetwork):
    """``net``'s trunk quantized to int8 for tiles of shape (1, in_channels, *plans.patch_size); used like a
    FastNetwork (the sliding window runs it as one).

    plans: the model's plans (the calibration tiles are made with them); notice: told when a model is
    calibrated (once per machine: 1-2 minutes for an official network on 2 cores); patterns: node-name
    patterns kept in f32 instead of IGNORED_PATTERNS (for measurements)."""

    def __init__(self, net, plans, cache_dir: Path | None, threads: int | None = None,
                 notice: Callable[[str], None] = lambda _: None, patterns: list[str] | None = None) -> None:
        hint = missing()
        if hint:
            raise UserError(hint)
        self._plans, self._notice = plans, notice
        self._patterns = patterns
        self.int8_path = None
        self.calibrated = False  # whether this construction calibrated (False: read from the cache)
        super().__init__(net, plans.patch_size, plans.num_input_channels, cache_dir, "f32", threads,
                         half_features=True)
        self.precision = "int8"

    def _load(self, trunk, precision: str, compiled_dir: Path | None):
        """Compile the cached int8 IR if there is a usable one, else quantize the float IR (cached or
        converted now) on the calibration tiles and cache the result."""
        from importlib.metadata import version

        from totalseg.predict.calibration import calibration_digest, calibration_tiles

        patterns = list(IGNORED_PATTERNS if self._patterns is None else self._patterns)
        in_channels, shape = self._in_shape[1], calibration_shape(trunk, self._patch)
        if self.ir_path is not None:
            digest = calibration_digest(self._plans, settings_text(patterns, shape))
            # NNCF's release from its metadata: importing NNCF costs 0.5 s, and a cached model does not need it
            self.int8_path = self.ir_path.with_name(int8_name(self.ir_path, version("nncf"), digest))
            model = fast_engine.read_ir(self.int8_path, in_channels, self._patch)
            if model is not None:
                try:
                    return self._compile(model, precision, compiled_dir)
                except RuntimeError:  # readable but not compilable: made again like a corrupt file
                    fast_engine.remove_ir(self.int8_path)
        float_model = None if self.ir_path is None else fast_engine.read_ir(self.ir_path, in_channels, self._patch)
        if float_model is None:
            float_model = self._converted(trunk)
        self._notice("int8 engine: calibrating this model once on this machine (cached afterwards)")
        small = float_model.clone()
        small.reshape([1, in_channels, *shape])
        tiles = calibration_tiles(self._plans, in_channels, shape)
        if MAX_DROP is not None and self.head is not None:
            model = quantize_with_control(small, tiles, patterns, self.head, MAX_DROP)
        else:
            model = quantize(small, tiles, patterns)
        model.reshape([1, in_channels, *self._patch])  # the quantization parameters do not depend on the shape
        self.calibrated = True
        if self.int8_path is not None:
            fast_engine.save_ir(self._ov, model, self.int8_path)
        return self._compile(model, precision, compiled_dir)
