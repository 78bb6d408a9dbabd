"""nnU-Net's own resampling (tasks without a resample spacing) and tile-parallel inference.

The end-to-end proof is the oracle parity of cerebral_bleed, hip_implant and liver_vessels
(tests/test_subtasks.py); these tests pin the rules those runs rely on.
"""
from __future__ import annotations

import numpy as np
import pytest

from totalseg.prepare.nnunet_resample import (nearest_indices, resample_data, resampled_argmax, resize,
                                              separate_axis, target_shape)


@pytest.mark.parametrize("current,target,expected", [
    ((3.0, 3.0, 3.0), (2.5, 0.7, 0.7), 0),       # isotropic image, anisotropic plans: the plans decide
    ((5.0, 1.0, 1.0), (1.0, 1.0, 1.0), 0),       # anisotropic image decides first
    ((1.0, 1.0, 3.5), (1.0, 1.0, 1.0), 2),
    ((1.0, 1.0, 2.9), (1.0, 1.0, 1.0), None),    # ratio 2.9: joint 3D resampling
    ((0.24, 1.25, 1.25), (1.0, 1.0, 1.0), None),  # two coarse axes: no separate axis
])
def test_separate_axis(current, target, expected):
    assert separate_axis(current, target) == expected


def test_forced_separate_axis():
    assert separate_axis((3.0, 3.0, 3.0), (2.5, 0.7, 0.7), force_separate_z=False) is None
    assert separate_axis((4.0, 1.0, 1.0), (1.0, 1.0, 1.0), force_separate_z=True) == 0


def test_target_shape_rounds_like_python():
    assert target_shape((94, 77, 122), (3.0, 3.0, 3.0), (2.5, 0.7, 0.7)) == (113, 330, 523)
    assert target_shape((5,), (1.0,), (2.0,)) == (2,)  # round(2.5) == 2: half to even


@pytest.mark.parametrize("size,new_size", [(10, 23), (23, 10), (7, 7), (94, 113), (113, 94)])
def test_nearest_indices_are_centre_aligned(size, new_size):
    expected = np.clip(np.floor(size / new_size * (np.arange(new_size) + 0.5)), 0, size - 1)
    np.testing.assert_array_equal(nearest_indices(size, new_size), expected)


def test_resize_keeps_the_value_range():
    image = np.zeros((12, 12))
    image[:, 6:] = 100.0  # a step: a cubic spline overshoots without the clip
    out = resize(image, (29, 31), order=3)
    assert out.shape == (29, 31)
    assert out.min() == 0.0 and out.max() == 100.0
    assert 0 < (out == 100.0).mean() < 1


def test_resize_linear_ramp_is_exact_inside():
    ramp = np.tile(np.arange(8, dtype=np.float64), (4, 1))
    out = resize(ramp, (4, 16), order=1)
    # pixel centres of the new grid sit at (j + 0.5) / 2 - 0.5 in the old one; edges repeat
    expected = np.clip((np.arange(16) + 0.5) / 2 - 0.5, 0, 7)
    np.testing.assert_allclose(out[0], expected, atol=1e-12)


@pytest.mark.parametrize("spacing,target", [((3.0, 3.0, 3.0), (2.5, 0.7, 0.7)), ((1.5, 1.5, 1.5), (1.0, 1.2, 1.1))])
def test_streamed_argmax_equals_whole_volume_argmax(spacing, target):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 9, 21, 17)).astype(np.float16)
    shape = (7, 6, 5)
    labels = resampled_argmax(logits, shape, target, spacing, order=1, order_z=0)
    whole = resample_data(logits, shape, target, spacing, order=1, order_z=0)  # fp16, as nnU-Net keeps it
    assert whole.dtype == np.float16
    np.testing.assert_array_equal(labels, np.argmax(whole, axis=0))


@pytest.mark.parametrize("spacing,target", [((3.0, 3.0, 3.0), (2.5, 0.7, 0.7)), ((1.5, 1.5, 1.5), (1.0, 1.2, 1.1))])
def test_streamed_argmax_keeps_the_first_of_tied_channels(spacing, target):
    """Channels 1 and 3 equal to channel 0 (exact ties everywhere) and channel 2 above them in places:
    np.argmax's first maximal channel, never a later copy."""
    rng = np.random.default_rng(1)
    base = rng.normal(size=(9, 21, 17)).astype(np.float16)
    higher = np.where(rng.random(base.shape) < 0.3, base + np.float16(1), base).astype(np.float16)
    logits = np.stack([base, base, higher, base])
    shape = (7, 6, 5)
    labels = resampled_argmax(logits, shape, target, spacing, order=1, order_z=0)
    whole = resample_data(logits, shape, target, spacing, order=1, order_z=0)
    expected = np.argmax(whole, axis=0)
    assert set(np.unique(expected)) == {0, 2}
    np.testing.assert_array_equal(labels, expected)


def test_resample_data_passes_through_when_shape_is_kept():
    data = np.ones((1, 4, 5, 6), dtype=np.float32)
    assert resample_data(data, (4, 5, 6), (1, 1, 1), (1, 1, 1)) is data


def test_tile_parallel_outputs_equal_serial(fake_home, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(fake_home))
    from totalseg.predict.model import load_model
    from totalseg.predict.sliding_window import network_outputs, tile_grid, tile_workers
    from totalseg.registry import get_model
    from totalseg.weights import model_folder

    net = load_model(model_folder(get_model(150)), "3d_fullres", (0,)).networks[0]
    volume = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 40, 48, 56)).astype(np.float32))
    tiles = tile_grid(volume.shape[1:], (32, 32, 32), 0.5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the caller's job while tiles run side by side
    try:
        serial = list(network_outputs(net, volume, tiles, 1))
        parallel = list(network_outputs(net, volume, tiles, 2))
    finally:
        torch.set_num_threads(threads)
    # side by side, one thread each = one after the other with one thread
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel))
    # tiles run side by side only where one thread gives the all-threads numbers
    sample = volume[:, :32, :32, :32][None]
    with torch.inference_mode():
        all_threads = net(sample)[0]
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            same = torch.equal(net(sample)[0], all_threads)
    finally:
        torch.set_num_threads(threads)
    assert tile_workers(net, sample) == (threads if same and threads > 1 else 1)
