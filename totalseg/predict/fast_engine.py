"""Opt-in fast CPU engine: the same nnU-Net network, run by OpenVINO instead of torch's CPU kernels.

The default engine keeps torch's kernels because only they reproduce the official masks bit for bit.
OpenVINO runs the same network faster (bench/README.md), in f32, or in bf16 where the CPU has AMX
(default_precision says why only there). Never bitwise: its agreement with torch is measured
(tests/test_fast_engine.py, bench/engine.py).

Converting a network costs seconds, so the converted model (OpenVINO IR, .xml + .bin) is cached under
the caller's cache folder, named by OpenVINO version, patch, input channels and a hash of the network,
and OpenVINO's own CACHE_DIR keeps the compiled blobs. OpenVINO's usage telemetry, which a plain
``import openvino`` starts, is kept off: totalseg sends nothing anywhere.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from totalseg.errors import UserError

PRECISIONS = ("bf16", "f32")
INSTALL_HINT = 'the fast engine needs OpenVINO: pip install "totalseg[fast]"'
STALE_TMP_SECONDS = 3600  # temporary folders of saves that died midway are removed after this


def _silence_telemetry() -> None:
    """Point OpenVINO's converter at its own no-op telemetry stub (also when openvino was imported
    before us with telemetry on): conversions then send no events."""
    try:
        from openvino.tools.ovc import convert_impl, telemetry_stub, telemetry_utils, utils
    except ImportError:
        return
    for module in (convert_impl, telemetry_utils, utils):
        if hasattr(module, "tm"):
            module.tm = telemetry_stub


def _openvino():
    """``openvino``, imported without its telemetry: while the import runs, a None entry makes
    ``import openvino_telemetry`` fail, so OpenVINO falls back to its stub (no client-id file in the
    home folder, no network request). The entry is removed afterwards."""
    if "openvino" not in sys.modules and "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None
        try:
            import openvino
        finally:
            if sys.modules.get("openvino_telemetry", 0) is None:
                del sys.modules["openvino_telemetry"]
    import openvino

    _silence_telemetry()
    return openvino


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether OpenVINO can be imported."""
    try:
        _openvino()
    except (ImportError, OSError, RuntimeError):
        return False
    return True


@functools.lru_cache(maxsize=1)
def _core():
    return _openvino().Core()


def _cpu_flags() -> set[str] | None:
    """The x86 feature flags of /proc/cpuinfo; None where there are none (macOS, Windows, ARM)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


def native_bf16() -> bool:
    """Whether the CPU computes bf16 in hardware: the cpuinfo flags avx512_bf16 or amx_bf16, or
    where there are no flags to read (macOS, Windows), OpenVINO's BF16 capability."""
    flags = _cpu_flags()
    if flags is not None:
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    if not available():
        return False
    try:
        return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except RuntimeError:
        return False


def default_precision() -> str:
    """"bf16" where bf16 is faster than f32, i.e. with AMX tiles (amx_bf16); else "f32".

    avx512_bf16 alone does not pay: its bf16 dot product does as many multiply-adds per cycle as
    f32 FMAs, and OpenVINO's bf16 convolutions ran 1.7x slower than its f32 ones on such a Xeon
    (bench/README.md). Without cpuinfo flags the CPU's kind of bf16 is unknown: f32.
    """
    flags = _cpu_flags()
    return "bf16" if flags is not None and "amx_bf16" in flags else "f32"


