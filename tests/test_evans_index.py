"""totalseg_evans_index: the measurement on masks of known geometry, the command's errors, and the official."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from conftest import REF
from totalseg.clinical import evans
from totalseg.cli import evans_index as cli
from totalseg.volume import Volume

OFFICIAL_PY = Path.home() / ".cache/totalseg/official-2.18.0-torch2.13.0-py3.11/bin/python"


def _ball(shape, centre, radii) -> np.ndarray:
    g = np.indices(shape).astype(float)
    c = np.asarray(centre, float)[:, None, None, None]
    r = np.asarray(radii, float)[:, None, None, None]
    return (((g - c) / r) ** 2).sum(0) <= 1


def _head(shape=(90, 100, 80), centre=(45, 50, 40), brain_r=30, horn_dx=8, horn_r=(5, 10, 7)):
    """A spherical brain in a skull shell with two frontal horns beside the midline, on a 1 mm grid."""
    brain = _ball(shape, centre, (brain_r,) * 3).astype(np.uint8)
    skull = (_ball(shape, centre, (brain_r + 8,) * 3) & ~_ball(shape, centre, (brain_r + 3,) * 3)).astype(np.uint8)
    vent = np.zeros(shape, np.uint8)
    for label, side in ((1, -1), (6, 1)):
        vent[_ball(shape, (centre[0] + side * horn_dx, centre[1] + 12, centre[2]), horn_r)] = label
    vent[_ball(shape, (centre[0], centre[1] - 8, centre[2] + 3), (4, 6, 4)) & (vent == 0)] = 3  # a body part
    return brain, skull, vent


def test_help_without_torch():
    code = ("import sys; from totalseg.cli.evans_index import main\n"
            "try: main(['--help'])\nexcept SystemExit: pass\nprint('TORCH', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for flag in ("--ct_img", "--output_file", "--preview_file", "--verbose"):
        assert flag in out
    assert "TORCH False" in out


def test_widest_row_ties_and_extent():
    mask = np.zeros((20, 6, 5), bool)
    mask[3:9, 4, 2] = True    # width 5 at z=2
    mask[10:16, 1, 3] = True  # width 5 at z=3 (tie: the lower z wins)
    mask[2, 2, 4] = mask[7, 2, 4] = True  # width 5 with a gap (first to last voxel) at z=4
    w = evans.widest_row(mask)
    assert (w.length, w.start, w.end) == (5, (3, 4, 2), (8, 4, 2))
    mask[0, 2, 4] = True      # now z=4 holds the widest row: 0..7
    w = evans.widest_row(mask)
    assert (w.length, w.start, w.end) == (7, (0, 2, 4), (7, 2, 4))
    assert evans.widest_row(np.zeros((4, 4, 4), bool)) is None


@pytest.mark.parametrize("horn_dx, horn_rx", [(8, 5), (12, 4)])
def test_measure_known_geometry(horn_dx, horn_rx):
    brain_r = 30
    brain, skull, vent = _head(brain_r=brain_r, horn_dx=horn_dx, horn_r=(horn_rx, 10, 7))
    found = evans.measure(brain, skull, vent, 1.0)
    # Horns: from the left one's left edge to the right one's right edge; the brain, grown by 2 voxels
    # (city-block), spans 2 * (r + 2) on the centre row.
    assert found["horn"].length == 2 * (horn_dx + horn_rx)
    assert found["skull_width"].length == 2 * (brain_r + 2)
    assert found["evans_index"] == pytest.approx((horn_dx + horn_rx) / (brain_r + 2))
    cavity = ndimage.distance_transform_cdt(1 - brain, metric="taxicab") <= 2
    assert found["brain_volume_ml"] == pytest.approx((cavity & (skull == 0)).sum() / 1000)
    assert found["ventricle_volume_ml"] == pytest.approx((vent > 0).sum() / 1000)
    assert found["ventricle_brain_ratio"] == pytest.approx(found["ventricle_volume_ml"] / found["brain_volume_ml"])


def test_measure_skull_stops_the_cavity_and_small_horn_blobs_go():
    brain, skull, vent = _head(brain_r=30)
    skull |= (_ball(brain.shape, (45, 50, 40), (32,) * 3) & ~_ball(brain.shape, (45, 50, 40), (31,) * 3))
    vent[45, 90, 40] = 1  # a lone frontal-horn voxel far out: noise, not the widest row
    found = evans.measure(brain, skull, vent, 1.0)
    # Grown by 2 the brain would reach radius 32; the shell (31, 32] stops it at 31.
    assert found["skull_width"].length == 2 * 31
    assert found["horn"].length == 2 * (8 + 5)


def test_empty_segmentation_gives_nulls_and_a_picture():
    brain, skull, vent = _head()
    vent[np.isin(vent, evans.FRONTAL_HORNS)] = 0  # no frontal horn: not measurable
    vol = lambda a: Volume(a, np.eye(4))  # noqa: E731
    values, found = evans.evans_index(vol(brain * 40), vol(brain), vol(skull), vol(vent))
    assert values == evans.EMPTY and found is None
    assert evans.picture(values, None)[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_input_is_one_line(tmp_path, capsys):
    rc = cli.main(["-i", str(tmp_path / "nope.nii.gz"), "-o", str(tmp_path / "e.json"), "-p", str(tmp_path / "e.png")])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and errors[0].startswith("ERROR: the input file does not exist")
    assert not (tmp_path / "e.json").exists()


def test_without_antspyx_says_how_to_install(tmp_path):
    code = ("import sys; sys.modules['ants'] = None\nfrom totalseg.cli.evans_index import main\n"
            f"sys.exit(main(['-i', {str(REF / 'example_ct_sm.nii.gz')!r}, '-o', {str(tmp_path / 'e.json')!r}, "
            f"'-p', {str(tmp_path / 'e.png')!r}]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.strip() == f"ERROR: {evans.ANTSPYX_HINT}"


def test_missing_model_is_one_line(use_home, tmp_path, capsys):
    pytest.importorskip("ants")
    # The random-weights home has the total models but not ventricle_parts (552).
    rc = cli.main(["-i", str(REF / "example_ct_sm.nii.gz"), "-o", str(tmp_path / "e.json"),
                   "-p", str(tmp_path / "e.png")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR")]
    assert rc == 1 and len(err) == 1 and "552" in err[0]
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "e.png").exists()


def _synthetic_case(folder: Path, spacing: float) -> list[Path]:
    """A head on an LPS-like grid of ``spacing`` mm from the shipped atlas: CT, brain/skull (total ids 90/91) by thresholds,
    and frontal horns (1, 6) and ventricle bodies (3, 8) as ellipsoids inside the brain."""
    atlas = nib.load(Path(evans.__file__).parent / "resources" / "ct_brain_atlas_1mm.nii.gz")
    ct = ndimage.zoom(atlas.get_fdata(), 1 / spacing, order=1) if spacing != 1 else atlas.get_fdata()
    skull = ct > 100
    labels, _ = ndimage.label(ndimage.binary_opening((ct > 15) & (ct < 80) & ~skull))
    brain = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    centre = np.array(ndimage.center_of_mass(brain))
    vent = np.zeros(ct.shape, np.uint8)
    for label, offset, radii in ((1, (-9, 18, 8), (6, 14, 8)), (6, (9, 18, 8), (6, 14, 8)),
                                 (3, (-10, -8, 12), (5, 14, 6)), (8, (10, -8, 12), (5, 14, 6))):
        part = _ball(ct.shape, centre + np.array(offset) / spacing, np.array(radii) / spacing)
        vent[part & brain & (vent == 0)] = label
    seg = np.where(skull, 91, np.where(brain, 90, 0)).astype(np.uint8)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = np.array(ct.shape[:2]) - 1
    affine = atlas.affine @ np.diag([spacing, spacing, spacing, 1.0]) @ flip
    paths = [folder / n for n in ("ct.nii.gz", "brain_skull.nii.gz", "ventricles.nii.gz")]
    for path, data in zip(paths, (np.round(ct).astype(np.int16), seg, vent)):
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data[::-1, ::-1]), affine), path)
    return paths


OFFICIAL_SCRIPT = """
import json, sys
import ants.config
ants.config.set_ants_deterministic(True, 123)
import nibabel as nib
import totalsegmentator.bin.totalseg_evans_index as ev
from totalsegmentator.nifti_ext_header import add_label_map_to_nifti
ct, brain_skull, vent, png = sys.argv[1:5]
bs = nib.load(brain_skull)
bs = add_label_map_to_nifti(nib.Nifti1Image(bs.get_fdata().astype('uint8'), bs.affine), {90: 'brain', 91: 'skull'})
def models(ct_img, verbose=False):
    yield bs
    yield nib.load(vent)
