"""The opt-in OpenVINO engine: agreement with torch (f32 close, bf16 looser), and its IR cache."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import DATA, REF
from totalseg.errors import UserError
from totalseg.predict import fast_engine
from totalseg.predict.model import load_model
from totalseg.prepare.normalise import normalise_channel

if not fast_engine.available():  # imports openvino with its telemetry off, unlike importorskip
    pytest.skip("openvino is not installed", allow_module_level=True)

FOLDER = "Dataset297_TotalSegmentator_total_3mm_1559subj/nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres"
# f32: OpenVINO sums the same products in another order (and may use Winograd convolutions). Measured
# max |diff| is ~1e-5 at logits of magnitude ~5; 1e-3 leaves two orders of margin yet fails on any
# real error (wrong weights, a bf16 slip: >= 1e-2).
F32_TOL = 1e-3
F32_AGREEMENT = 0.999
# bf16 keeps 8 mantissa bits (0.4 % per rounding); on these random 118-class networks, whose top two
# logits are often close, about 0.3 % of voxels change label.
BF16_AGREEMENT = 0.98


@pytest.fixture(scope="module")
def model():
    folder = DATA / "fake_weights_tiny" / "nnunet" / "results" / FOLDER
    if not folder.is_dir():
        pytest.skip("fake weights not available")
    return load_model(folder, "3d_fullres", (0,))


@pytest.fixture(scope="module")
def ct_tiles(model) -> torch.Tensor:
    """Four patch-sized crops of a real 3 mm CT, normalised as the plans say, as a (4, 1, *patch) batch."""
    patch = model.plans.patch_size
    image = np.asarray(nib.load(REF / "example_ct_sm.nii.gz").dataobj, dtype=np.float32).transpose(2, 1, 0)
    need = [max(p - s, 0) for p, s in zip(patch, image.shape)]
    image = np.pad(image, [(n // 2, n - n // 2) for n in need], constant_values=-1024)
    normalise_channel(image, model.plans.normalization[0], model.plans.intensity_properties["0"])
    z, y, x = (s - p for s, p in zip(image.shape, patch))
    origins = [(0, y // 2, x // 2), (z, y // 3, x // 4), (0, y, 0), (z // 2, 0, x)]
    tiles = [image[a:a + patch[0], b:b + patch[1], c:c + patch[2]] for a, b, c in origins]
    return torch.from_numpy(np.stack(tiles)[:, None].copy())


def _run(net, tiles) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([net(t[None]) for t in tiles])


def _compare(model, tiles, precision: str, tmp_path) -> tuple[float, float]:
    fast = fast_engine.FastNetwork(model.networks[0], model.plans.patch_size, 1, tmp_path, precision=precision)
    assert fast.precision == precision
    reference, out = _run(model.networks[0], tiles), _run(fast, tiles)
    assert out.dtype == torch.float32 and out.shape == reference.shape
    diff = (out - reference).abs().max().item()
    agreement = (out.argmax(1) == reference.argmax(1)).double().mean().item()
    print(f"\n{precision}: max |diff| {diff:.3g} (logits up to {reference.abs().max():.2f}), "
          f"argmax agreement {agreement:.5%} of {reference[:, 0].numel()} voxels")
    return diff, agreement


def test_f32_matches_torch(model, ct_tiles, tmp_path):
    diff, agreement = _compare(model, ct_tiles, "f32", tmp_path)
    assert diff < F32_TOL
    assert agreement >= F32_AGREEMENT


def test_bf16_agrees_with_torch(model, ct_tiles, tmp_path):
    if not fast_engine.native_bf16():
        pytest.skip("this CPU has no native bf16")
    _, agreement = _compare(model, ct_tiles, "bf16", tmp_path)
    assert agreement >= BF16_AGREEMENT


def test_released_memory_gives_the_same_outputs(model, ct_tiles, tmp_path):
    """After release_memory (what the predictor calls when a model's run ends) the next call allocates
    OpenVINO's buffers again and gives the same values."""
    fast = fast_engine.FastNetwork(model.networks[0], model.plans.patch_size, 1, tmp_path, precision="f32")
    before = _run(fast, ct_tiles[:2])
    fast.release_memory()
    assert torch.equal(_run(fast, ct_tiles[:2]), before)


def test_residual_encoder_anisotropic_patch(tmp_path):
    """ResidualEncoderUNet, uneven strides and a patch that is neither cubic nor the traced shape:
    the network is traced small and reshaped to the patch, with the same result as torch."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    torch.manual_seed(1)
    net = ResidualEncoderUNet(
        input_channels=2, n_stages=3, features_per_stage=[8, 16, 24], conv_op=torch.nn.Conv3d,
        kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
        n_blocks_per_stage=[1, 2, 2], num_classes=5, n_conv_per_stage_decoder=[1, 1], conv_bias=True,
        norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False).eval()
    patch = (12, 40, 24)
    tile = torch.nn.functional.avg_pool3d(torch.randn(1, 2, *patch), 3, stride=1, padding=1) * 3
    fast = fast_engine.FastNetwork(net, patch, 2, tmp_path, precision="f32")
    reference, out = _run(net, tile), _run(fast, tile)
    assert out.shape == (1, 5, *patch)
    assert torch.allclose(out, reference, atol=F32_TOL, rtol=F32_TOL)


def _files(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob(pattern))


def test_cache_is_reused_and_keyed_by_weights(model, ct_tiles, tmp_path, monkeypatch):
    import openvino

    net, patch, cache = model.networks[0], model.plans.patch_size, tmp_path / "cache"
    first = fast_engine.FastNetwork(net, patch, 1, cache, precision="f32")
    (xml,) = _files(cache, "*.xml")
    assert first.ir_path == xml and xml.with_suffix(".bin").is_file() and not _files(cache, ".tmp-*")
    assert f"openvino-{openvino.__version__.split('-')[0]}_patch-32x32x32_in-1_" in xml.name
    expected = _run(first, ct_tiles[:1])

    def refuse(*args, **kwargs):
        raise AssertionError("converted again instead of reading the cached IR")

    with monkeypatch.context() as m:
        m.setattr(openvino, "convert_model", refuse)
        again = fast_engine.FastNetwork(net, patch, 1, cache, precision="f32")
        assert torch.equal(_run(again, ct_tiles[:1]), expected)

    other = copy.deepcopy(net)
    with torch.no_grad():
        other.decoder.seg_layers[-1].bias[0] += 0.5
    fast_engine.FastNetwork(other, patch, 1, cache, precision="f32")
    assert len(_files(cache, "*.xml")) == 2 and len(_files(cache, "*.bin")) == 2


def test_caching_the_trunk_removes_the_same_networks_whole_ir(model, tmp_path):
    """An IR of the whole network (what earlier releases cached) goes once its trunk is cached; another
    network's IR stays."""
    import openvino

    net, patch = model.networks[0], model.plans.patch_size
    digest = fast_engine.network_hash(net)
    old = tmp_path / fast_engine.ir_name(openvino.__version__, patch, 1, digest, "net")
    other = tmp_path / fast_engine.ir_name(openvino.__version__, patch, 1, "0123456789abcdef", "net")
    for xml in (old, other):
        xml.write_text("<net/>")
        xml.with_suffix(".bin").write_bytes(b"\0" * 64)
    fast = fast_engine.FastNetwork(net, patch, 1, tmp_path, precision="f32")
    assert fast.head is not None and "_trunk-" in fast.ir_path.name
    assert sorted(p.name for p in tmp_path.glob("*.*")) == sorted(
        [fast.ir_path.name, fast.ir_path.with_suffix(".bin").name, other.name, other.with_suffix(".bin").name])


def test_corrupt_cached_ir_is_rebuilt(model, ct_tiles, tmp_path):
    net, patch = model.networks[0], model.plans.patch_size
    expected = _run(fast_engine.FastNetwork(net, patch, 1, tmp_path, precision="f32"), ct_tiles[:1])
    (xml,) = _files(tmp_path, "*.xml")
    xml.write_text("<net><layers>truncated")
    rebuilt = fast_engine.FastNetwork(net, patch, 1, tmp_path, precision="f32")
    assert "</net>" in xml.read_text()[-50:]
    assert torch.allclose(_run(rebuilt, ct_tiles[:1]), expected, atol=F32_TOL)
    xml.with_suffix(".bin").write_bytes(b"\0" * 10)  # a truncated .bin: also rebuilt
    fast_engine.FastNetwork(net, patch, 1, tmp_path, precision="f32")
    assert xml.with_suffix(".bin").stat().st_size > 1000


@pytest.mark.parametrize("where", ["none", "unwritable"])
def test_without_a_usable_cache_folder(model, ct_tiles, tmp_path, where):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cache = None if where == "none" else blocker / "cache"  # below a file: not creatable, even for root
    fast = fast_engine.FastNetwork(model.networks[0], model.plans.patch_size, 1, cache, precision="f32")
    assert fast.ir_path is None
    assert _run(fast, ct_tiles[:1]).shape == (1, model.plans.num_heads, *model.plans.patch_size)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_independent_of_the_torch_network(model, ct_tiles):
    """The compiled network keeps its own weights: the caller may free or change the torch module."""
    net = copy.deepcopy(model.networks[0])
    fast = fast_engine.FastNetwork(net, model.plans.patch_size, 1, None, precision="f32")
    expected = _run(fast, ct_tiles[:1])
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    del net
    assert torch.equal(_run(fast, ct_tiles[:1]), expected)


def test_bad_precision_and_missing_openvino(model, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="fp16"):
        fast_engine.FastNetwork(model.networks[0], model.plans.patch_size, 1, tmp_path, precision="fp16")
    monkeypatch.setattr(fast_engine, "available", lambda: False)
    with pytest.raises(UserError, match=r'pip install "totalseg\[fast\]"') as err:
        fast_engine.FastNetwork(model.networks[0], model.plans.patch_size, 1, tmp_path)
    assert "\n" not in str(err.value)


def test_light_import_and_no_telemetry(tmp_path):
    """Importing the module loads neither torch nor openvino; converting and running a network
    leaves no OpenVINO telemetry files in the home folder (nothing is sent)."""
    code = ("import sys\nfrom totalseg.predict import fast_engine\n"
            "assert 'torch' not in sys.modules and 'openvino' not in sys.modules, 'heavy import'\n"
            "import torch\nnet = torch.nn.Conv3d(1, 2, 3, padding=1).eval()\n"
            "fast = fast_engine.FastNetwork(net, (8, 8, 8), 1, None, precision='f32')\n"
            "print(fast(torch.zeros(1, 1, 8, 8, 8)).shape)\n")
    env = {**os.environ, "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "torch.Size([1, 2, 8, 8, 8])" in proc.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, native, default", [
    ({"avx512f", "amx_bf16", "avx512_bf16"}, True, "bf16"),
    ({"avx512f", "avx512_bf16"}, True, "f32"),  # bf16 without AMX ran slower than f32
    ({"avx512f", "avx2"}, False, "f32"),
])
def test_precision_choice(monkeypatch, flags, native, default):
    monkeypatch.setattr(fast_engine, "_cpu_flags", lambda: flags)
    assert fast_engine.native_bf16() is native and fast_engine.default_precision() == default


def test_segmentation_layer_runs_in_slabs(model, ct_tiles, tmp_path):
    """OpenVINO computes the feature map; the sliding window applies the 1x1x1 segmentation layer slab by
    slab (as the exact engine does), so a tile's classes x patch output is never held whole, and the
    weighted slabs are the whole output's, weighted."""
    from totalseg.predict.lean_unet import SEG_SLAB
    from totalseg.predict.sliding_window import FastForward, gaussian_weights, tile_forward

    patch = model.plans.patch_size
    fast = fast_engine.FastNetwork(model.networks[0], patch, 1, tmp_path, precision="f32")
    assert fast.head is not None and "_trunk-" in fast.ir_path.name
    assert fast.features(ct_tiles[:1]).shape[1] == fast.head.in_channels
    volume = torch.cat([ct_tiles[0], ct_tiles[1]], dim=1)  # (1, 2 * depth, y, x): two tiles along z
    tiles = [(slice(0, patch[0]), slice(0, patch[1]), slice(0, patch[2])),
             (slice(patch[0], 2 * patch[0]), slice(0, patch[1]), slice(0, patch[2]))]
    weight = torch.from_numpy(gaussian_weights(tuple(patch)).copy())
    forward = tile_forward([fast], "cpu")
    assert isinstance(forward, FastForward) and forward.workers(fast, volume, tiles) == 1
    slabs = list(forward.weighted_outputs(fast, volume, tiles, weight, 1))
    assert [(i, z.start) for i, z, _ in slabs] == [(i, z) for i in (0, 1) for z in range(0, patch[0], SEG_SLAB)]
    for i in (0, 1):
        whole = _run(fast, ct_tiles[i:i + 1])[0] * weight
        got = torch.cat([out for j, _, out in slabs if j == i], dim=1)
        assert torch.allclose(got, whole, atol=1e-5, rtol=1e-5)


def test_pointwise_head_equals_the_segmentation_layer_on_slabs():
    """The fast engine's segmentation layer as a matrix product: the convolution's values (float rounding
    apart) on the slab views the sums read, with and without bias; batches are refused."""
    torch.manual_seed(0)
    features = torch.randn(1, 32, 20, 9, 7)
    for bias in (True, False):
        conv = torch.nn.Conv3d(32, 5, 1, bias=bias)
        head = fast_engine.PointwiseHead(conv)
        with torch.inference_mode():
            for z in (slice(0, 16), slice(16, 20)):
                slab = features[:, :, z]
                assert not slab.is_contiguous()
                got, want = head(slab), conv(slab)
                assert got.shape == want.shape == (1, 5, z.stop - z.start, 9, 7)
                assert torch.allclose(got, want, rtol=0, atol=1e-5)
                assert not torch.equal(got, torch.zeros_like(got))
                assert torch.equal(head(slab.half()), head(slab.half().float()))  # fp16 features, as float32
    with pytest.raises(ValueError, match="one tile"):
        head(torch.randn(2, 32, 4, 4, 4))


def test_pointwise_head_labels_are_the_argmax_of_its_output(monkeypatch):
    """``labels`` (voxels first, for the summed features) is the argmax over classes of the layer's output, in
    blocks of voxels (here 100: ten and a bit) and from fp16 sums as from their float32 values."""
    monkeypatch.setattr(fast_engine, "LABEL_BLOCK", 100)
    torch.manual_seed(1)
    features = torch.randn(32, 24, 9, 7, dtype=torch.float32)
    for bias in (True, False):
        head = fast_engine.PointwiseHead(torch.nn.Conv3d(32, 26, 1, bias=bias))
        slab = features[:, 4:20]  # a view of a window, as the sums hand it over
        want = head(slab[None])[0].argmax(0)
        assert torch.equal(head.labels(slab), want) and len(torch.unique(want)) > 10
        half = slab.half()
        assert torch.equal(head.labels(half), head(half.float()[None])[0].argmax(0))


def test_half_features_feed_the_averaged_logits_too(model, ct_tiles, tmp_path):
    """fp16 features (a bf16 or int8 trunk's) also feed the averaged-logits path (models nnU-Net resamples
    itself, ensembles of folds): the segmentation layer takes them as float32, and the logits stay within fp16
    rounding of those from float32 features."""
    from totalseg.predict.sliding_window import Runner, predict_logits

    patch = model.plans.patch_size
    data = torch.cat([ct_tiles[0], ct_tiles[1][:, : patch[0] // 2]], dim=1).numpy()
    plain = fast_engine.FastNetwork(model.networks[0], patch, 1, tmp_path, precision="f32")
    half = fast_engine.FastNetwork(model.networks[0], patch, 1, tmp_path, precision="f32", half_features=True)
    assert half.features(ct_tiles[:1]).dtype == torch.float16 and half(ct_tiles[:1]).dtype == torch.float32
    heads = model.plans.num_heads
    want = predict_logits(Runner([plain], "cpu"), data, patch, 0.5, heads).float()
    got = predict_logits(Runner([half], "cpu"), data, patch, 0.5, heads).float()
    diff, scale = (got - want).abs(), want.abs().max().item()
    # the 99th percentile: at the volume's edges the fp16 logit sums are coarse either way (see the next test)
    typical = torch.quantile(diff.flatten()[::7], 0.99).item()
    print(f"\ndifference: 99th percentile {typical:.3g}, largest {diff.max():.3g}, of logits up to {scale:.3g}")
    assert 0 < typical < scale * 2 ** -8 and (got.argmax(0) == want.argmax(0)).double().mean() > 0.995


@pytest.mark.parametrize("axis", [0, 1])
def test_fast_labels_are_the_argmax_of_the_averaged_logits(model, ct_tiles, tmp_path, axis):
    """With a bf16 or int8 trunk the fast engines sum weighted feature maps in fp16, not logits, streamed along
    the axis of smallest cross-section (the first one here, or the second), and apply the (linear) segmentation
    layer once to their average: the labels are those of the Gaussian-averaged logits, computed here in float64
    from each tile's whole output, but where fp16's rounding decides a near-tie, or where the weights of the
    tiles covering a voxel are too small for fp16's normal range (a volume's edges and corners, only ever
    covered by tile corners: fp16 logit sums, the exact engine's and nnU-Net's, are as coarse there)."""
    from totalseg.predict.sliding_window import Runner, gaussian_weights, predict_labels, streaming_order, tile_grid

    patch = model.plans.patch_size
    fast = fast_engine.FastNetwork(model.networks[0], patch, 1, tmp_path, precision="f32")
    fast.precision = "bf16"  # the path of the coarser trunks (bf16, int8), computed in f32 on any CPU
    half = ct_tiles[1][(slice(None),) * (1 + axis) + (slice(0, patch[axis] // 2),)]
    data = torch.cat([ct_tiles[0], half], dim=1 + axis).numpy()  # 1.5 patches along ``axis``
    assert streaming_order(data.shape[1:])[0] == axis
    labels = predict_labels(Runner([fast], "cpu"), data, patch, 0.5, 1, np.uint8)
    weight = gaussian_weights(tuple(patch)).astype(np.float64)
    sums = np.zeros((fast.head.out_channels, *data.shape[1:]))
    norm = np.zeros(data.shape[1:])
    tiles = tile_grid(data.shape[1:], patch, 0.5)
    assert len(tiles) > 1
    for tile in tiles:
        out = _run(fast, torch.from_numpy(data[(slice(None), *tile)][None]))[0].double().numpy()
        sums[(slice(None), *tile)] += out * weight
        norm[tile] += weight
    logits = sums / norm
    want = logits.argmax(0)
    assert labels.shape == want.shape and labels.dtype == np.uint8 and len(np.unique(want)) > 10
    gap = logits.max(0) - np.take_along_axis(logits, labels[None].astype(np.int64), 0)[0]
    normal = norm >= 2.0 ** -14  # weight sums in fp16's normal range: all but the volume's edges and corners
    print(f"\nequal {(labels == want).mean():.4%} ({(labels == want)[normal].mean():.4%} where the weights sum to a "
          f"normal fp16), largest gap there {gap[normal].max():.3g} of a range {np.ptp(logits):.3g}")
    assert normal.mean() > 0.8 and gap[normal].max() < np.ptp(logits) * 2 ** -12
    assert (labels == want).mean() > 0.995
