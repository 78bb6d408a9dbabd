"""The parity rules: our outputs against the official TotalSegmentator 2.18.0's.

Two references, two rules:

- **Same machine** (tests/test_official_live.py): the official tool run here, with the same torch. Rule
  ``EXACT``: 0 differing voxels, same shape, affine, dtype and label table. This is the bit-for-bit claim.
- **Stored oracle** (``../shared/data/oracle_tiny``, tests/test_parity.py, tests/test_subtasks.py): made by the
  official tool on an AMD EPYC (Zen 4). Rule ``STORED_ORACLE``: the same shape, affine, dtype, file names and
  label table, and labels that differ in at most a few voxels, counted per label.

Why a tolerance for the stored oracle: a label is the argmax of the fp16-averaged logits, and at a near-tie
voxel (two logits within an fp16 step) a different CPU's convolution kernels (oneDNN picks AVX2, AVX-512,
AVX512-BF16 or AMX code paths, which sum in another order) round the other way, and the argmax flips. That is
the official tool's own behaviour, not ours. Measured, official 2.18.0 run on another CPU against this oracle:

- Intel Xeon with AVX512-BF16, no AMX (torch 2.14.1): total_ml, total_ml_bs, total_files: 1 voxel
  (colon -> vertebrae_L1); total_ml_big: 3 voxels (3 label pairs, 1 voxel per label); every other core case: 0.
- Intel Xeon with AMX (shared/README.md): total_ml 1 voxel, total_ml_big 3 voxels.

On both machines our outputs equal the official output made on that machine with 0 differing voxels (our
engine runs the same torch kernels as the official tool); tests/test_official_live.py checks it wherever the
tests run.

The tolerance is counted in voxels, per label, not as a share of the volume: a share lets a sparse output
(a few small labels in a large volume) lose whole structures while still "agreeing" on 99.99 % of voxels.
Every label may differ in at most ``per_label`` voxels (either direction: voxels it gained or lost), and an
image in at most ``total`` voxels in all; a flip from label a to label b counts once for a, once for b and once
in the total. The largest measured difference is 1 voxel per label and 3 per image; the bounds (3 and 6) allow
all measured flips to fall on one label, and twice the measured total, for CPUs not yet measured, and stay far
below any real error (a wrong resampling, crop or orientation changes hundreds of voxels at least).
A folder of per-class files is held file by file.

Statistics (statistics.json) are compared within 1e-3 relative (and 1e-6 absolute): they are float64 sums
over the masks and the image, and the masks of every statistics case were identical on every CPU measured.
(A near-tie flip in a small structure would move its volume and mean by more than 1e-3: statistics of a case
whose masks differ are then not comparable at this tolerance, and the rule says so by failing.)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """How many voxels may differ: per label (gained or lost), and in one image in all."""

    per_label: int
    total: int


EXACT = Tolerance(per_label=0, total=0)
STORED_ORACLE = Tolerance(per_label=3, total=6)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(a, b).sum() / s


def label_differences(ours: np.ndarray, theirs: np.ndarray) -> dict[int, int]:
    """For each label present where the two images differ: the voxels it has in one and not in the other."""
    differ = ours != theirs
    found = np.union1d(np.unique(ours[differ]), np.unique(theirs[differ]))
    return {int(label): int(np.count_nonzero(differ & ((ours == label) | (theirs == label)))) for label in found}


def assert_labels_parity(ours: np.ndarray, theirs: np.ndarray, what: str,
                         tolerance: Tolerance = STORED_ORACLE) -> None:
    """Two label arrays of one shape differ in no more voxels than ``tolerance`` allows."""
    total = int(np.count_nonzero(ours != theirs))
    if not total:
        return
    per_label = label_differences(ours, theirs)
    assert total <= tolerance.total and max(per_label.values()) <= tolerance.per_label, (
        f"{what}: {total} voxels differ (at most {tolerance.total} allowed), per label "
        f"{per_label} (at most {tolerance.per_label} each)")


def assert_image_parity(ours: Path, theirs: Path, tolerance: Tolerance = STORED_ORACLE) -> None:
    a, b = nib.load(ours), nib.load(theirs)
    assert a.shape == b.shape, (ours.name, a.shape, b.shape)
    assert np.allclose(a.affine, b.affine, atol=1e-6), ours.name
    assert a.get_data_dtype() == b.get_data_dtype(), ours.name
    assert_labels_parity(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj), ours.name, tolerance)


def assert_statistics_parity(ours: Path, theirs: Path) -> None:
    a, b = json.loads(ours.read_text()), json.loads(theirs.read_text())
    assert list(a) == list(b)
    for name in b:
        assert list(a[name]) == list(b[name]), name
        for key, value in b[name].items():
            assert np.isclose(a[name][key], value, rtol=1e-3, atol=1e-6), (name, key, a[name][key], value)


def assert_output_parity(ours: Path, theirs: Path, tolerance: Tolerance = STORED_ORACLE) -> None:
    """A file, or a folder of files (same names), agree under the rule ``tolerance``."""
    if theirs.is_dir():
        assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
        for f in sorted(theirs.iterdir()):
            if f.name.endswith(".json"):
                assert_statistics_parity(ours / f.name, f)
            else:
                assert_image_parity(ours / f.name, f, tolerance)
    else:
        assert_image_parity(ours, theirs, tolerance)
