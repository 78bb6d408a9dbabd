"""What users read off a segmentation: statistics (-sii/-sa/-sx), radiomics, preview."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import REF

from totalseg.write.labelmap import load_multilabel_nifti
from totalseg.write.statistics import compute_statistics

FAST_DIR = REF / "example_seg_fast"
FAST_ML = REF / "example_seg_fast.nii.gz"
CT_SM = REF / "example_ct_sm.nii.gz"

pytestmark = pytest.mark.skipif(not FAST_DIR.is_dir(), reason="../shared/data not available")


def _reference_labels():
    img, label_map = load_multilabel_nifti(FAST_ML)
    return np.asanyarray(img.dataobj), label_map


# ------------------------------------------------------------------------------------ statistics
def test_statistics_equal_official_reference():
    """statistics.json of example_seg_fast (``--statistics -sii``): volume exact, intensity 1e-3."""
    labels, label_map = _reference_labels()
    ct = nib.load(CT_SM)
    got = compute_statistics(labels, ct.get_fdata(), ct.header.get_zooms(), label_map, exclude_border=False)
    want = json.loads((FAST_DIR / "statistics.json").read_text())
    assert list(got) == list(want)
    for name, ref in want.items():
        assert list(got[name]) == ["volume", "intensity"]
        assert got[name]["volume"] == ref["volume"], name
        assert abs(got[name]["intensity"] - ref["intensity"]) <= 1e-3, name
    assert sum(v["volume"] > 0 for v in want.values()) == 40


def test_statistics_median_equals_official_phase_input():
    """``-sa median -sii`` gives the statistics the official get_phase computed on these masks."""
    labels, label_map = _reference_labels()
    ct = nib.load(CT_SM)
    got = compute_statistics(labels, ct.get_fdata(), ct.header.get_zooms(), label_map,
                             exclude_border=False, aggregation="median")
    want = json.loads((REF / "example_seg_fast_median_stats.json").read_text())
    assert got == want


def test_statistics_extra_marks_incomplete_masks():
    labels, label_map = _reference_labels()
    ct = nib.load(CT_SM)
    data = ct.get_fdata()
    default = compute_statistics(labels, data, ct.header.get_zooms(), label_map)
    extra = compute_statistics(labels, data, ct.header.get_zooms(), label_map, extra=True)
    included = compute_statistics(labels, data, ct.header.get_zooms(), label_map, exclude_border=False,
                                  extra=True)
    # the default output keeps the official keys only
    assert all(list(v) == ["volume", "intensity"] for v in default.values())
    ids = {v: k for k, v in label_map.items()}
    n_incomplete = 0
    for name, entry in extra.items():
        mask = labels == ids[name]
        at_border = bool(mask[:3].any() or mask[-3:].any() or mask[:, :3].any() or mask[:, -3:].any()
                         or mask[:, :, :3].any() or mask[:, :, -3:].any())
        assert entry["incomplete"] is at_border, name
        assert included[name]["incomplete"] is at_border, name
        if at_border:
            n_incomplete += 1
            # official: silent zeros; here the same zeros, but marked
            assert default[name] == {"volume": 0.0, "intensity": 0.0}
            assert entry["volume"] == 0.0 and entry["n_voxels"] == 0
            assert included[name]["n_voxels"] == int(mask.sum()) > 0
        elif mask.any():
            assert entry["n_voxels"] == int(mask.sum())
            assert entry["intensity_max"] == float(data[mask].astype(np.int16).max())
    # a 30-slice scan: the liver and most structures are cut off at the top and bottom
    assert 0 < n_incomplete < len([n for n in extra if (labels == ids[n]).any()]) + 1
    assert extra["liver"]["incomplete"] is True


# ------------------------------------------------------------------------------------- radiomics
def _radiomics_or_skip():
    return pytest.importorskip("radiomics", reason="pyradiomics (extra 'radiomics') is not installed")


def test_radiomics_equal_pyradiomics_direct(tmp_path):
    radiomics = _radiomics_or_skip()
    from radiomics import featureextractor

    from totalseg.write.radiomics import write_radiomics

    masks = tmp_path / "masks"
    masks.mkdir()
    for name in ("liver", "spleen", "brain"):  # brain is empty in this scan
        shutil.copy(FAST_DIR / f"{name}.nii.gz", masks / f"{name}.nii.gz")
    out = write_radiomics(CT_SM, masks)
    assert out == masks / "statistics_radiomics.json"
    result = json.loads(out.read_text())
    assert list(result) == ["brain", "liver", "spleen"]  # sorted file order, as official

    extractor = featureextractor.RadiomicsFeatureExtractor(resampledPixelSpacing=[3, 3, 3],
                                                           geometryTolerance=1e-3)
    extractor.disableAllFeatures()
    extractor.enableFeatureClassByName("shape")
    extractor.enableFeatureClassByName("firstorder")
    for name in ("liver", "spleen"):
        direct = extractor.execute(str(CT_SM), str(FAST_DIR / f"{name}.nii.gz"))
        direct = {k[len("original_"):]: round(float(v), 4) for k, v in direct.items()
                  if k.startswith("original_")}
        assert result[name] == direct
        assert len(direct) == 32 and direct["shape_VoxelVolume"] > 0
    # the liver's first-order mean matches our own statistics of the same mask (3 mm grid: no resampling)
    assert result["liver"]["firstorder_Mean"] == pytest.approx(
        json.loads((FAST_DIR / "statistics.json").read_text())["liver"]["intensity"], abs=1e-3)
    classes = radiomics.getFeatureClasses()
    n_default = sum(not dep for c in ("shape", "firstorder", "glcm", "gldm", "glrlm", "glszm", "ngtdm")
                    for dep in classes[c].getFeatureNames().values())
    assert n_default == 107
    assert len(result["brain"]) == 107 and set(result["brain"].values()) == {0.0}


# --------------------------------------------------------------------------------------- preview
def _read_png(path: Path) -> np.ndarray:
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOImage import vtkPNGReader

    reader = vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    out = reader.GetOutput()
    w, h, _ = out.GetDimensions()
    return vtk_to_numpy(out.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3]


def _colour_pixels(rgb: np.ndarray, colour) -> np.ndarray:
    """Pixels that are a shade (0.25..1 x) of ``colour``: the class colour under diffuse light."""
    c = np.asarray(colour, dtype=float)
    px = rgb.astype(float)
    scale = (px @ c) / (c @ c)
    close = np.abs(px - scale[..., None] * c).max(axis=-1) <= 12
    return close & (scale >= 0.25) & (scale <= 1.02)


def test_preview_shows_every_class_in_its_colour(tmp_path):
    pytest.importorskip("vtkmodules", reason="VTK (extra 'preview') is not installed")
    from totalseg.write.preview import label_colour, write_preview

    # six separate blobs with the six distinct primary/secondary label colours
    labels = np.zeros((60, 50, 40), dtype=np.uint8)
    centres = {1: (12, 25, 10), 2: (30, 25, 10), 3: (48, 25, 10), 4: (12, 25, 30), 5: (30, 25, 30),
               6: (48, 25, 30)}
    grid = np.indices(labels.shape)
    for k, c in centres.items():
        labels[((grid - np.array(c)[:, None, None, None]) ** 2).sum(0) <= 36] = k
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    class_map = {k: f"class{k}" for k in range(1, 8)}  # class 7 absent
    out = write_preview(labels, affine, class_map, tmp_path / "preview_test.png")
    rgb = _read_png(out)
    assert rgb.any(axis=-1).mean() > 0.05  # not blank
    assert [p.name for p in tmp_path.iterdir()] == ["preview_test.png"]
    half = rgb.shape[1] // 2
    for k, (x, _, z) in centres.items():
        hits = _colour_pixels(rgb, label_colour(k))
        assert hits.sum() > 50, k
        # front view (left half): patient's right (+x in RAS) is on the left of the picture,
        # superior (+z) at the top
        rows, cols = np.nonzero(hits[:, :half])
        assert (cols.mean() < half / 2) == (x > 30), k
        assert (rows.mean() < rgb.shape[0] / 2) == (z > 20), k
    # absent class colours stay absent
    assert _colour_pixels(rgb, label_colour(7)).sum() == 0


def test_preview_of_reference_segmentation(tmp_path):
    pytest.importorskip("vtkmodules", reason="VTK (extra 'preview') is not installed")
    from totalseg.write.preview import label_colour, write_preview

    labels, label_map = _reference_labels()
    img = nib.load(FAST_ML)
    out = write_preview(labels, img.affine, label_map, tmp_path / "preview_total.png")
    rgb = _read_png(out)
    present = sorted(set(np.unique(labels).tolist()) - {0})
    assert len(present) == 40
    coloured = np.zeros(rgb.shape[:2], dtype=bool)
    for k in present:
        hits = _colour_pixels(rgb, label_colour(k))
        assert hits.sum() > 20, (k, label_map[k])
        coloured |= hits
    # nearly every non-background pixel is a shade of some class colour
    foreground = rgb.any(axis=-1)
    assert foreground.mean() > 0.3
    assert (coloured & foreground).sum() >= 0.95 * foreground.sum()
    # the same picture from the same labels stored in LPS order: orientation is undone
    from nibabel.orientations import axcodes2ornt, ornt_transform

    lps = img.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt("LPS")))
    out2 = write_preview(np.asanyarray(lps.dataobj), lps.affine, label_map, tmp_path / "lps.png")
    assert np.array_equal(_read_png(out2), rgb)
    # liver (patient's right) left of the spleen in the front view
    only = write_preview(labels, img.affine, {5: "liver", 1: "spleen"}, tmp_path / "two.png")
    two = _read_png(only)
    front = two[:, : two.shape[1] // 2]
    liver_cols = np.nonzero(_colour_pixels(front, label_colour(5)))[1]
    spleen_cols = np.nonzero(_colour_pixels(front, label_colour(1)))[1]
    assert liver_cols.mean() < spleen_cols.mean()


# ---------------------------------------------------------------------------- through the API/CLI
def test_cli_preview_radiomics_statistics_extra(use_home, tmp_path, capsys):
    pytest.importorskip("vtkmodules", reason="VTK (extra 'preview') is not installed")
    _radiomics_or_skip()
    from totalseg.cli.totalsegmentator import main

    out = tmp_path / "seg"
    rc = main(["-i", str(CT_SM), "-o", str(out), "--fast", "-p", "-r", "-s", "-sx", "-sa", "median",
               "-d", "cpu", "-q"])
    assert rc == 0, capsys.readouterr().err
    rgb = _read_png(out / "preview_total.png")
    assert rgb.any(axis=-1).any()
    stats = json.loads((out / "statistics.json").read_text())
    rad = json.loads((out / "statistics_radiomics.json").read_text())
    masks = sorted(p.name.split(".")[0] for p in out.glob("*.nii.gz"))
    assert list(rad) == masks and len(masks) == 117
    assert set(stats) == set(masks)
    assert all("incomplete" in v and "n_voxels" in v for v in stats.values())
    # radiomics only where pyradiomics can work on the mask; empty masks get the 107 zeros
    for name, feats in rad.items():
        n = np.count_nonzero(np.asanyarray(nib.load(out / f"{name}.nii.gz").dataobj))
        if n == 0:
            assert len(feats) == 107 and not any(feats.values())
        elif n > 20:
            assert len(feats) == 32 and feats["shape_VoxelVolume"] > 0


def test_cli_radiomics_needs_mask_files(use_home, tmp_path, capsys):
    from totalseg.cli.totalsegmentator import main

    target = tmp_path / "seg.nii.gz"
    assert main(["-i", str(CT_SM), "-o", str(target), "--fast", "--ml", "-r", "-d", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR: ") and "--radiomics" in err and "\n" not in err
    assert not target.exists()