def network_hash(net) -> str:
    """A short hash of the architecture (its repr: strides, kernels, norm settings) and the weights,
    so a converted model is never reused for other weights."""
    import torch

    h = hashlib.blake2b(repr(net).encode(), digest_size=8)
    for name, value in net.state_dict().items():
        h.update(f"{name}|{tuple(value.shape)}|{value.dtype}".encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def ir_name(version: str, patch, in_channels: int, digest: str, part: str = "net") -> str:
    """File name (.xml) of a cached IR: OpenVINO release, patch, input channels, which part of the network
    ("net": all of it; "trunk": all but the segmentation layer), network hash."""
    release = re.sub(r"[^0-9A-Za-z.]", "_", version.split("-")[0])
    return f"openvino-{release}_patch-{'x'.join(str(p) for p in patch)}_in-{in_channels}_{part}-{digest}.xml"


def split_head(net):
    """``(trunk, head)``: a module computing ``net``'s last decoder feature map, and its 1x1x1
    segmentation layer as a PointwiseHead; ``(net, None)`` for networks the memory-lean forward does
    not handle.

    Left in OpenVINO, the segmentation layer's output (classes x patch: 760 MB in float32 for a 3 mm tile
    of 118 classes, plus OpenVINO's own buffer of it) dominates the engine's memory; run by torch slab by
    slab on the trunk's output, like the exact engine's last layer, it never exists whole."""
    import torch

    from totalseg.predict.lean_unet import LeanUNet

    if not LeanUNet.supports(net):
        return net, None

    class Trunk(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder = net.encoder, net.decoder

        def forward(self, x):
            skips = self.encoder(x)
            x = skips[-1]
            for s, (up, stage) in enumerate(zip(self.decoder.transpconvs, self.decoder.stages)):
                x = stage(torch.cat((up(x), skips[-2 - s]), 1))
            return x

    return Trunk().eval(), PointwiseHead(net.decoder.seg_layers[-1])


LABEL_BLOCK = 1 << 17  # voxels a label product covers: 62 MB of float32 scores for 118 classes


class PointwiseHead:
    """A 1x1x1 segmentation layer computed as one matrix product (weights x voxels) per call.

    The same values as the convolution up to float rounding, and several times faster than torch's
    CPU convolution for this shape (32 -> 26 channels on 16 x 128 x 128 voxels: 0.07-0.10 s against
    0.36-0.41 s on 2 cores), which the fast engine runs on every slab of every tile."""

    def __init__(self, conv) -> None:
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.weight = conv.weight.detach().reshape(self.out_channels, self.in_channels).clone()
        self.bias = None if conv.bias is None else conv.bias.detach().clone()[:, None]

    def __call__(self, x):
        """The layer's output (1, out_channels, *spatial) for features (1, in_channels, *spatial)."""
        import torch

        if x.shape[0] != 1:
            raise ValueError(f"one tile at a time (got a batch of {x.shape[0]})")
        voxels = x[0].reshape(self.in_channels, -1)  # a view for slabs of a contiguous feature map
        voxels = voxels.to(self.weight.dtype)  # fp16 features (half_features): a float32 copy of the slab
        out = self.weight @ voxels if self.bias is None else torch.addmm(self.bias, self.weight, voxels)
        return out.reshape(1, self.out_channels, *x.shape[2:])

    def labels(self, features):
        """The argmax over classes (int64, *spatial) of the layer's output for features (in_channels, *spatial),
        voxels first: the classes of a voxel are adjacent in memory, so argmax reads them in one run. Blocks of
        LABEL_BLOCK voxels, in float32 (features may be fp16 sums): the class scores never exist whole."""
        import torch

        voxels = features.reshape(self.in_channels, -1).T  # a transposed view; the product reads it as such
        weight = self.weight.T
        labels = torch.empty(voxels.shape[0], dtype=torch.int64)
        for start in range(0, voxels.shape[0], LABEL_BLOCK):
            block = voxels[start:start + LABEL_BLOCK].float()
            out = block @ weight if self.bias is None else torch.addmm(self.bias.T, block, weight)
            labels[start:start + LABEL_BLOCK] = out.argmax(1)
        return labels.reshape(features.shape[1:])


def _trace_shape(net, patch) -> tuple[int, ...]:
    """A small input to trace with: twice the network's total stride per axis, at most the patch.
    The traced graph does not depend on it (the model is reshaped to the patch afterwards); tracing
    at full patch size would run the official networks at full size, tens of seconds each time."""
    strides = getattr(getattr(net, "encoder", None), "strides", None)
    if not strides:
        return tuple(patch)
    from totalseg.predict.model import total_stride

    return tuple(min(p, 2 * t) for p, t in zip(patch, total_stride(strides, len(patch))))


def _convert(ov, net, patch, in_channels: int):
    """The network as an OpenVINO model with the static input shape (1, in_channels, *patch)."""
    import torch

    example = torch.zeros(1, in_channels, *_trace_shape(net, patch))
    with torch.no_grad(), warnings.catch_warnings():
        # torch.jit.trace's deprecation notices (OpenVINO's own torch front end traces the same way) and
        # its notes on Python branches: in these networks only input checks, not the computation.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13+: "torch.jit.trace is deprecated"
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # check_trace=False: the check reruns the network twice and compares, for nothing here.
        traced = torch.jit.trace(net, example, check_trace=False, strict=False)
        # share_weights=False: the compiled network must not read the torch tensors, which the caller
        # may free (the pipeline drops each model after use) or change.
        model = ov.convert_model(traced, example_input=example, share_weights=False)
    model.reshape([1, in_channels, *patch])
    return model


def _fits(model, in_channels: int, patch) -> bool:
    """Whether a model read from the cache has the one input and output a tile needs."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return False
    shape, out = model.input(0).get_partial_shape(), model.output(0).get_partial_shape()
    return (shape.is_static and out.is_static and list(shape.to_shape()) == [1, in_channels, *patch]
            and list(out.to_shape())[2:] == list(patch))


def _writable_folder(folder: Path) -> Path | None:
    """``folder``, created if needed, if a file can be written in it; else None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        return None
    return folder


def remove_ir(xml: Path) -> None:
    for path in (xml, xml.with_suffix(".bin")):
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


def _remove_stale_temporaries(folder: Path) -> None:
    """Temporary folders of saves that died midway (a killed process): each may hold a whole IR."""
    for tmp in folder.glob(".tmp-*"):
        try:
            if time.time() - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def save_ir(ov, model, xml: Path) -> None:
    """Save the IR in a temporary folder beside ``xml`` and move it into place, .bin first: an .xml
    is only ever present with its complete .bin. (write_atomic moves one file and turns failures into
    errors; here a failed save only means converting again next time.)"""
    _remove_stale_temporaries(xml.parent)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=xml.parent))
        # compress_to_fp16=False: the default would round the weights to fp16 on disk.
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        os.replace(tmp / "model.bin", xml.with_suffix(".bin"))
        os.replace(tmp / "model.xml", xml)
    except (OSError, RuntimeError):
        pass
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def read_ir(xml: Path, in_channels: int, patch):
    """The cached model, or None if absent; a corrupt or unfitting one is deleted."""
    if not xml.is_file():
        return None
    try:
        # The IR front end alone: Core.read_model would also try the other formats' parsers on a
        # damaged file, and their C++ logging prints to stderr.
        front_end = _openvino().frontend.FrontEndManager().load_by_framework("ir")
        model = front_end.convert(front_end.load(str(xml)))
    except Exception:  # noqa: BLE001 - whatever is wrong with the file, it is rebuilt
        model = None
    if model is not None and _fits(model, in_channels, patch):
        return model
    remove_ir(xml)
    return None


