"""totalseg_setup_manually, crop_to_body and totalseg_get_body_stats: real data, and the official 2.18.0
functions and commands run live in their venv (made or reused as in test_official_live.py; those parts skip
where it cannot be made)."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import REF, _copy_home
# The official 2.18.0 venv, made or reused as for the live segmentation test (skips without a registry).
from test_official_live import official_tool  # noqa: F401

CT = REF / "example_ct_sm.nii.gz"
LPS_CT = REF / "pulmonary_report" / "models" / "ct_cropped.nii.gz"  # 1.5 mm, LPS
LICENCE = "aca_ABCDEFGHIJ1234"
COMMANDS = ["setup_manually", "crop_to_body", "get_body_stats"]


def _official_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def _official_python(tool: Path, code: str, cwd: Path, timeout: int = 300, **env: str) -> str:
    """Run ``code`` with the Python of the official tool's venv."""
    python = tool.parent / "python"
    # Run outside the checkout: its totalsegmentator compatibility package would shadow the official one.
    proc = subprocess.run([str(python), "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd,
                          env=_official_env(**env), timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def _official_command(tool: Path, name: str, args: list[str], home: Path, cwd: Path, timeout: int = 900):
    return subprocess.run([str(tool.parent / name), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=_official_env(TOTALSEG_HOME_DIR=str(home)))


def _one_error_line(code: int, err: str, needle: str) -> None:
    assert code == 1
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("ERROR: ") and sum("ERROR" in line for line in lines) == 1, err
    assert needle.lower() in lines[-1].lower(), err


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(h))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    return h


# --------------------------------------------------- the official functions, run once in their venv
SLICE_CASES = {"whole": np.s_[:, :, :], "cut": np.s_[25:97, :, :]}  # cut: the fat touches the image border


def _lobe_stats() -> dict:
    stats = json.loads((REF / "example_seg_fast" / "statistics.json").read_text())
    stats["lung_upper_lobe_right"] = {"volume": 1000.0, "intensity": -850.0}  # two filled right lobes
    return stats


def _slice_inputs(folder: Path) -> None:
    """Real CT, the real total and tissue segmentations, and a trunk (CT above -500 HU, a stand-in for the
    body model), whole and cut to x 25..96, as labelled NIfTI files the official function reads."""
    from totalseg.registry import get_task
    from totalseg.write.nifti import save_multilabel

    ct = nib.load(CT)
    arrays = {"ct": ct.get_fdata(), "seg": _labels(REF / "example_seg_fast.nii.gz"), "tissue": _tissue_labels()}
    arrays["body"] = (arrays["ct"] > -500).astype(np.uint8)
    for case, box in SLICE_CASES.items():
        nib.save(nib.Nifti1Image(arrays["ct"][box].astype(np.int16), ct.affine), folder / f"{case}_ct.nii.gz")
        for key, task in {"seg": "total", "tissue": "tissue_types", "body": "body"}.items():
            save_multilabel(arrays[key][box], ct.affine, ct.header, get_task(task).classes,
                            folder / f"{case}_{key}.nii.gz")


@pytest.fixture(scope="module")
def official(official_tool, tmp_path_factory) -> dict:  # noqa: F811
    """One run of the official 2.18.0 functions (one interpreter start): setup_totalseg's config.json,
    crop_to_mask of the CT to the liver, the tissue slices and the combined lungs."""
    from totalseg.classify.body_stats import TISSUES, VERTEBRAE

    d = tmp_path_factory.mktemp("official")
    nib.save(nib.Nifti1Image(_liver_mask(), nib.load(CT).affine), d / "liver.nii.gz")
    _slice_inputs(d)
    out = _official_python(official_tool, f"""
        import json, sys, nibabel as nib, numpy as np
        sys.argv = ["x"]
        from totalsegmentator.config import setup_totalseg
        setup_totalseg("totalseg_AB12CD34")  # first: importing the rest must not have made a config already
        from totalsegmentator.cropping import crop_to_mask
        from totalsegmentator.bin.totalseg_get_body_stats import combine_lung_lobes, get_tissue_types_slices
        cropped, _ = crop_to_mask(nib.load("{CT}"), nib.load("{d}/liver.nii.gz"), addon=[3, 3, 3], dtype=np.int32)
        nib.save(cropped, "{d}/cropped.nii.gz")
        slices = {{}}
        for case in {list(SLICE_CASES)}:
            img = lambda key: nib.load(f"{d}/{{case}}_{{key}}.nii.gz")
            s = get_tissue_types_slices(img("ct"), img("seg"), img("tissue"), img("body"), {list(VERTEBRAE)},
                                        {list(TISSUES)})
            slices[case] = {{k: [float(v["volume"]), float(v["intensity"])] for k, v in s.items()}}
        lungs = combine_lung_lobes(json.loads({json.dumps(json.dumps(_lobe_stats()))}))
        lungs = {{k: lungs[k] for k in ("lung_left", "lung_right")}}
        print("RESULT" + json.dumps({{"slices": slices, "lungs": lungs}}))
    """, d, TOTALSEG_HOME_DIR=str(d / "home"))
    return {"dir": d, **json.loads(out.split("RESULT", 1)[1])}


# ------------------------------------------------------------------------------------------- --help
@pytest.mark.parametrize("command", COMMANDS)
def test_help_does_not_import_torch(command):
    code = (f"import sys\nfrom totalseg.cli import {command} as c\ntry:\n    c.main(['--help'])\n"
            "except SystemExit as e:\n    assert e.code == 0\n"
            "heavy = [m for m in ('torch', 'xgboost', 'nibabel') if m in sys.modules]\n"
            "assert not heavy, heavy\nprint('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
    assert "usage:" in proc.stdout


# ----------------------------------------------------------------------------- totalseg_setup_manually
def test_setup_manually_writes_what_the_official_writes(official, home, capsys):
    from totalseg.cli.setup_manually import main

    assert main(["-id", "totalseg_AB12CD34"]) == 0
    assert (home / "config.json").read_bytes() == (official["dir"] / "home" / "config.json").read_bytes()


def test_setup_manually_keeps_an_existing_id_and_other_keys(home, capsys):
    from totalseg import config
    from totalseg.cli.setup_manually import main

    config.update_config({"license_number": LICENCE})  # e.g. totalseg_set_license ran first
    assert main(["-id", "totalseg_AAAAAAAA"]) == 0
    assert main(["-id", "totalseg_BBBBBBBB"]) == 0
    stored = json.loads((home / "config.json").read_text())
    assert stored["totalseg_id"] == "totalseg_AAAAAAAA" and stored["license_number"] == LICENCE
    assert "left unchanged" in capsys.readouterr().out


@pytest.mark.parametrize("bad, needle", [("totalsegAB12CD345", "must start"), ("totalseg_AB12", "17")])
def test_setup_manually_refuses_a_malformed_id(bad, needle, home, capsys):
    from totalseg.cli.setup_manually import main

    _one_error_line(main(["-id", bad]), capsys.readouterr().err, needle)
    assert not (home / "config.json").exists()


# ---------------------------------------------------------------------------------------- crop_to_body
def _liver_mask() -> np.ndarray:
    return (np.asanyarray(nib.load(REF / "example_seg.nii.gz").dataobj) == 5).astype(np.uint8)


@pytest.mark.parametrize("image_path", [CT, LPS_CT], ids=["3mm_RAS", "1.5mm_LPS"])
def test_crop_holds_the_mask_with_the_margin_and_moves_the_affine(image_path):
    from totalseg.cli.crop_to_body import crop_image

    image = nib.load(image_path)
    data = np.asanyarray(image.dataobj)
    mask = np.zeros(image.shape, np.uint8)
    mask[30:60, 20:50, 5:15] = 1  # well inside: the margin is never clipped
    out = crop_image(image, mask)
    zooms = np.array(image.header.get_zooms()[:3])
    margin = (3 / zooms).astype(int)  # voxels of 3 mm, rounded down
    lo = np.array([30, 20, 5]) - margin
    assert out.shape == tuple(np.array([30, 30, 10]) + 2 * margin)
    assert out.get_data_dtype() == np.int32
    assert np.array_equal(np.asanyarray(out.dataobj), data[lo[0]:, lo[1]:, lo[2]:][:out.shape[0], :out.shape[1],
                                                                                  :out.shape[2]])
    # The first voxel of the crop lies where voxel `lo` lay: same world position, same axes.
    assert np.allclose(out.affine[:3, :3], image.affine[:3, :3])
    assert np.allclose(out.affine[:3, 3], nib.affines.apply_affine(image.affine, lo))


def test_crop_equals_the_official_crop_to_mask(official):
    from totalseg.cli.crop_to_body import crop_image

    ours = crop_image(nib.load(CT), _liver_mask())  # the liver touches the image border: margins clipped there
    theirs = nib.load(official["dir"] / "cropped.nii.gz")
    assert ours.shape == theirs.shape and ours.shape != nib.load(CT).shape
    assert np.array_equal(ours.affine, theirs.affine)
    assert np.array_equal(np.asanyarray(ours.dataobj), np.asanyarray(theirs.dataobj))


@pytest.fixture(scope="module")
def our_crop(tmp_path_factory) -> Path:
    """Our crop_to_body -t on the LPS 1.5 mm CT with the random-weights home (whose trunk does not fill it)."""
    from totalseg import totalsegmentator
    from totalseg.cli.crop_to_body import main

    d = tmp_path_factory.mktemp("crop")
    home = _copy_home(d / "home")
    mp = pytest.MonkeyPatch()
    mp.setenv("TOTALSEG_HOME_DIR", str(home))
    try:
        assert main(["-i", str(LPS_CT), "-t", "-d", "cpu", "-q", "-o", str(d / "ours.nii.gz")]) == 0
        trunk = totalsegmentator(LPS_CT, None, task="body", fast=True, ml=True, quiet=True, device="cpu")
    finally:
        mp.undo()
    nib.save(trunk, d / "body.nii.gz")
    return d


def test_crop_to_body_holds_the_trunk_with_a_3mm_margin(our_crop):
    image, out = nib.load(LPS_CT), nib.load(our_crop / "ours.nii.gz")
    trunk = _labels(our_crop / "body.nii.gz") == 1
    hits = [np.flatnonzero(trunk.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    lo = np.array([max(h[0] - 2, 0) for h in hits])  # 3 mm at 1.5 mm = 2 voxels, clipped at the image edge
    hi = np.array([min(h[-1] + 3, n) for h, n in zip(hits, image.shape)])
    assert tuple(hi - lo) == out.shape != image.shape
    assert out.get_data_dtype() == np.int32
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    assert np.array_equal(np.asanyarray(out.dataobj), np.asanyarray(image.dataobj)[box])
    assert np.allclose(out.affine[:3, 3], nib.affines.apply_affine(image.affine, lo))
    assert np.allclose(out.affine[:3, :3], image.affine[:3, :3])


def test_crop_to_body_equals_the_official_command(official_tool, our_crop, tmp_path):  # noqa: F811
    official_home = _copy_home(tmp_path / "official_home")
    args = ["-i", str(LPS_CT), "-t", "-d", "cpu", "-q", "-o", str(tmp_path / "official.nii.gz")]
    proc = _official_command(official_tool, "crop_to_body", args, official_home, tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ours, theirs = nib.load(our_crop / "ours.nii.gz"), nib.load(tmp_path / "official.nii.gz")
    assert ours.shape == theirs.shape
    assert ours.header.binaryblock == theirs.header.binaryblock  # dtype, dims, qform/sform, everything
    assert np.array_equal(ours.affine, theirs.affine)
    assert np.array_equal(np.asanyarray(ours.dataobj), np.asanyarray(theirs.dataobj))


def test_crop_to_body_refuses_a_missing_input(tmp_path, capsys):
    from totalseg.cli.crop_to_body import main

    _one_error_line(main(["-i", str(tmp_path / "nope.nii.gz"), "-o", str(tmp_path / "o.nii.gz")]),
                    capsys.readouterr().err, "does not exist")
    assert not (tmp_path / "o.nii.gz").exists()


# ------------------------------------------------------------------------------ totalseg_get_body_stats
def _labels(image) -> np.ndarray:
    image = nib.load(image) if isinstance(image, (str, Path)) else image
    return np.asanyarray(image.dataobj)


def _tissue_labels() -> np.ndarray:
    """The reference tissue_types masks of example_ct_sm as one label array (1 subcutaneous, 2 torso, 3 muscle)."""
    out = np.zeros(nib.load(CT).shape, np.uint8)
    for i, name in enumerate(("subcutaneous_fat", "torso_fat", "skeletal_muscle"), start=1):
        out[_labels(REF / "example_seg_tissue_types" / f"{name}.nii.gz") > 0] = i
    return out


def test_tissue_slices_equal_the_official_function(official):
    from totalseg.classify.body_stats import tissue_slices
    from totalseg.registry import get_task

    ids = lambda task: {n: i for i, n in get_task(task).classes.items()}  # noqa: E731
    for case in SLICE_CASES:
        img = lambda key: nib.load(official["dir"] / f"{case}_{key}.nii.gz")  # noqa: E731
        ours = tissue_slices(img("ct").get_fdata(), img("ct").header.get_zooms(), _labels(img("seg")), ids("total"),
                             _labels(img("tissue")), ids("tissue_types"), _labels(img("body")) == 1)
        assert {k: [float(v["volume"]), float(v["intensity"])] for k, v in ours.items()} == official["slices"][case]
    whole, cut = official["slices"]["whole"], official["slices"]["cut"]
    filled = [k for k, v in whole.items() if v[0] > 0]
    assert len(filled) >= 6  # T11-L2 are in view: the comparison is not between zeros
    assert any(cut[k][0] == 0 for k in filled)  # the border rule was exercised


def test_lung_lobes_combine_as_the_official(official):
    from totalseg.classify.body_stats import combine_lung_lobes

    ours = combine_lung_lobes(_lobe_stats())
    assert {k: ours[k] for k in ("lung_left", "lung_right")} == official["lungs"]
    assert ours["lung_left"]["volume"] > 0 and ours["lung_right"]["volume"] > 1000.0


def _make_models(folder: Path, seed: int = 0) -> None:
    """Small xgboost models in the official body-stats layout and format (the real ones are not in this
    offline environment): five folds per target, trained on random features; MR gets copies of CT's."""
    import shutil

    import xgboost as xgb

    from totalseg.classify.body_stats import TARGETS, fold_path, model_base

    folder.mkdir(parents=True, exist_ok=True)
    for target in TARGETS:
        for k in range(5):
            rng = np.random.default_rng([seed, k, len(target)])
            X = rng.uniform(-1000, 2e5, size=(100, 258))
            X[:, ::3] = rng.uniform(-200, 300, size=(100, 86))
            y = X[:, :20].mean(axis=1) / 1000 + rng.normal(60, 10, 100)
            model = (xgb.XGBClassifier if target == "sex" else xgb.XGBRegressor)(n_estimators=6, max_depth=3,
                                                                                  n_jobs=1)
            model.fit(X, (y > np.median(y)).astype(int) if target == "sex" else y)
            path = fold_path(model_base(folder, target, "ct"), k)
            model.save_model(path.with_suffix(".ubj"))  # the format follows the suffix: binary, as upstream
            path.with_suffix(".ubj").rename(path)
            shutil.copy(path, fold_path(model_base(folder, target, "mr"), k))


@pytest.fixture(scope="module")
def made_models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("body_stats_models") / "body_stats_models_2026_03_24"
    _make_models(folder)
    return folder


def _zip_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"body_stats_models_2026_03_24/{f.name}")
    return buf.getvalue()


def test_models_are_fetched_from_the_release_once(made_models, home, tmp_path, monkeypatch, capsys):
    from weights_server import Route, start_server, stop_server

    from totalseg.classify import body_stats as bs

    server, httpd = start_server()
    try:
        path = "/v2.5.0-weights/body_stats_models_2026_03_24.zip"
        server.routes[path] = Route(_zip_folder(made_models))
        monkeypatch.setenv("TOTALSEG_WEIGHTS_URL", server.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
        bs.ensure_models(None, True, lambda m: None)
        bs.ensure_models(None, True, lambda m: None)
        assert len(server.requests_for(path)) == 1
    finally:
        stop_server(server, httpd)
    folder = home / "nnunet" / "results" / "body_stats_models_2026_03_24"
    assert sorted(f.name for f in folder.iterdir()) == sorted(f.name for f in made_models.iterdir())
    features = np.random.default_rng(1).uniform(-200, 2e5, 258).tolist()
    result = bs.predict(features, "ct")
    assert list(result) == ["weight", "size", "age", "sex", "bmi", "bsa"]
    for target in ("weight", "size", "age"):
        entry = result[target]
        assert entry["min"] <= entry["value"] <= entry["max"] and entry["stddev"] >= 0
    assert result["sex"]["value"] in ("M", "F") and 0.5 <= result["sex"]["probability"] <= 1
    height = result["size"]["value"] / 100
    assert result["bmi"]["value"] == round(result["weight"]["value"] / height ** 2, 2)
    one = bs.predict(features, "ct", fold=2, only_weight=True)
    assert list(one) == ["weight"] and set(one["weight"]) == {"value", "unit"}


def test_body_stats_refusals_are_one_line(home, tmp_path, capsys):
    from totalseg import config
    from totalseg.cli.get_body_stats import main

    base = ["-i", str(CT), "-m", "ct", "-o", str(tmp_path / "out.json")]
    _one_error_line(main(base + ["-mt", "xgboost"]), capsys.readouterr().err, "licence")
    config.update_config({"license_number": LICENCE})
    _one_error_line(main(base), capsys.readouterr().err, "-mt xgboost")  # cnn, the default
    _one_error_line(main(base + ["-mt", "xgboost", "-f", "7"]), capsys.readouterr().err, "fold")
    # Offline, nothing installed: it says where the models belong and how to give them.
    _one_error_line(main(base + ["-mt", "xgboost"]), capsys.readouterr().err, "-mf")
    assert not (tmp_path / "out.json").exists()
    # the CNN-only flags with xgboost: said to have no effect, not ignored silently
    _one_error_line(main(base + ["-mt", "xgboost", "-tta", "--debug"]), err := capsys.readouterr().err, "-mf")
    assert "-tta and --debug: for the CNN backend only; no effect with -mt xgboost" in err


@pytest.mark.slow
def test_body_stats_equal_the_official_command(official_tool, made_models, tmp_path, monkeypatch,  # noqa: F811
                                               capsys):
    """The whole xgboost path (four models on the random-weights home, features, ensembles) against the
    official command with the same home and the same (self-made) model files: identical JSON."""
    from totalseg.cli.get_body_stats import main

    homes = {}
    for who in ("ours", "official"):
        homes[who] = _copy_home(tmp_path / f"{who}_home")
        cfg = json.loads((homes[who] / "config.json").read_text())
        (homes[who] / "config.json").write_text(json.dumps({**cfg, "license_number": LICENCE}))
        shutil.copytree(made_models, homes[who] / "nnunet" / "results" / "body_stats_models_2026_03_24")
    args = ["-i", str(CT), "-m", "ct", "-mt", "xgboost", "-d", "cpu", "-q"]
    proc = _official_command(official_tool, "totalseg_get_body_stats",
                             args + ["-o", str(tmp_path / "official.json")], homes["official"], tmp_path, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(homes["ours"]))
    assert main(args + ["-o", str(tmp_path / "ours.json")]) == 0
    assert (tmp_path / "ours.json").read_text() == (tmp_path / "official.json").read_text()
