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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from totalseg.errors import UserError
from totalseg.predict import fast_engine

INSTALL_HINT = 'the int8 engine needs OpenVINO and NNCF: pip install "totalseg[fast]"'


@dataclass(frozen=True)
class Quantization:
    """How NNCF quantizes a trunk; every field goes into the cached model's name (``text``).

    The defaults were chosen by measurement on a trained 6 mm testbed (bench/README.md, "Session 13"):
    - ignored_patterns: OpenVINO node names kept in f32: the first convolution, whose input is the CT itself (one
      channel), and the two decoder stages of lowest resolution (a small share of the work; each of the other
      stages alone mattered less);
    - ignored_types: operation types left unquantized. MVN (instance normalisation): NNCF would otherwise
      quantize each convolution's raw output per tensor before it is normalised per channel, scaling a quiet
      channel's rounding error up with it; ConvolutionBackpropData (the decoder's transposed convolutions,
      kernel 2 stride 2, a small share of the work);
    - preset ``mixed``: asymmetric activations (LeakyReLU outputs are far from symmetric around zero);
    - ranges ``minmax``: with the two types above left unquantized, the activations' whole range beat quantiles
      (which had been better while the raw convolution outputs were quantized);
    - max_drop: NNCF's accuracy-aware mode when set: quantized layers go back to f32, the most harmful first,
      until the argmax agreement with the float model on the calibration tiles has dropped by at most this
      fraction; None: plain post-training quantization;
    - fast_bias_correction: NNCF's fast bias correction (False: its slower full one)."""

    ignored_patterns: tuple[str, ...] = (r".*encoder\.stages\.0\.0\.convs\.0\..*",
                                         r".*decoder\.stages\.[01]\.convs\..*")
    ignored_types: tuple[str, ...] = ("MVN", "ConvolutionBackpropData")
    preset: str = "mixed"
    ranges: str = "minmax"
    max_drop: float | None = None
    fast_bias_correction: bool = True

    def text(self, shape) -> str:
        """The options and the calibration tiles' shape as text, hashed into the cached model's name."""
        parts = [f"preset={self.preset}", f"ranges={self.ranges}", f"ignored={'|'.join(self.ignored_patterns)}"]
        if self.ignored_types:
            parts.append(f"ignored_types={'|'.join(self.ignored_types)}")
        parts.append(f"tile={shape}")
        if self.max_drop is not None:
            parts.append(f"max_drop={self.max_drop}")
        if not self.fast_bias_correction:
            parts.append("bias_correction=full")
        return ";".join(parts)


def missing() -> str | None:
    """The install hint if OpenVINO or NNCF cannot be found (without importing either); else None."""
    for name in ("openvino", "nncf"):
        try:
            if importlib.util.find_spec(name) is None:
                return INSTALL_HINT
        except (ImportError, ValueError):
            return INSTALL_HINT
    return None


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


def _settings(quantization: Quantization, tiles) -> tuple[dict, object]:
    """The quantizer's options shared by both modes (preset, layers kept in f32, ...) and its advanced parameters
    (the activation ranges), which the two NNCF functions take under different names."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    q = quantization
    ranges = getattr(RangeEstimatorParametersSet, q.ranges.upper())
    ignored = nncf.IgnoredScope(patterns=list(q.ignored_patterns), types=list(q.ignored_types), validate=False)
    return (dict(preset=nncf.QuantizationPreset(q.preset), subset_size=len(tiles),
                 fast_bias_correction=q.fast_bias_correction, ignored_scope=ignored),
            AdvancedQuantizationParameters(activations_range_estimator_params=ranges))


def quantize(model, tiles, quantization: Quantization):
    """``model`` (OpenVINO, f32) with int8 convolutions, calibrated on ``tiles``."""
    with _quiet_nncf():
        import nncf

        settings, advanced = _settings(quantization, tiles)
        return nncf.quantize(model, nncf.Dataset(tiles), advanced_parameters=advanced, **settings)


def quantize_with_control(model, tiles, quantization: Quantization, head):
    """``quantize`` with NNCF's accuracy control (``quantization.max_drop``): the metric is the share of voxels
    whose argmax over classes (``head`` on the trunk's features) equals the float model's, on ``tiles``."""
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

        settings, advanced = _settings(quantization, tiles)
        data = nncf.Dataset(pairs, lambda pair: pair[0])
        return nncf.quantize_with_accuracy_control(model, data, data, agreement, max_drop=quantization.max_drop,
                                                   advanced_quantization_parameters=advanced, **settings)


class Int8Network(fast_engine.FastNetwork):
    """``net``'s trunk quantized to int8 for tiles of shape (1, in_channels, *plans.patch_size); used like a
    FastNetwork (the sliding window runs it as one).

    plans: the model's plans (the calibration tiles are made with them); notice: told when a model is
    calibrated (once per machine: 1-2 minutes for an official network on 2 cores); quantization: NNCF's
    options (other than the default for measurements)."""

    def __init__(self, net, plans, cache_dir: Path | None, threads: int | None = None,
                 notice: Callable[[str], None] = lambda _: None,
                 quantization: Quantization = Quantization()) -> None:
        hint = missing()
        if hint:
            raise UserError(hint)
        self._plans, self._notice = plans, notice
        self.quantization = quantization
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

        in_channels, shape = self._in_shape[1], calibration_shape(trunk, self._patch)
        if self.ir_path is not None:
            digest = calibration_digest(self._plans, self.quantization.text(shape))
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
        if self.quantization.max_drop is not None and self.head is not None:
            model = quantize_with_control(small, tiles, self.quantization, self.head)
        else:
            model = quantize(small, tiles, self.quantization)
        model.reshape([1, in_channels, *self._patch])  # the quantization parameters do not depend on the shape
        self.calibrated = True
        if self.int8_path is not None:
            fast_engine.save_ir(self._ov, model, self.int8_path)
        return self._compile(model, precision, compiled_dir)