class FastNetwork:
    """``net`` compiled by OpenVINO for tiles of shape (1, in_channels, *patch); called like ``net``.

    ``head``: the segmentation layer, run by torch on ``features`` (see split_head), or None. ``half_features``:
    whether ``features`` come as float16 (default: for a bf16 trunk with a head, whose features the sliding
    window sums in fp16 anyway; half the memory of a float32 tile and no conversion)."""

    def __init__(self, net, patch: tuple[int, ...], in_channels: int, cache_dir: Path | None,
                 precision: str | None = None, threads: int | None = None,
                 half_features: bool | None = None) -> None:
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r} (one of {', '.join(PRECISIONS)})")
        if not available():
            raise UserError(INSTALL_HINT)
        import torch

        self._ov = _openvino()
        self._patch = tuple(int(p) for p in patch)
        self._in_shape = (1, int(in_channels), *self._patch)
        requested = precision or default_precision()
        self._threads = int(threads or torch.get_num_threads())
        trunk, self.head = split_head(net)
        half = requested != "f32" if half_features is None else half_features
        self._half_features = half and self.head is not None
        cache = _writable_folder(Path(cache_dir)) if cache_dir is not None else None
        self.ir_path = self._whole_ir = None  # _whole_ir: what earlier releases cached for this network
        if cache is not None:
            digest = network_hash(net)  # hashes every weight: once
            names = {part: ir_name(self._ov.__version__, self._patch, in_channels, digest, part)
                     for part in ("net", "trunk")}
            self.ir_path = cache / names["net" if self.head is None else "trunk"]
            self._whole_ir = None if self.head is None else cache / names["net"]
        compiled_dir = None if cache is None else _writable_folder(cache / "compiled")
        self._compiled = self._load(trunk, requested, compiled_dir)
        hint = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = "bf16" if hint.get_type_name() == "bf16" else "f32"
        self._out_shape = tuple(self._compiled.output(0).get_shape())
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: callers from several threads take turns

    def _compile(self, model, precision: str, compiled_dir: Path | None):
        config = {
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": self._threads,
            "PERFORMANCE_HINT": "LATENCY",
            # Pinned threads cannot move off a core that another process (or torch's own pool, which
            # spins a while after its work) keeps busy; unpinned ran faster on the shared 2-core machine.
            "ENABLE_CPU_PINNING": False,
        }
        if compiled_dir is not None:
            config["CACHE_DIR"] = str(compiled_dir)
        if self._half_features:
            from openvino.preprocess import PrePostProcessor

            steps = PrePostProcessor(model)
            steps.output(0).tensor().set_element_type(self._ov.Type.f16)
            model = steps.build()
        return _core().compile_model(model, "CPU", config)

    def _load(self, net, precision: str, compiled_dir: Path | None):
        """Compile the cached IR if there is a usable one, else convert (and cache) ``net``."""
        in_channels = self._in_shape[1]
        if self.ir_path is not None:
            model = read_ir(self.ir_path, in_channels, self._patch)
            if model is not None:
                try:
                    return self._compile(model, precision, compiled_dir)
                except RuntimeError:  # readable but not compilable: rebuilt like a corrupt file
                    remove_ir(self.ir_path)
        return self._compile(self._converted(net), precision, compiled_dir)

    def _converted(self, net):
        """``net`` converted to an OpenVINO model, and cached (the engines built on this one start from it)."""
        model = _convert(self._ov, net, self._patch, self._in_shape[1])
        if self.ir_path is not None:
            save_ir(self._ov, model, self.ir_path)
            if self._whole_ir is not None and self.ir_path.is_file():  # superseded by the trunk: ~weights' size
                remove_ir(self._whole_ir)
        return model

    def __call__(self, tile):
        """The network's float32 output (1, classes, *patch) for a float32 tile (1, in_channels, *patch)."""
        import torch

        out = self.features(tile)
        if self.head is None:
            return out
        with torch.inference_mode():
            return self.head(out)

    def release_memory(self) -> None:
        """Free OpenVINO's buffers for intermediate results (about 0.5 GB for a 1.5 mm network) until the
        next call, which allocates them again (same results): an idle model kept loaded then holds little
        more than its weights."""
        with self._lock:
            self._compiled.release_memory()

    def features(self, tile):
        """What OpenVINO computes for a float32 tile (1, in_channels, *patch): the last decoder feature map
        (1, channels, *patch; float16 with ``half_features``) when ``head`` is the segmentation layer, else the
        network's output (float32)."""
        import torch

        x = tile.detach().to(device="cpu", dtype=torch.float32).contiguous()
        if tuple(x.shape) != self._in_shape:
            raise ValueError(f"tile shape {tuple(x.shape)} is not the compiled {self._in_shape}")
        # A new output tensor per call, written by OpenVINO in place: the caller may keep or modify it.
        out = torch.empty(self._out_shape, dtype=torch.float16 if self._half_features else torch.float32)
        with self._lock:
            self._request.set_output_tensor(0, self._ov.Tensor(out.numpy(), shared_memory=True))
            self._request.infer({0: x.numpy()}, share_inputs=True)
        return out
