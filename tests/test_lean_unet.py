"""The memory-lean forward pass gives torch's exact numbers and remembers its kernel checks."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from dynamic_network_architectures.architectures.unet import PlainConvUNet  # noqa: E402

from totalseg.predict.kernel_checks import KernelChecks  # noqa: E402
from totalseg.predict.lean_unet import SEG_SLAB, LeanUNet  # noqa: E402
from totalseg.predict.sliding_window import Runner, gaussian_weights, predict_logits  # noqa: E402


CHECKS = "kernel_checks.json"


def _net(classes: int = 7) -> PlainConvUNet:
    torch.manual_seed(3)
    net = PlainConvUNet(
        input_channels=1, n_stages=4, features_per_stage=[16, 32, 64, 64], conv_op=torch.nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * 4, strides=[[1, 1, 1]] + [[2, 2, 2]] * 3, n_conv_per_stage=[2] * 4,
        num_classes=classes, n_conv_per_stage_decoder=[2] * 3, conv_bias=True,
        norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)
    with torch.no_grad():  # affine norms away from (1, 0) so the in-place norm is really tested
        for m in net.modules():
            if isinstance(m, torch.nn.InstanceNorm3d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def test_lean_forward_equals_network_bitwise(tmp_path):
    """First run (checks every slab shortcut against the whole layer) and second run (trusts the
    stored answers) both give the network's own weighted output, bit for bit."""
    net = _net()
    patch = (48, 40, 32)
    tile = torch.randn(1, 1, *patch) * 2
    weight = torch.from_numpy(gaussian_weights(patch).copy())
    assert LeanUNet.supports(net)
    with torch.inference_mode():
        reference = torch.zeros((7, *patch), dtype=torch.float16)
        out = net(tile.clone())[0]
        out *= weight
        reference += out
        for run in range(2):
            lean_sum = torch.zeros_like(reference)
            slabs = []
            for z, slab in LeanUNet(net, KernelChecks(tmp_path / CHECKS)).weighted_slabs(tile.clone(), weight):
                slabs.append(z)
                lean_sum[:, z].add_(slab)
            assert torch.equal(lean_sum, reference), f"run {run}"
    saved = json.loads((tmp_path / CHECKS).read_text())
    # one answer for the segmentation layer, one per convolution shape computed in slabs
    assert any("|same " in k for k in saved) and any("|up " in k for k in saved)
    (exact,) = [v for k, v in saved.items() if "|seg " in k]
    # with the slab split exact, the output came in slabs; otherwise in one piece
    assert len(slabs) == (-(-patch[0] // SEG_SLAB) if exact else 1)


def test_remembered_check_is_used(tmp_path):
    """A stored answer is trusted: with 'not exact' recorded, the layer runs in one piece."""
    net = _net()
    patch = (32, 32, 32)
    weight = torch.from_numpy(gaussian_weights(patch).copy())
    with torch.inference_mode():
        lean = LeanUNet(net, KernelChecks(tmp_path / CHECKS))
        list(lean.weighted_slabs(torch.randn(1, 1, *patch), weight))
        key = next(k for k in json.loads((tmp_path / CHECKS).read_text()) if "|seg " in k)
        KernelChecks(tmp_path / CHECKS).put(key, False)
        calls = [z for z, _ in LeanUNet(net, KernelChecks(tmp_path / CHECKS)).weighted_slabs(
            torch.randn(1, 1, *patch), weight)]
    assert calls == [slice(0, patch[0])]


def test_predict_logits_unchanged_by_lean_path(tmp_path, monkeypatch):
    """Sliding window over several overlapping tiles: lean path = plain forward, bit for bit."""
    import numpy as np

    net = _net(5)
    data = np.random.default_rng(0).normal(size=(1, 70, 45, 38)).astype(np.float32)
    patch = (32, 32, 32)
    lean = predict_logits(Runner([net], checks=KernelChecks(tmp_path / CHECKS)), data, patch, 0.5, 5)
    monkeypatch.setattr(LeanUNet, "supports", staticmethod(lambda n: False))
    plain = predict_logits(Runner([net]), data, patch, 0.5, 5)
    assert torch.equal(lean, plain)


def test_unwritable_folder_keeps_answers_in_memory(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        checks = KernelChecks(folder / "sub" / CHECKS)
        checks.put("k", True)
        assert checks.get("k") is True
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("lean", [True, False])
def test_streamed_labels_equal_whole_volume_argmax(tmp_path, monkeypatch, lean):
    """Labels from the patch-deep sliding window = argmax of the whole-volume fp16 sums, with several
    tile rows along the first axis (uneven spacing) and padding on another axis."""
    import numpy as np

    from totalseg.predict.sliding_window import predict_labels, tile_grid

    net = _net(5)
    data = np.random.default_rng(1).normal(size=(1, 101, 37, 45)).astype(np.float32)
    patch = (32, 40, 32)
    assert len({t[0].start for t in tile_grid((101, 40, 45), patch, 0.5)}) >= 5
    if not lean:
        monkeypatch.setattr(LeanUNet, "supports", staticmethod(lambda n: False))
    runner = Runner([net], checks=KernelChecks(tmp_path / CHECKS))
    whole = predict_logits(runner, data, patch, 0.5, 5)
    streamed = predict_labels(runner, data, patch, 0.5, 5, np.uint16)
    assert streamed.dtype == np.uint16 and streamed.shape == data.shape[1:]
    assert np.array_equal(streamed, whole.argmax(0).numpy())
    assert len(np.unique(streamed)) > 1


@pytest.mark.parametrize("folds", [1, 2])
def test_logits_overflowing_fp16_are_refused(tmp_path, folds):
    """nnU-Net refuses infinite sums; so do both paths (the streamed window, checked head by head without
    copying it, and the whole-volume sums of an ensemble), with a one-line error instead of labels."""
    import numpy as np

    from totalseg.errors import UserError
    from totalseg.predict.sliding_window import predict_labels

    net = _net(5)
    with torch.no_grad():  # one class's logit far beyond fp16's 65504 once weighted and summed
        net.decoder.seg_layers[-1].bias[3] = 1e6
    data = np.random.default_rng(2).normal(size=(1, 70, 37, 45)).astype(np.float32)
    runner = Runner([net] * folds, checks=KernelChecks(tmp_path / CHECKS))
    with pytest.raises(UserError, match="infinite values"):
        predict_labels(runner, data, (32, 40, 32), 0.5, 5, np.uint8)
