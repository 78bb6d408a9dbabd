"""Combined masks, contrast phase and modality against the official reference files."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import REF, ORACLE

from totalseg.assemble.combine import combine_masks
from totalseg.classify import modality as modality_mod
from totalseg.classify import phase as phase_mod
from totalseg.classify import resources
from totalseg.cli import combine_masks as combine_cli
from totalseg.cli import get_modality as modality_cli
from totalseg.cli import get_phase as phase_cli
from totalseg.errors import UserError

FAST_DIR = REF / "example_seg_fast"
FAST_ML = REF / "example_seg_fast.nii.gz"
CLASSIFIERS = REF / "classifiers"
CT_SM = REF / "example_ct_sm.nii.gz"

pytestmark = pytest.mark.skipif(not FAST_DIR.is_dir(), reason="../shared/data not available")


def _union(folder: Path, names) -> np.ndarray:
    out = None
    for name in names:
        data = np.asanyarray(nib.load(folder / f"{name}.nii.gz").dataobj) > 0
        out = data if out is None else out | data
    return out


# The reference class lists, written out independently of totalseg.assemble.combine.
_RIBS = [f"rib_{s}_{i}" for s in ("left", "right") for i in range(1, 13)]
_VERT = ["sacrum", "vertebrae_S1"] + [f"vertebrae_{p}{i}" for p, n in (("L", 5), ("T", 12), ("C", 7))
                                      for i in range(1, n + 1)]
_EXPECTED = {
    "lung": [n for n in (p.name[:-7] for p in FAST_DIR.glob("lung_*_lobe_*.nii.gz"))],
    "lung_left": ["lung_upper_lobe_left", "lung_lower_lobe_left"],
    "lung_right": ["lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"],
    "vertebrae": _VERT,
    "ribs": _RIBS,
    "vertebrae_ribs": _VERT + _RIBS,
    "heart": ["heart"],
    "pelvis": ["femur_left", "femur_right", "hip_left", "hip_right"],
}


@pytest.mark.parametrize("group", list(_EXPECTED))
def test_combine_folder_and_multilabel(group):
    assert len(_EXPECTED["lung"]) == 5 and len(_VERT) == 26
    want = _union(FAST_DIR, _EXPECTED[group])
    from_dir = combine_masks(FAST_DIR, group)
    got = np.asanyarray(from_dir.dataobj)
    assert got.dtype == np.uint8 and set(np.unique(got)) <= {0, 1}
    assert np.array_equal(got > 0, want)
    assert np.allclose(from_dir.affine, nib.load(FAST_DIR / "liver.nii.gz").affine)
    from_ml = np.asanyarray(combine_masks(FAST_ML, group).dataobj)
    assert np.array_equal(from_ml > 0, want)


def test_combine_nonempty_groups_are_really_tested():
    # the reference CT shows ribs, vertebrae and lower lungs: these unions must not be empty
    for group in ("ribs", "vertebrae", "lung_left", "lung_right"):
        assert _union(FAST_DIR, _EXPECTED[group]).sum() > 50, group


def test_combine_body_and_heart_chambers(tmp_path):
    body_dir = ORACLE / "body_files"
    want = _union(body_dir, ["body_trunc", "body_extremities"])
    assert want.any()
    assert np.array_equal(np.asanyarray(combine_masks(body_dir, "body").dataobj) > 0, want)
    # heartchambers_highres / v1 outputs: the four chambers and the myocardium
    liver = nib.load(FAST_DIR / "liver.nii.gz")
    names = ["heart_myocardium", "heart_atrium_left", "heart_ventricle_left", "heart_atrium_right",
             "heart_ventricle_right"]
    rng = np.random.default_rng(0)
    masks = {}
    for name in names:
        masks[name] = (rng.random(liver.shape) > 0.97).astype(np.uint8)
        nib.save(nib.Nifti1Image(masks[name], liver.affine), tmp_path / f"{name}.nii.gz")
    got = np.asanyarray(combine_masks(tmp_path, "heart").dataobj) > 0
    assert np.array_equal(got, np.logical_or.reduce(list(masks.values())))


def test_combine_cli(tmp_path, capsys):
    out = tmp_path / "sub" / "ribs.nii.gz"
    assert combine_cli.main(["-i", str(FAST_ML), "-o", str(out), "-m", "ribs", "-ml"]) == 0
    img = nib.load(out)
    assert np.array_equal(np.asanyarray(img.dataobj) > 0, _union(FAST_DIR, _RIBS))
    from totalseg.write.labelmap import load_multilabel_nifti
    assert load_multilabel_nifti(out)[1] == {1: "ribs"}
    assert [p.name for p in out.parent.iterdir()] == ["ribs.nii.gz"]  # no temporary left
    # a group whose classes the input does not have: one line, exit 1, nothing written
    bad = tmp_path / "body.nii.gz"
    assert combine_cli.main(["-i", str(FAST_DIR), "-o", str(bad), "-m", "body"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR: ") and "body_trunc" in err and "\n" not in err
    assert not bad.exists()
    assert combine_cli.main(["-i", str(tmp_path / "nope"), "-o", str(bad), "-m", "lung"]) == 1
    capsys.readouterr()
    # the official -t/--nora_tag tags the output in a local NORA: refused, as TotalSegmentator refuses it
    assert combine_cli.main(["-i", str(FAST_ML), "-o", str(bad), "-m", "lung", "-t", "project1"]) == 1
    assert "--nora_tag" in capsys.readouterr().err and not bad.exists()


# ------------------------------------------------------------------------------------------ phase
def test_phase_cli_reproduces_official(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(CLASSIFIERS, models)
    out = tmp_path / "phase.json"
    rc = phase_cli.main(["-i", str(CT_SM), "-s", str(REF / "example_seg_fast_median_stats.json"),
                         "-o", str(out), "-m", str(models), "-q"])
    assert rc == 0
    got = json.loads(out.read_text())
    want = json.loads((REF / "phase_prediction.json").read_text())
    assert got == want
    assert list(got) == list(want)
    assert out.read_text() == json.dumps(want, indent=4)


def test_phase_bins():
    assert phase_mod.phase_of(-3) == ("native", 1.0)
    assert phase_mod.phase_of(5) == ("native", 0.7)
    assert phase_mod.phase_of(19.99) == ("arterial_early", 0.7)
    assert phase_mod.phase_of(25) == ("arterial_early", 1.0)
    assert phase_mod.phase_of(55) == ("arterial_late", 0.7)
    assert phase_mod.phase_of(70) == ("portal_venous", 1.0)
    assert phase_mod.phase_of(95) == ("portal_venous", 0.7)
    assert phase_mod.phase_of(300) == ("portal_venous", 0.3)


def test_phase_features_respond_to_contrast():
    boosters = resources.load_boosters(CLASSIFIERS, resources.PHASE)
    stats = json.loads((REF / "example_seg_fast_median_stats.json").read_text())
    native = phase_mod.predict(phase_mod.features(stats), boosters)
    enhanced = json.loads(json.dumps(stats))
    for organ in ("aorta", "inferior_vena_cava", "portal_vein_and_splenic_vein", "liver"):
        enhanced[organ]["intensity"] += 150.0
    later = phase_mod.predict(phase_mod.features(enhanced), boosters)
    assert later["pi_time"] > native["pi_time"] + 10
    with pytest.raises(UserError):
        phase_mod.features({"liver": {"intensity": 1.0}})


def _official_style_pickle(path: Path) -> None:
    """A pickle laid out like the official one: {fold: XGBRegressor} with fitted boosters."""
    import xgboost as xgb
    from xgboost.sklearn import XGBRegressor

    models = {}
    for k in range(5):
        booster = xgb.Booster()
        booster.load_model(bytearray((CLASSIFIERS / f"{resources.PHASE}.json.{k}").read_bytes()))
        reg = XGBRegressor.__new__(XGBRegressor)  # no sklearn here: skip __init__, as unpickling does
        reg.__dict__.update(n_estimators=200, max_depth=4, learning_rate=0.05, _Booster=booster,
                            n_features_in_=20, meta=np.array(["a", "b"], dtype=object))
        models[k] = reg
    path.write_bytes(pickle.dumps(models, protocol=2))


def test_phase_from_official_pickle_and_import(tmp_path, monkeypatch):
    pkl = tmp_path / f"{resources.PHASE}.pkl"
    _official_style_pickle(pkl)
    stats = json.loads((REF / "example_seg_fast_median_stats.json").read_text())
    want = json.loads((REF / "phase_prediction.json").read_text())
    assert phase_mod.contrast_phase(stats_total=stats, model_path=pkl) == want
    # importing it into the home turns it into .json.<k> files that give the same answer
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    written = resources.import_classifiers(pkl, resources.PHASE)
    assert [p.name for p in written] == [f"{resources.PHASE}.json.{k}" for k in range(5)]
    assert phase_mod.contrast_phase(stats_total=stats) == want


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (shutil.copy, (str(CT_SM), str(marker)))

    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({0: Evil()}))
    with pytest.raises(UserError, match="not allowed"):
        resources.boosters_from_pickle(bad)
    assert not marker.exists()
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(pickle.dumps({0: [1, 2, 3]}))
    with pytest.raises(UserError):
        resources.load_boosters(junk, resources.PHASE)


def test_classifiers_fetched_into_home(tmp_path, monkeypatch):
    import totalseg.install.download as download

    home = tmp_path / "home"
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    pkl = tmp_path / "upstream.pkl"
    _official_style_pickle(pkl)
    urls = []

    def fake_download(url, dest, quiet=False, **kwargs):
        urls.append(url)
        name = url.rsplit("/", 1)[1]
        shutil.copy(pkl if name.endswith(".pkl") else CLASSIFIERS / name, dest)

    monkeypatch.setattr(download, "download_file", fake_download)
    boosters = resources.classifiers(resources.PHASE, quiet=True)
    assert len(boosters) == 5 and urls == [resources.RESOURCE_URL + f"{resources.PHASE}.pkl"]
    assert sorted(p.name for p in (home / "classifiers").iterdir()) == \
        [f"{resources.PHASE}.json.{k}" for k in range(5)]
    resources.classifiers(resources.PHASE)  # now from the home: no second download
    assert len(urls) == 1
    assert len(resources.classifiers(resources.MODALITY)) == 5
    assert len(urls) == 6

    def failing(url, dest, quiet=False, **kwargs):
        raise download.NetworkError("no connection to the server")

    monkeypatch.setattr(download, "download_file", failing)
    with pytest.raises(UserError, match="-m"):
        resources.classifiers(resources.MODALITY_NORMALIZED)
    assert not any(p.name.startswith(resources.MODALITY_NORMALIZED) for p in (home / "classifiers").iterdir())


# --------------------------------------------------------------------------------------- modality
def test_modality_cli(tmp_path):
    out = tmp_path / "modality.json"
    assert modality_cli.main(["-i", str(CT_SM), "-o", str(out), "-m", str(CLASSIFIERS), "-q"]) == 0
    result = json.loads(out.read_text())
    assert result["modality"] == "ct" and 0.5 <= result["probability"] <= 1.0


def test_modality_cli_reads_dicom(tmp_path):
    """A DICOM folder is read by the package's DICOM reader: the features are those of the series in HU, as from
    the same series saved as NIfTI."""
    from totalseg.load.dicom import load_dicom

    series = load_dicom(REF / "example_ct_dicom").volume
    assert series.data.min() == -1024  # HU, rescaled (stored values start at 0)
    nifti = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(series.data, series.affine), nifti)
    results = []
    for source in (REF / "example_ct_dicom", nifti):
        out = tmp_path / f"{source.name}.json"
        assert modality_cli.main(["-i", str(source), "-o", str(out), "-m", str(CLASSIFIERS), "-q"]) == 0
        results.append(json.loads(out.read_text()))
    assert results[0] == results[1] and results[0]["modality"] == "ct"
    assert modality_mod.image_features(series.data)[2] == -1024.0


def test_modality_normalized_uses_the_fast_total_mr_statistics(monkeypatch):
    """-n as the official: the fast total_mr run's median statistics of normalised intensities (border masks
    included), the 16 organs' values fed in the official order to the "normalized" classifiers."""
    import totalseg.run.api as api

    calls, fed = [], []
    organs = modality_mod.ROI_ORGANS
    stats = {organ: {"volume": 10.0, "intensity": 0.03 * organs.index(organ)} for organ in reversed(organs)}

    def fake_totalsegmentator(image, output, **kw):
        calls.append(kw)
        return None, stats

    monkeypatch.setattr(api, "totalsegmentator", fake_totalsegmentator)
    monkeypatch.setattr(modality_mod, "predict", lambda values, boosters: fed.append((values, len(boosters))))
    modality_mod.modality(nib.load(CT_SM), normalized=True, model_path=CLASSIFIERS, device="cpu")
    assert calls == [dict(ml=True, fast=True, statistics=True, task="total_mr",
                          statistics_exclude_masks_at_border=False, stats_aggregation="median",
                          statistics_normalized_intensities=True, quiet=True, device="cpu")]
    assert fed == [([0.03 * k for k in range(16)], 5)]


