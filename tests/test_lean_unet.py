"""The memory-lean forward pass gives torch's exact numbers and remembers its kernel checks."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from dynamic_network_architectures.architectures.unet import PlainConvUNet  # noqa: E402

from totalseg.predict.kernel_checks import FILE_NAME, KernelChecks  # noqa: E402
from totalseg.predict.lean_unet import SEG_SLAB, LeanUNet  # noqa: E402
from totalseg.predict.sliding_window import gaussian_weights, predict_logits  # noqa: E402


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
        lean_sum = torch.zeros_like(reference)
        slabs = []

        def add(z, slab):
            slabs.append(z)
            lean_sum[:, z].add_(slab)

        LeanUNet(net, KernelChecks(tmp_path)).add_weighted(tile.clone(), weight, add)
    assert torch.equal(lean_sum, reference)
    saved = json.loads((tmp_path / FILE_NAME).read_text())
    assert len(saved) == 1
    (exact,) = saved.values()
    # with the slab split exact, the output came in slabs; otherwise in one piece
    assert len(slabs) == (-(-patch[0] // SEG_SLAB) if exact else 1)


def test_remembered_check_is_used(tmp_path):
    """A stored answer is trusted: with 'not exact' recorded, the layer runs in one piece."""
    net = _net()
    patch = (32, 32, 32)
    weight = torch.from_numpy(gaussian_weights(patch).copy())
    with torch.inference_mode():
        lean = LeanUNet(net, KernelChecks(tmp_path))
        lean.add_weighted(torch.randn(1, 1, *patch), weight, lambda z, o: None)
        key = next(iter(json.loads((tmp_path / FILE_NAME).read_text())))
        KernelChecks(tmp_path).put(key, False)
        calls = []
        LeanUNet(net, KernelChecks(tmp_path)).add_weighted(torch.randn(1, 1, *patch), weight,
                                                           lambda z, o: calls.append(z))
    assert calls == [slice(0, patch[0])]


def test_predict_logits_unchanged_by_lean_path(tmp_path, monkeypatch):
    """Sliding window over several overlapping tiles: lean path = plain forward, bit for bit."""
    import numpy as np

    net = _net(5)
    data = np.random.default_rng(0).normal(size=(1, 70, 45, 38)).astype(np.float32)
    patch = (32, 32, 32)
    lean = predict_logits([net], data, patch, 0.5, 5, KernelChecks(tmp_path))
    monkeypatch.setattr(LeanUNet, "supports", staticmethod(lambda n: False))
    plain = predict_logits([net], data, patch, 0.5, 5)
    assert torch.equal(lean, plain)


def test_unwritable_folder_keeps_answers_in_memory(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        checks = KernelChecks(folder)
        checks.put("k", True)
        assert checks.get("k") is True
    finally:
        folder.chmod(0o700)
