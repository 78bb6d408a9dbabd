"""Resampling in threads: scipy's zoom values, bit for bit, whatever the number of threads."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from conftest import REF
from totalseg.prepare import resample
from totalseg.volume import Volume


@pytest.fixture(scope="module")
def ct():
    img = nib.load(REF / "example_ct.nii.gz")
    return np.asanyarray(img.dataobj), np.array(img.header.get_zooms()[:3], dtype=np.float64)


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("target", [1.5, 3.0])
def test_threads_give_scipys_values(ct, order, target):
    data, zooms = ct
    if order == 0:
        data = (data % 11).astype(np.uint8)
    factor = zooms / target
    out = np.uint8 if order == 0 else np.float64
    expected = ndimage.zoom(data, factor, order=order, mode="nearest", output=out)
    for threads in (2, 5):
        got = resample.zoom(data, factor, order, out, threads=threads)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert np.array_equal(got, expected)


def test_views_and_upsampling_back(ct):
    """Flipped and transposed views (as the canonical orientation makes them), labels back to a larger grid."""
    data, zooms = ct
    view = data[::-1].transpose(1, 0, 2)
    vol = Volume(view, np.diag([*zooms[[1, 0, 2]], 1.0]))
    small = resample.to_spacing(vol, (3.0, 3.0, 3.0), 1, threads=3)
    assert np.array_equal(small.data, resample.to_spacing(vol, (3.0, 3.0, 3.0), 1, threads=1).data)
    labels = Volume((small.data % 7).astype(np.uint8), small.affine)
    back = resample.to_shape(labels, view.shape, vol.affine, threads=4)
    assert np.array_equal(back.data, resample.to_shape(labels, view.shape, vol.affine, threads=1).data)
    assert back.shape == view.shape


def test_falls_back_to_one_call_where_scipy_differs(ct, monkeypatch):
    """Without scipy's internal kernel the self-check fails and ndimage.zoom does the work."""
    data, zooms = ct
    monkeypatch.setattr(resample, "_slab_kernel", lambda: None)
    resample.slabs_are_exact.cache_clear()
    try:
        assert not resample.slabs_are_exact()
        got = resample.zoom(data, zooms / 3.0, 1, np.float64, threads=4)
    finally:
        resample.slabs_are_exact.cache_clear()
    assert np.array_equal(got, ndimage.zoom(data, zooms / 3.0, order=1, mode="nearest", output=np.float64))
