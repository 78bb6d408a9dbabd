"""The parity rule of the engine issue: our outputs against the official tool's (oracle_tiny)."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(a, b).sum() / s


def assert_image_parity(ours: Path, theirs: Path) -> None:
    a, b = nib.load(ours), nib.load(theirs)
    assert a.shape == b.shape, (ours.name, a.shape, b.shape)
    assert np.allclose(a.affine, b.affine, atol=1e-6), ours.name
    assert a.get_data_dtype() == b.get_data_dtype(), ours.name
    x, y = np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)
    agreement = (x == y).mean()
    assert agreement >= 0.9999, f"{ours.name}: {agreement:.6f} of voxels agree"
    for label in np.unique(y):
        if label and (y == label).sum() >= 50:
            d = dice(x == label, y == label)
            assert d >= 0.999, f"{ours.name}: label {label} Dice {d:.5f}"


def assert_statistics_parity(ours: Path, theirs: Path) -> None:
    a, b = json.loads(ours.read_text()), json.loads(theirs.read_text())
    assert list(a) == list(b)
    for name in b:
        assert list(a[name]) == list(b[name]), name
        for key, value in b[name].items():
            assert np.isclose(a[name][key], value, rtol=1e-3, atol=1e-6), (name, key, a[name][key], value)


def assert_output_parity(ours: Path, theirs: Path) -> None:
    """A file, or a folder of files (same names), agree under the parity rule."""
    if theirs.is_dir():
        assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
        for f in sorted(theirs.iterdir()):
            if f.name.endswith(".json"):
                assert_statistics_parity(ours / f.name, f)
            else:
                assert_image_parity(ours / f.name, f)
    else:
        assert_image_parity(ours, theirs)
