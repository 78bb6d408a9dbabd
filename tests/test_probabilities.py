"""-sp/--save_probabilities and -ho/--higher_order_resampling: the official 2.18.0's files and masks.

Live comparisons run the official tool of the cached venv (tests/test_official_live.py; skipped where it is not
there) on a small crop of example_ct_sm with the random-weights home; each official run happens once per
session. The property tests always run: the probabilities are a softmax whose argmax is our labels on the
model's grid, and -ho masks are label maps that differ from the default path only near label borders.
"""
from __future__ import annotations

import pickle
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from conftest import REF, _copy_home
from test_official_live import _clean_env, _venv
from totalseg import totalsegmentator
from totalseg.cli.totalsegmentator import main
from totalseg.registry import get_task

CT = REF / "example_ct_sm.nii.gz"


@pytest.fixture(scope="session")
def small_ct(tmp_path_factory) -> Path:
    """64 x 64 x 30 voxels (3 mm) of example_ct_sm: a few tiles per model, yet real anatomy."""
    if not CT.is_file():
        pytest.skip("example_ct_sm is not available")
    image = nib.load(CT)
    part = image.slicer[30:94, 20:84, :]
    path = tmp_path_factory.mktemp("small") / "small_ct.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(part.dataobj), part.affine, part.header), path)
    return path


@pytest.fixture(scope="session")
def official_runs(tmp_path_factory):
    """``run(name, args) -> folder``: the official tool's outputs for ``args`` (``{out}``: that folder), run once."""
    tool = _venv() / "bin" / "TotalSegmentator"
    if not tool.is_file():
        pytest.skip(f"the official TotalSegmentator venv is not at {tool.parent.parent}")
    root = tmp_path_factory.mktemp("official")
    home = _copy_home(root / "home")
    done: dict[str, Path] = {}

    def run(name: str, args: list[str]) -> Path:
        if name not in done:
            out = root / name
            out.mkdir()
            argv = [str(tool), *(a.replace("{out}", str(out)) for a in args), "-d", "cpu"]
            proc = subprocess.run(argv, cwd=out, capture_output=True, text=True, timeout=1200,
                                  env=_clean_env(TOTALSEG_HOME_DIR=str(home)))
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
            done[name] = out
        return done[name]

    return run


def _labels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def _same_properties(ours: dict, theirs: dict) -> None:
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        if key == "nibabel_stuff":
            assert list(ours[key]) == list(value)
            for name, affine in value.items():
                assert ours[key][name].dtype == affine.dtype and np.array_equal(ours[key][name], affine), name
        else:
            assert type(ours[key]) is type(value) and ours[key] == value, key


@pytest.mark.official
@pytest.mark.parametrize("extra", [[], pytest.param(["-ho"], marks=pytest.mark.slow)],
                         ids=["model_grid", "ho_input_grid"])
def test_probabilities_as_official(extra, small_ct, official_runs, use_home, tmp_path):
    """--fastest: the npz on the 6 mm grid TotalSegmentator resamples to; with -ho on the input's own grid
    (nnU-Net resampled there and back). Same array, properties and masks."""
    args = ["-i", str(small_ct), "-o", "{out}/seg.nii.gz", "--fastest", "--ml", "-sp", "{out}/probs.npz", *extra]
    theirs = official_runs("sp" + "".join(extra), args)
    assert main([a.replace("{out}", str(tmp_path)) for a in args] + ["-d", "cpu", "-q"]) == 0
    ours_p, theirs_p = np.load(tmp_path / "probs.npz"), np.load(theirs / "probs.npz")
    assert ours_p.files == theirs_p.files == ["probabilities"]
    a, b = ours_p["probabilities"], theirs_p["probabilities"]
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)  # softmax rounding only (measured: < 3e-9)
    with open(tmp_path / "probs.pkl", "rb") as f, open(theirs / "probs.pkl", "rb") as g:
        _same_properties(pickle.load(f), pickle.load(g))
    assert np.array_equal(_labels(tmp_path / "seg.nii.gz"), _labels(theirs / "seg.nii.gz"))


@pytest.mark.official
def test_higher_order_resampling_as_official(small_ct, official_runs, use_home, tmp_path):
    """--fastest -ho: nnU-Net's 3 -> 6 mm resampling and the cropped-logits export; 0 differing voxels
    (through the API)."""
    args = ["-i", str(small_ct), "-o", "{out}/seg.nii.gz", "--fastest", "--ml", "-ho"]
    theirs = _labels(official_runs("ho", args) / "seg.nii.gz")
    ours = totalsegmentator(small_ct, tmp_path / "seg.nii.gz", ml=True, fastest=True, higher_order_resampling=True,
                            device="cpu", quiet=True)
    assert np.array_equal(np.asarray(ours.dataobj), theirs)
    assert np.array_equal(_labels(tmp_path / "seg.nii.gz"), theirs)