ev.run_models_shell = models
from pathlib import Path
for r in ev.evans_index(Path(ct), 'niigz'):
    if r['progress'] == 100:
        open(png, 'wb').write(r['report_png'])
        print('RESULT ' + json.dumps({k: None if v is None else float(v) for k, v in r['report_json'].items()}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("spacing", [1.3, 1.0])  # resampled (and cast to uint8) before registration, or not
def test_same_values_as_official_functions(tmp_path, spacing):
    """The official measurement (after its model step) and ours on the same masks, with ANTs' seed fixed and
    one thread in both (unseeded, two official runs already differ, e.g. brain volume 1339.8 vs 1339.7 ml)."""
    pytest.importorskip("ants")
    if not OFFICIAL_PY.exists() or subprocess.run([str(OFFICIAL_PY), "-c", "import ants, blosc"]).returncode:
        pytest.skip("the official venv with antspyx is not available")
    ct, brain_skull, vent = _synthetic_case(tmp_path, spacing)
    official = subprocess.run([str(OFFICIAL_PY), "-c", OFFICIAL_SCRIPT, str(ct), str(brain_skull), str(vent),
                               str(tmp_path / "official.png")],
                              capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    expected = json.loads(official.split("RESULT ", 1)[1])
    code = ("import ants.config, sys\nants.config.set_ants_deterministic(True, 123)\n"
            "from totalseg.clinical import evans\nimport nibabel as nib, numpy as np, json\n"
            "from totalseg.volume import Volume\n"
            "ct, bs, v = (nib.load(p) for p in sys.argv[1:4]); lab = np.asanyarray(bs.dataobj)\n"
            "vol = lambda a, i: Volume(np.asarray(a), i.affine)\n"
            "values, found = evans.evans_index(vol(ct.dataobj, ct), vol((lab == 90).astype(np.uint8), bs),"
            " vol((lab == 91).astype(np.uint8), bs), vol(v.dataobj, v))\nprint('RESULT ' + json.dumps(values))\n"
            "open(sys.argv[4], 'wb').write(evans.picture(values, found))")
    ours = subprocess.run([sys.executable, "-c", code, str(ct), str(brain_skull), str(vent), str(tmp_path / "ours.png")],
                          capture_output=True, text=True, check=True).stdout
    assert json.loads(ours.split("RESULT ", 1)[1]) == expected
    assert expected["evans_index"] is not None
    from matplotlib.image import imread  # the preview: pixel for pixel the official one

    assert np.array_equal(imread(tmp_path / "ours.png"), imread(tmp_path / "official.png"))