def test_modality_features_decide():
    boosters = resources.load_boosters(CLASSIFIERS, resources.MODALITY)
    mr = nib.load(REF / "example_mr_sm.nii.gz").get_fdata()
    feats = modality_mod.image_features(mr)
    assert feats[2] == mr.min() and feats[3] == mr.max()
    # the official ensemble calls this MR "ct" because of its negative minimum (MANIFEST);
    # the same intensities shifted to start at 0 are MR
    assert modality_mod.predict(feats, boosters)["modality"] == "ct"
    shifted = modality_mod.image_features(mr - mr.min())
    assert modality_mod.predict(shifted, boosters) == {"modality": "mr", "probability": 1.0}


def test_phase_runs_models_as_official(monkeypatch):
    """Without -s: fast total with median stats, border masks included; headneck only with a brain."""
    import totalseg.run.api as api

    stats = json.loads((REF / "example_seg_fast_median_stats.json").read_text())
    calls = []

    def fake_totalsegmentator(image, output, **kw):
        calls.append(kw)
        assert output is None and kw["statistics"] is True and kw["stats_aggregation"] == "median"
        assert kw["statistics_exclude_masks_at_border"] is False and kw["device"] == "cpu"
        if kw.get("task", "total") == "total":
            assert kw["fast"] is True
            return None, brain_stats
        assert kw["task"] == "headneck_bones_vessels"
        return None, {name: {"volume": 27.0, "intensity": 300.0} for name in phase_mod.NECK_VESSELS}

    monkeypatch.setattr(api, "totalsegmentator", fake_totalsegmentator)
    brain_stats = stats
    want = json.loads((REF / "phase_prediction.json").read_text())
    assert phase_mod.contrast_phase(CT_SM, model_path=CLASSIFIERS, device="cpu") == want
    assert len(calls) == 1  # no brain in view: the neck vessels are 0.0, no second model
    brain_stats = json.loads(json.dumps(stats))
    brain_stats["brain"] = {"volume": 5000.0, "intensity": 35.0}
    calls.clear()
    with_neck = phase_mod.contrast_phase(CT_SM, model_path=CLASSIFIERS, device="cpu")
    assert [c.get("task", "total") for c in calls] == ["total", "headneck_bones_vessels"]
    boosters = resources.load_boosters(CLASSIFIERS, resources.PHASE)
    neck = {name: {"intensity": 300.0} for name in phase_mod.NECK_VESSELS}
    assert with_neck == phase_mod.predict(phase_mod.features(brain_stats, neck), boosters)
    assert with_neck != phase_mod.predict(phase_mod.features(brain_stats), boosters)