@pytest.mark.official
@pytest.mark.slow
def test_fast_ml_ho_on_example_ct_sm_as_official(official_runs, use_home, tmp_path):
    """The issue's case: --fast --ml -ho on example_ct_sm (3 mm image, 3 mm model: nothing to resample)."""
    args = ["-i", str(CT), "-o", "{out}/seg.nii.gz", "--fast", "--ml", "-ho"]
    theirs = _labels(official_runs("fast_ho", args) / "seg.nii.gz")
    assert main([a.replace("{out}", str(tmp_path)) for a in args] + ["-d", "cpu", "-q"]) == 0
    assert np.array_equal(_labels(tmp_path / "seg.nii.gz"), theirs)


def test_probabilities_are_the_labels_softmax(small_ct, use_home, tmp_path):
    """-sp with -sl: the labels stay on the model's grid, where the probabilities are: argmax equals them, each
    voxel's probabilities sum to 1, and the properties describe that grid. save_probabilities=True (the
    cohort's form) writes probabilities.npz/.pkl beside the output."""
    out = tmp_path / "seg.nii.gz"
    totalsegmentator(small_ct, out, ml=True, fastest=True, save_lowres=True, save_probabilities=True,
                     device="cpu", quiet=True)
    probs = np.load(tmp_path / "probabilities.npz")["probabilities"]
    labels = nib.load(out)
    assert probs.dtype == np.float32 and probs.shape == (len(get_task("total").classes) + 1, *labels.shape[::-1])
    np.testing.assert_allclose(probs.sum(axis=0), 1, atol=1e-5)
    assert np.array_equal(probs.argmax(axis=0).transpose(2, 1, 0), np.asarray(labels.dataobj))
    with open(tmp_path / "probabilities.pkl", "rb") as f:
        props = pickle.load(f)
    assert props["shape_before_cropping"] == labels.shape[::-1]
    assert props["spacing"] == [6.0, 6.0, 6.0]
    assert np.allclose(props["nibabel_stuff"]["original_affine"], labels.affine, atol=1e-4)


def test_higher_order_resampling_changes_only_borders(small_ct, use_home, tmp_path):
    """-ho resamples logits (linear) where the default upsamples labels (nearest), and nnU-Net's model grid
    is not TotalSegmentator's: a valid label map on the input grid whose differences lie on the default's label
    borders, none further than 1.5 model voxels (3 input voxels) from one."""
    default = totalsegmentator(small_ct, None, ml=True, fastest=True, device="cpu", quiet=True)
    smooth = totalsegmentator(small_ct, None, ml=True, fastest=True, higher_order_resampling=True, device="cpu",
                              quiet=True)
    a, b = np.asarray(default.dataobj), np.asarray(smooth.dataobj)
    assert b.shape == a.shape == nib.load(small_ct).shape and b.dtype == np.uint8
    assert set(np.unique(b)) <= {0, *get_task("total").classes}
    differ = a != b
    assert differ.any() and differ.mean() < 0.2
    border = np.zeros(a.shape, dtype=bool)  # voxels with a differently labelled face neighbour
    for axis in range(3):
        step = np.diff(a, axis=axis) != 0
        border[tuple(slice(0, -1) if i == axis else slice(None) for i in range(3))] |= step
        border[tuple(slice(1, None) if i == axis else slice(None) for i in range(3))] |= step
    distance = ndimage.distance_transform_edt(~border)[differ]  # in voxels, to the nearest border voxel
    assert distance.max() <= 3 and np.mean(distance == 0) > 0.95  # measured: 12161 on it, 102 within 3


def test_save_probabilities_refuses_a_folder(small_ct, use_home, tmp_path, capsys):
    assert main(["-i", str(small_ct), "-o", str(tmp_path / "o.nii.gz"), "--ml", "-sp", str(tmp_path), "-d", "cpu"]) == 1
    assert "takes a file path" in capsys.readouterr().err


def test_cohort_writes_probabilities_into_each_case_folder(small_ct, use_home, tmp_path):
    """totalseg_batch -sp (no path): every case folder gets its own probabilities.npz/.pkl."""
    from totalseg.cli.batch import main as batch_main

    cohort = tmp_path / "cohort"
    assert batch_main(["-i", str(small_ct), "-o", str(cohort), "--fastest", "--ml", "-sp", "-d", "cpu", "-q"]) == 0
    found = sorted(cohort.rglob("probabilities.npz"))
    assert [p.parent for p in found] == [cohort / "small_ct"]
    assert found[0].with_suffix(".pkl").is_file() and (cohort / "small_ct" / "segmentations.nii.gz").is_file()


def test_probabilities_come_from_the_predictors_loaded_model(small_ct, use_home, tmp_path):
    """-sp through a Predictor: the model it loaded for the labels also gives the probabilities (one load for
    two runs), and they are that run's: the argmax of each run's probabilities is its labels."""
    from totalseg import Predictor

    with Predictor(device="cpu", keep_models=2) as predictor:
        for name in ("a", "b"):
            predictor.segment(small_ct, tmp_path / name / "seg.nii.gz", ml=True, fastest=True, save_lowres=True,
                              save_probabilities=True, quiet=True)
    assert predictor.loads == [298]
    for name in ("a", "b"):
        probs = np.load(tmp_path / name / "probabilities.npz")["probabilities"]
        labels = _labels(tmp_path / name / "seg.nii.gz")
        assert np.array_equal(probs.argmax(axis=0).transpose(2, 1, 0), labels)
