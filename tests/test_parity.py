"""Every core oracle case: our command gives what the official TotalSegmentator 2.18.0 gave (stored oracle,
under the near-tie tolerance of tests/parity.py; tests/test_official_live.py compares bit for bit on this machine)."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import ORACLE, REF
from parity import assert_image_parity, assert_labels_parity, assert_output_parity
from totalseg.cli.totalsegmentator import main
from totalseg.write.labelmap import load_multilabel_nifti


def _core_cases():
    if not (ORACLE / "cases.json").is_file():
        return []
    cases = json.loads((ORACLE / "cases.json").read_text())
    return [c for c in cases if "group" not in c and "needs" not in c]


@pytest.mark.parametrize("case", _core_cases(), ids=lambda c: c["name"])
def test_oracle_case(case, use_home, tmp_path):
    args = [a.replace("{ref}", str(REF)).replace("{out}", str(tmp_path)) for a in case["args"]]
    assert main(args + ["-d", "cpu", "-q"]) == 0
    out = args[args.index("-o") + 1]
    assert_output_parity(tmp_path / out.rsplit("/", 1)[1], ORACLE / out.rsplit("/", 1)[1])
    if "--ml" in args:
        _, ours = load_multilabel_nifti(out)
        _, theirs = load_multilabel_nifti(ORACLE / out.rsplit("/", 1)[1])
        assert ours == theirs


def test_api_with_nibabel_image(use_home):
    """The Python API takes an image object and returns the labels (no output path)."""
    from totalseg.run.api import totalsegmentator

    img = nib.load(REF / "example_ct_sm.nii.gz")
    out, stats = totalsegmentator(img, None, fast=True, device="cpu", quiet=True, statistics=True)
    theirs = nib.load(ORACLE / "fast_ml.nii.gz")
    assert_labels_parity(np.asanyarray(out.dataobj), np.asanyarray(theirs.dataobj), "API output")
    assert np.allclose(out.affine, theirs.affine)
    official = json.loads((ORACLE / "fast_files_stats" / "statistics.json").read_text())
    assert list(stats) == list(official)
    for name, values in official.items():
        assert stats[name] == pytest.approx(values, rel=1e-3), name


def test_api_roi_subset_writes_only_requested(use_home, tmp_path):
    from totalseg.run.api import totalsegmentator

    img = totalsegmentator(REF / "example_mr_sm.nii.gz", tmp_path / "seg", task="total_mr", fast=True,
                           roi_subset=["liver", "spleen"], device="cpu", quiet=True)
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == ["liver.nii.gz", "spleen.nii.gz"]
    assert set(np.unique(np.asanyarray(img.dataobj))) <= {0, 1, 5}


def test_4d_input_uses_first_volume(use_home, tmp_path, capsys):
    ref = nib.load(REF / "example_ct_sm.nii.gz")
    data = np.asanyarray(ref.dataobj)
    four = nib.Nifti1Image(np.stack([data, np.zeros_like(data)], axis=-1), ref.affine)
    nib.save(four, tmp_path / "4d.nii.gz")
    assert main(["-i", str(tmp_path / "4d.nii.gz"), "-o", str(tmp_path / "o.nii.gz"), "--fast", "--ml",
                 "-d", "cpu"]) == 0
    assert "4D" in capsys.readouterr().err
    assert_image_parity(tmp_path / "o.nii.gz", ORACLE / "fast_ml.nii.gz")