def test_phase_debug_reaches_the_model_runs(monkeypatch, tmp_path):
    """--debug is the official's: passed to each TotalSegmentator run (which then names input and task on an
    error); without it the runs get debug=False."""
    import totalseg.run.api as api

    stats = json.loads((REF / "example_seg_fast_median_stats.json").read_text())
    seen = []

    def fake_totalsegmentator(image, output, **kw):
        seen.append(kw["debug"])
        return None, stats

    monkeypatch.setattr(api, "totalsegmentator", fake_totalsegmentator)
    for flags in (["--debug"], []):
        argv = ["-i", str(CT_SM), "-o", str(tmp_path / "phase.json"), "-m", str(CLASSIFIERS), "-d", "cpu", "-q"]
        assert phase_cli.main(argv + flags) == 0
    assert seen == [True, False]


def test_phase_of_a_dicom_zip_is_that_of_its_nifti(use_home, tmp_path):
    """totalseg_get_phase -i takes a DICOM series as a .zip (as the official): the models run on the series, and
    the phase is the one of the same CT given as NIfTI (the fake weights' statistics; real classifiers)."""
    import zipfile

    dicom = REF / "example_ct_dicom"
    if not dicom.is_dir():
        pytest.skip("example_ct_dicom is not available")
    import pydicom

    def z(path: Path) -> float:
        return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])

    by_z = sorted(dicom.iterdir(), key=z)
    archive = tmp_path / "ct.zip"
    with zipfile.ZipFile(archive, "w") as z:  # 24 neighbouring slices: the models' time is not what is tested
        for path in by_z[len(by_z) // 2 - 12:len(by_z) // 2 + 12]:
            z.write(path, f"series/{path.name}")
    nifti = tmp_path / "ct.nii.gz"
    from totalseg.load.dicom import load_dicom

    image = load_dicom(archive)
    nib.save(nib.Nifti1Image(image.volume.data, image.volume.affine, image.header), nifti)
    results = []
    for source in (archive, nifti):
        out = tmp_path / f"{source.name}.json"
        assert phase_cli.main(["-i", str(source), "-o", str(out), "-m", str(CLASSIFIERS), "-d", "cpu", "-q"]) == 0
        results.append(json.loads(out.read_text()))
    assert results[0] == results[1] and set(results[0]) >= {"pi_time", "phase", "probability"}
