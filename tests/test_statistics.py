"""statistics.json: compare with the official outputs, plus unit checks of the semantics."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import ORACLE, REF
from totalseg.write.statistics import compute_statistics, write_statistics


# (folder with per-class masks + statistics.json, input image, exclude_border, exact volume)
CASES = {
    "fast_files_stats": (ORACLE / "fast_files_stats", REF / "example_ct_sm.nii.gz", True, False),
    "fast_stats_big": (ORACLE / "fast_stats_big", REF / "example_ct.nii.gz", True, False),
    "fast_stats_sii": (ORACLE / "fast_stats_sii", REF / "example_ct_sm.nii.gz", False, False),
    "example_seg_fast": (REF / "example_seg_fast", REF / "example_ct_sm.nii.gz", False, True),
}


def _total_map() -> dict[int, str]:
    raw = json.loads((REF / "resources" / "class_map.json").read_text())["total"]
    return {int(k): v for k, v in raw.items()}


def _label_image(folder: Path, class_map: dict[int, str]) -> np.ndarray:
    labels = None
    for k, name in class_map.items():
        mask = np.asanyarray(nib.load(folder / f"{name}.nii.gz").dataobj)
        if labels is None:
            labels = np.zeros(mask.shape, dtype=np.uint8)
        labels[mask > 0] = k
    return labels


@pytest.mark.parametrize("case", list(CASES))
def test_matches_official(case):
    folder, image_path, exclude_border, exact_volume = CASES[case]
    if not (folder / "statistics.json").exists() or not image_path.exists():
        pytest.skip(f"reference data for {case} not available")
    class_map = _total_map()
    expected = json.loads((folder / "statistics.json").read_text())
    ct_img = nib.load(image_path)
    labels = _label_image(folder, class_map)
    got = compute_statistics(labels, ct_img.get_fdata(), ct_img.header.get_zooms(), class_map,
                             exclude_border=exclude_border)
    assert list(got) == list(expected)
    nonzero = 0
    for name, ref in expected.items():
        mine = got[name]
        assert list(mine) == list(ref) == ["volume", "intensity"], name
        if exact_volume:
            assert mine["volume"] == ref["volume"], name
        else:
            assert mine["volume"] == pytest.approx(ref["volume"], rel=1e-6, abs=1e-9), name
        assert mine["intensity"] == pytest.approx(ref["intensity"], rel=1e-3, abs=1e-3), name
        nonzero += ref["volume"] != 0
    assert nonzero > 0
    # the JSON text is what users parse: same structure after a dump/load cycle
    assert json.loads(json.dumps(got)) == got


def _brute_force(labels, image, zooms, class_map, exclude_border, aggregation, extra):
    """Straightforward per-class masks, following the documented semantics literally."""
    ct = image.astype(np.int16)
    vox = zooms[0] * zooms[1] * zooms[2]
    out = {}
    for k, name in sorted(class_map.items()):
        m = labels == k
        border = any(
            np.take(m, range(0, 3), axis=a).any() or np.take(m, range(m.shape[a] - 3, m.shape[a]), axis=a).any()
            for a in range(3)
        )
        if (border and exclude_border) or not m.any():
            e = {"volume": 0.0, "intensity": 0.0}
            if extra:
                e.update(n_voxels=0, intensity_std=0.0, intensity_min=0.0, intensity_max=0.0,
                         centroid_vox=None, bbox_vox=None, incomplete=bool(border))
            out[name] = e
            continue
        e = {"volume": float(m.sum() * vox)}
        if aggregation == "mean":
            e["intensity"] = float(np.average(ct, weights=m.astype(np.uint8)).round(5))
        else:
            e["intensity"] = float(np.median(ct[m]).round(5))
        if extra:
            idx = np.argwhere(m)
            e.update(n_voxels=int(m.sum()), intensity_std=float(np.std(ct[m]).round(5)),
                     intensity_min=float(ct[m].min()), intensity_max=float(ct[m].max()),
                     centroid_vox=[float(c) for c in idx.mean(axis=0).round(2)],
                     bbox_vox=[[int(a), int(b)] for a, b in zip(idx.min(0), idx.max(0))],
                     incomplete=bool(border))
        out[name] = e
    return out


@pytest.mark.parametrize("aggregation", ["mean", "median"])
@pytest.mark.parametrize("exclude_border", [True, False])
@pytest.mark.parametrize("extra", [False, True])
@pytest.mark.parametrize("bincount", [False, True])
def test_equals_brute_force(aggregation, exclude_border, extra, bincount, monkeypatch):
    import totalseg.write.statistics as module

    # bincount=True: force the whole-volume bincount path for means (normally only for speckle).
    monkeypatch.setattr(module, "_BINCOUNT_FACTOR", 0 if bincount else 10**9)
    rng = np.random.default_rng(0)
    shape = (20, 17, 15)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[5:9, 4:10, 6:9] = 1          # interior
    labels[0:4, 5:7, 5:7] = 2           # touches the first x slices
    labels[8:12, 8:12, 12:15] = 3       # touches the last z slices
    labels[10:15, 3:5, 3:12] = 4        # interior, index 3 is just inside
    labels[15, 13, 11] = 7              # single voxel, not in the map
    labels[16, 4, 4] = 9                # single voxel
    image = rng.normal(0, 300, size=shape)  # float: truncation to int16 matters
    class_map = {1: "a", 2: "b", 3: "c", 4: "d", 5: "empty", 9: "dot"}
    zooms = np.array([0.977, 0.977, 2.0], dtype=np.float32)
    got = compute_statistics(labels, image, zooms, class_map, exclude_border=exclude_border,
                             aggregation=aggregation, extra=extra)
    want = _brute_force(labels, image, zooms, class_map, exclude_border, aggregation, extra)
    assert got == want
    assert list(got) == list(want)
    for name in got:
        assert list(got[name]) == list(want[name])
    assert (got["b"]["volume"] == 0.0) == exclude_border


def test_class_order_and_label_types():
    labels = np.zeros((10, 10, 10), dtype=np.int32)
    labels[4:6, 4:6, 4:6] = 2
    labels[0, 0, 0] = -1
    image = np.full(labels.shape, 7, dtype=np.int16)
    stats = compute_statistics(labels, image, (1.0, 2.0, 3.0), {2: "two", 1: "one"})
    assert list(stats) == ["one", "two"]
    assert stats["two"] == {"volume": 48.0, "intensity": 7.0}
    as_float = compute_statistics(labels.astype(np.float64), image, (1.0, 2.0, 3.0), {2: "two", 1: "one"})
    assert as_float == stats
    with pytest.raises(ValueError):
        compute_statistics(labels, image, (1, 1, 1), {1: "one"}, aggregation="max")


def test_write_statistics(tmp_path):
    stats = {"liver": {"volume": 27.0, "intensity": -3.5}, "x": {"volume": 0.0, "intensity": 0.0,
                                                                 "centroid_vox": None}}
    path = tmp_path / "statistics.json"
    path.write_text("old")
    write_statistics(stats, path)
    assert path.read_text() == json.dumps(stats, indent=4)
    assert [p.name for p in tmp_path.iterdir()] == ["statistics.json"]


@pytest.mark.parametrize("aggregation", ["mean", "median"])
def test_normalized_intensities_are_the_official_arithmetic(aggregation):
    """normalized=True: the int16 image min-max normalised, then per class the official numpy calls on the whole
    image (np.average with the mask as weights, np.median of the masked values), equal to the last bit."""
    ct = nib.load(REF / "example_ct_sm.nii.gz")
    seg = np.asanyarray(nib.load(REF / "example_seg.nii.gz").dataobj).astype(np.uint8)
    classes = {int(k): f"c{k}" for k in np.unique(seg) if k}
    stats = compute_statistics(seg, ct.get_fdata(), ct.header.get_zooms(), classes, exclude_border=False,
                               aggregation=aggregation, normalized=True)
    img = ct.get_fdata().astype(np.int16)
    norm = (img - img.min()) / (img.max() - img.min())
    for k, name in classes.items():
        mask = seg == k
        want = np.average(norm, weights=mask.astype(np.uint8)) if aggregation == "mean" else np.median(norm[mask])
        assert stats[name]["intensity"] == float(np.round(want, 5)), name
    assert len(classes) > 20
