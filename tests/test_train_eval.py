"""Retrain and evaluate: dataset conversion, nnU-Net training, import into a home, the CLI, Dice and NSD."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import DATA as SHARED_DATA
from totalseg.errors import UserError
from totalseg.evaluate.metrics import dice, nsd, surface_distances

SHAPE = (40, 36, 32)
SPACING = (1.5, 1.5, 2.0)
CLASSES = {1: "liver", 2: "spleen", 3: "kidney_left"}
SPLIT = {"s0": "train", "s1": "train", "s2": "train", "s3": "val", "s4": "test"}


def _shapes(seed: int) -> dict[str, np.ndarray]:
    """Three structures of known geometry, moved a little per case; spleen overlaps liver (spleen wins)."""
    z = np.indices(SHAPE, dtype=np.float64)
    d = [(seed % 3) - 1, (seed % 2), -(seed % 2)]
    liver = ((z[0] - 14 - d[0]) / 8) ** 2 + ((z[1] - 18 - d[1]) / 9) ** 2 + ((z[2] - 16 - d[2]) / 7) ** 2 <= 1
    spleen = np.zeros(SHAPE, bool)
    spleen[20 + d[0]:30 + d[0], 10:20, 10 + d[1]:20 + d[1]] = True
    kidney = ((z[0] - 30) / 5) ** 2 + ((z[1] - 26 - d[2]) / 4) ** 2 + ((z[2] - 22) / 4) ** 2 <= 1
    return {"liver": liver, "spleen": spleen, "kidney_left": kidney}


def make_dataset(root, missing_mask: tuple[str, str] | None = ("s2", "kidney_left")) -> None:
    """Five cases in the TotalSegmentator layout and a ';' meta.csv with a train/val/test split."""
    affine = np.diag([*SPACING, 1.0])
    for i, case in enumerate(SPLIT):
        shapes = _shapes(i)
        rng = np.random.default_rng(i)
        ct = rng.normal(-50, 20, SHAPE)
        for value, name in zip((60, 200, 140), ("liver", "spleen", "kidney_left")):
            ct[shapes[name]] = value + rng.normal(0, 10, int(shapes[name].sum()))
        (root / case / "segmentations").mkdir(parents=True)
        nib.save(nib.Nifti1Image(ct.astype(np.int16), affine), root / case / "ct.nii.gz")
        for name, mask in shapes.items():
            if (case, name) != missing_mask:
                path = root / case / "segmentations" / f"{name}.nii.gz"
                nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), path)
    rows = ["image_id;age;gender;split"] + [f"{c};50;f;{s}" for c, s in SPLIT.items()]
    (root / "meta.csv").write_text("\n".join(rows) + "\n")


# --- metrics -------------------------------------------------------------------------------------------------

DATA = Path(__file__).parent / "data"


def _box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


def _box_area(n, s):
    """Closed-form surface of an n[0] x n[1] x n[2] voxel box: flat faces, chamfered edges, corner triangles."""
    faces = 2 * sum((n[j] - 1) * (n[k] - 1) * s[j] * s[k] for j, k in ((1, 2), (0, 2), (0, 1)))
    edges = 4 * sum((n[i] - 1) * s[i] * math.hypot(s[j] / 2, s[k] / 2) for i, j, k in ((0, 1, 2), (1, 0, 2), (2, 0, 1)))
    corners = 8 * 0.5 * math.sqrt((s[0] * s[1] / 4) ** 2 + (s[0] * s[2] / 4) ** 2 + (s[1] * s[2] / 4) ** 2)
    return faces + edges + corners


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.3, 3.0)])
def test_box_surface_area_closed_form(spacing):
    g = _box((30, 30, 30), (4, 5, 6), (14, 22, 13))
    s = surface_distances(g, g, spacing)
    assert s["areas_gt"].sum() == pytest.approx(_box_area((10, 17, 7), spacing), abs=1e-6)
    assert np.all(s["distances_gt_to_pred"] == 0)


def test_dice_offset_boxes_closed_form():
    a = _box((40, 40, 40), (5, 5, 5), (25, 20, 15))  # 20 x 15 x 10
    b = _box((40, 40, 40), (8, 7, 5), (28, 22, 15))  # shifted by (3, 2, 0): overlap 17 x 13 x 10
    assert dice(a, b) == pytest.approx(2 * 17 * 13 * 10 / (2 * 20 * 15 * 10), abs=1e-12)
    assert math.isnan(dice(np.zeros((4, 4, 4)), np.zeros((4, 4, 4))))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.2, 2.5)])
def test_nsd_closed_form(spacing):
    shape = (60, 30, 30)
    b1 = _box(shape, (3, 4, 5), (15, 20, 14))
    b2 = _box(shape, (40, 6, 6), (52, 16, 20))  # > 20 mm from b1 at either spacing
    s1, s2 = _box_area((12, 16, 9), spacing), _box_area((12, 10, 14), spacing)
    # ground truth b1, prediction b1 + b2: all of b1's surface matches, none of b2's.
    assert nsd(b1, b1 | b2, spacing) == pytest.approx(2 * s1 / (2 * s1 + s2), abs=1e-3)
    assert nsd(b1, b2, spacing) == 0.0
    # A shift along the coarsest axis by less than the tolerance keeps every surface element within it.
    shifted = np.roll(b1, 1, axis=2)
    assert spacing[2] <= 3.0 and nsd(b1, shifted, spacing) == pytest.approx(1.0, abs=1e-12)
    assert nsd(b1, shifted, spacing, tolerance_mm=0.5 * min(spacing)) < 1.0
    assert math.isnan(nsd(np.zeros(shape, bool), np.zeros(shape, bool), spacing))


def test_nsd_matches_deepmind_surface_distance():
    """Values of DeepMind's surface_distance 0.1 (NumPy<2 venv: tests/data/make_surface_distance_reference.py)."""
    sys.path.insert(0, str(DATA))
    try:
        from surface_distance_cases import CASES
    finally:
        sys.path.remove(str(DATA))
    ref = json.loads((DATA / "surface_distance_reference.json").read_text())["cases"]
    assert set(ref) == set(CASES)
    for name, (make, spacing) in CASES.items():
        gt, pred = make()
        r = ref[name]
        s = surface_distances(gt, pred, spacing)
        assert s["areas_gt"].sum() == pytest.approx(r["surface_area_gt"], rel=1e-9), name
        assert s["areas_pred"].sum() == pytest.approx(r["surface_area_pred"], rel=1e-9), name
        assert nsd(gt, pred, spacing, 1.0) == pytest.approx(r["nsd_1mm"], abs=1e-6), name
        assert nsd(gt, pred, spacing, 3.0) == pytest.approx(r["nsd_3mm"], abs=1e-6), name
        assert dice(gt, pred) == pytest.approx(r["dice"], abs=1e-9), name


# --- dataset conversion, custom tasks, evaluation ------------------------------------------------------------

def _convert(tmp_path):
    from totalseg.train import convert_dataset

    src = tmp_path / "src"
    make_dataset(src)
    said = []
    done = convert_dataset(src, tmp_path / "work" / "nnUNet_raw", 901, "Synth", CLASSES, meta=src / "meta.csv",
                           say=said.append, progress=False)
    return src, done, said


def test_convert_labels_split_and_missing_mask(tmp_path):
    src, done, said = _convert(tmp_path)
    folder = tmp_path / "work" / "nnUNet_raw" / "Dataset901_Synth"
    assert done.folder == folder
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"s{i}_0000.nii.gz" for i in range(4)]
    assert [p.name for p in (folder / "imagesTs").iterdir()] == ["s4_0000.nii.gz"]
    assert json.loads((folder / "splits_final.json").read_text()) == [{"train": ["s0", "s1", "s2"], "val": ["s3"]}]
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3}
    assert meta["numTraining"] == 4 and meta["channel_names"] == {"0": "CT"}
    # Overlaps: the later class (spleen, 2) wins over liver (1); label geometry and affine as the masks.
    for i, case in enumerate(["s0", "s1", "s3"]):
        shapes = _shapes([0, 1, 3][i])
        expected = np.zeros(SHAPE, np.uint8)
        for label, name in sorted(CLASSES.items()):
            expected[shapes[name]] = label
        img = nib.load(folder / "labelsTr" / f"{case}.nii.gz")
        assert np.array_equal(np.asanyarray(img.dataobj), expected)
        assert np.allclose(img.affine, nib.load(src / case / "ct.nii.gz").affine)
        assert (shapes["liver"] & shapes["spleen"]).any()
    # The missing mask is reported, and that class is background in that case.
    assert done.missing == {"s2": ["kidney_left"]} and any("s2" in m and "kidney_left" in m for m in said)
    assert not (np.asanyarray(nib.load(folder / "labelsTr" / "s2.nii.gz").dataobj) == 3).any()


def test_convert_refuses_bad_meta(tmp_path):
    from totalseg.train import convert_dataset

    make_dataset(tmp_path / "src")
    (tmp_path / "src" / "meta.csv").write_text("image_id;split\ns0;training\n")
    with pytest.raises(UserError, match="split 'training'"):
        convert_dataset(tmp_path / "src", tmp_path / "raw", 901, "Synth", CLASSES, meta=tmp_path / "src" / "meta.csv")


def test_custom_tasks_file(tmp_path, monkeypatch):
    from totalseg.registry import get_model, get_task, task_names

    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path))
    path = tmp_path / "custom_tasks.json"
    entry = {"folder": "Dataset901_Synth", "trainer": "nnUNetTrainer", "plans": "nnUNetPlans",
             "configuration": "3d_fullres", "classes": {"1": "liver", "2": "spleen"}}
    path.write_text(json.dumps({"tasks": {"synth": entry}}))
    task = get_task("synth")
    assert "synth" in task_names() and task.classes == {1: "liver", 2: "spleen"}
    assert task.modes["default"].models == (901,) and get_model(901).folder == "Dataset901_Synth"
    assert get_task("total").classes[1] == "spleen"  # built-ins untouched
    for bad, message in [({"total": entry}, "built-in task"),
                         ({"synth": {**entry, "folder": "Dataset291_x"}}, "dataset id 291"),
                         ({"synth": {**entry, "classes": {"0": "x"}}}, "labels >= 1"),
                         ({"synth": {**entry, "folder": "my_model"}}, "Dataset901_MyOrgans")]:
        path.write_text(json.dumps({"tasks": bad}))
        with pytest.raises(UserError, match=message) as e:
            get_task("synth")
        assert "\n" not in str(e.value)
    path.write_text("{not json")
    with pytest.raises(UserError, match="not readable JSON"):
        task_names()


def test_evaluate_outputs(tmp_path):
    from totalseg.evaluate.run import evaluate
    from totalseg.write.labelmap import with_label_table

    src = tmp_path / "src"
    make_dataset(src)
    pred = tmp_path / "pred"
    # s3 (val): perfect masks as TotalSegmentator writes them; s4 (test): a multilabel file with a label table,
    # liver moved by 2 voxels along the coarse z axis (4 mm > 3 mm), and a kidney_left where s2 has none.
    (pred / "s3").mkdir(parents=True)
    for name in CLASSES.values():
        (pred / "s3" / f"{name}.nii.gz").write_bytes((src / "s3" / "segmentations" / f"{name}.nii.gz").read_bytes())
    shapes = _shapes(4)
    ml = np.zeros(SHAPE, np.uint8)
    ml[np.roll(shapes["liver"], 2, axis=2)] = 1
    ml[shapes["spleen"]] = 2
    img = with_label_table(nib.Nifti1Image(ml, np.diag([*SPACING, 1.0])), CLASSES)
    nib.save(img, pred / "s4.nii.gz")
    (pred / "s2").mkdir()
    for name, mask in _shapes(2).items():
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.diag([*SPACING, 1.0])), pred / "s2" / f"{name}.nii.gz")
    out = tmp_path / "eval"
    meta = tmp_path / "meta_eval.csv"
    meta.write_text("image_id;split\ns0;train\ns1;train\ns2;test\ns3;test\ns4;test\n")
    summary = evaluate(pred, src, out, split="test", meta=meta, progress=False)
    with open(out / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    by = {(r["case_id"], r["class"]): r for r in rows}
    assert {r["case_id"] for r in rows} == {"s2", "s3", "s4"}
    assert all(float(by[("s3", c)]["dice"]) == 1.0 and float(by[("s3", c)]["nsd"]) == 1.0 for c in CLASSES.values())
    liver = shapes["liver"]
    moved = np.roll(liver, 2, axis=2) & ~shapes["spleen"]  # spleen written over it in the multilabel file
    expected = 2 * (liver & moved).sum() / (liver.sum() + moved.sum())
    assert float(by[("s4", "liver")]["dice"]) == pytest.approx(expected, abs=1e-6)
    assert float(by[("s4", "liver")]["nsd"]) < 1.0
    assert float(by[("s4", "kidney_left")]["dice"]) == 0.0
    assert by[("s2", "kidney_left")]["dice"] == "nan" and by[("s2", "kidney_left")]["false_positive"] == "True"
    assert {"case_id", "class", "dice", "nsd"} <= set(rows[0])
    assert summary[-1]["class"].startswith("ALL") and (out / "summary.csv").is_file()
    assert "| liver |" in (out / "summary.md").read_text()
    assert (out / "summary.png").read_bytes()[:4] == b"\x89PNG"
    # --split test: only s4
    only = evaluate(pred, src, tmp_path / "eval2", split="test", meta=src / "meta.csv", progress=False)
    assert [r["cases"] for r in only[:3]] == [1, 1, 1]


def test_import_result_folder_without_nnunet(tmp_path):
    """A result folder (here a copy of a random-weights model) becomes a task of a fresh home; refusals."""
    import shutil

    fake = SHARED_DATA / "fake_weights_tiny" / "nnunet" / "results" / "Dataset315_thoraxCT"
    if not fake.is_dir():
        pytest.skip("shared random-weights home not available")
    sub = "nnUNetTrainer__nnUNetPlans__3d_fullres"
    result = tmp_path / "results" / "Dataset915_Thorax" / sub
    shutil.copytree(fake / sub, result)
    env = {**os.environ, "TOTALSEG_HOME_DIR": str(tmp_path / "home")}
    env.pop("TOTALSEG_WEIGHTS_PATH", None)
    r = _cli("totalseg.cli.import_weights", "-i", result.parent, env=env)
    assert r.returncode == 1 and r.stderr.startswith("ERROR:") and "--task" in r.stderr
    r = _cli("totalseg.cli.import_weights", "-i", result.parent, "--task", "total", env=env)
    assert r.returncode == 1 and "built-in task" in r.stderr
    official_id = tmp_path / "results" / "Dataset315_thoraxCT" / sub
    shutil.copytree(fake / sub, official_id)
    r = _cli("totalseg.cli.import_weights", "-i", official_id, "--task", "thorax_copy", env=env)
    assert r.returncode == 1 and "official model's id" in r.stderr
    r = _cli("totalseg.cli.import_weights", "-i", result.parent, "--task", "thorax_copy", "-q", env=env)
    assert r.returncode == 0, r.stderr
    installed = tmp_path / "home" / "nnunet" / "results" / "Dataset915_Thorax" / sub
    assert (installed / "fold_0" / "checkpoint_final.pth").is_file()
    labels = json.loads((fake / sub / "dataset.json").read_text())["labels"]
    task = json.loads((tmp_path / "home" / "custom_tasks.json").read_text())["tasks"]["thorax_copy"]
    assert task["classes"] == {str(v): k for k, v in labels.items() if v}
    r = _cli("totalseg.cli.totalsegmentator", "--list-tasks", env=env)
    assert r.returncode == 0 and "thorax_copy" in r.stdout + r.stderr


def _plans_298(tmp_path: Path) -> Path:
    """A copy of the 6 mm model's plans (legacy flat format: pool_op_kernel_sizes, 5 stages)."""
    from conftest import DATA

    src = next((DATA / "fake_weights_tiny" / "nnunet" / "results").glob("Dataset298_*/*/plans.json"))
    path = tmp_path / "nnUNetPlans.json"
    path.write_text(src.read_text())
    return path


def test_edit_plans_sets_the_training_patch_and_batch_only(tmp_path):
    from totalseg.train.train import edit_plans

    path = _plans_298(tmp_path)
    before = json.loads(path.read_text())["configurations"]["3d_fullres"]
    edit_plans(path, "3d_fullres", batch_size=1, patch_size=[64, 48, 32])
    after = json.loads(path.read_text())["configurations"]["3d_fullres"]
    assert after["patch_size"] == [64, 48, 32] and after["batch_size"] == 1
    assert {k: v for k, v in after.items() if k not in ("patch_size", "batch_size")} == \
        {k: v for k, v in before.items() if k not in ("patch_size", "batch_size")}
    strides = before["pool_op_kernel_sizes"]
    total = math.prod(s[2] for s in strides)
    assert total >= 2
    for bad in ([64, 48, total + 1], [64, 48], [0, 48, 32]):
        with pytest.raises(UserError, match="patch_size") as err:
            edit_plans(path, "3d_fullres", patch_size=bad)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="batch_size"):
        edit_plans(path, "3d_fullres", batch_size=0)
    assert json.loads(path.read_text())["configurations"]["3d_fullres"] == after  # refused edits change nothing


def test_edit_plans_reads_the_strides_of_the_architecture_format(tmp_path):
    from totalseg.train.train import edit_plans

    path = tmp_path / "plans.json"
    conf = {"patch_size": [32, 32, 32], "batch_size": 2,
            "architecture": {"arch_kwargs": {"strides": [[1, 1, 1], [2, 2, 2], [2, 2, 1]]}}}
    path.write_text(json.dumps({"configurations": {"3d_fullres": conf}}))
    edit_plans(path, "3d_fullres", patch_size=[8, 12, 6])  # total stride 4 x 4 x 2
    assert json.loads(path.read_text())["configurations"]["3d_fullres"]["patch_size"] == [8, 12, 6]
    with pytest.raises(UserError, match="4x4x2"):
        edit_plans(path, "3d_fullres", patch_size=[8, 12, 5])


def test_train_cli_applies_or_refuses_plan_edits_without_preprocessing(tmp_path, capsys):
    """--skip_preprocess keeps the preprocessed data: training-only edits change its plans in place (an option
    never silently ignored); --plans_from, which would change the preprocessing, is refused."""
    from totalseg.cli.train import main

    work = tmp_path / "work"
    (work / "nnUNet_raw" / "Dataset950_X").mkdir(parents=True)
    pre = work / "nnUNet_preprocessed" / "Dataset950_X"
    pre.mkdir(parents=True)
    plans = _plans_298(pre)
    before = plans.read_text()
    for extra, message in ((["--patch_size", "30", "32", "32"], "patch_size"),
                           (["--plans_from", str(plans)], "--plans_from")):
        assert main(["-w", str(work), "-d", "950", "--skip_preprocess", *extra]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
        assert plans.read_text() == before
    (pre / "nnUNetPlans.json").unlink()
    assert main(["-w", str(work), "-d", "950", "--skip_preprocess", "--batch_size", "1"]) == 1
    assert "preprocess first" in capsys.readouterr().err


# --- end to end: convert -> nnU-Net -> home -> TotalSegmentator -> evaluate ----------------------------------

def _cli(module: str, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=900)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Convert, train a tiny network (4 features per stage, one epoch of two iterations), import as a task."""
    pytest.importorskip("nnunetv2", reason="nnU-Net v2 is not installed (pip install 'totalseg[train]')")
    tmp_path = tmp_path_factory.mktemp("train")
    src = tmp_path / "src"
    make_dataset(src)
    work, home = tmp_path / "work", tmp_path / "home"
    env = {**os.environ, "TOTALSEG_HOME_DIR": str(home)}
    env.pop("TOTALSEG_WEIGHTS_PATH", None)
    r = _cli("totalseg.cli.dataset", "-i", src, "-o", work, "-d", 901, "-n", "Synth", "-c", *CLASSES.values(), "-q",
             env=env)
    assert r.returncode == 0, r.stderr
    r = _cli("totalseg.cli.train", "-w", work, "-d", 901, "-tr", "nnUNetTrainerShortNoMirroring", "--epochs", 1,
             "--iterations", 2, "--max_features", 4, "--batch_size", 2, "--workers", 0, "-np", 1, "-q", env=env)
    assert r.returncode == 0, r.stderr
    result = work / "nnUNet_results" / "Dataset901_Synth" / "nnUNetTrainerShortNoMirroring__nnUNetPlans__3d_fullres"
    r = _cli("totalseg.cli.import_weights", "-i", result, "--task", "synth_organs", "-q", env=env)
    assert r.returncode == 0, r.stderr
    return {"tmp": tmp_path, "src": src, "work": work, "home": home, "env": env, "result": result}


def test_train_import_run_evaluate(trained):
    import torch

    src, work, home, env, result = (trained[k] for k in ("src", "work", "home", "env", "result"))
    assert json.loads((work / "nnUNet_preprocessed" / "Dataset901_Synth" / "splits_final.json").read_text()) == \
        [{"train": ["s0", "s1", "s2"], "val": ["s3"]}]
    installed = home / "nnunet" / "results" / "Dataset901_Synth" / result.name
    assert sorted(str(p.relative_to(installed)) for p in installed.rglob("*") if p.is_file()) == \
        ["dataset.json", "fold_0/checkpoint_final.pth", "plans.json"]
    ckpt = torch.load(installed / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    original = torch.load(result / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert all(torch.equal(ckpt["network_weights"][k], v) for k, v in original["network_weights"].items())
    custom = json.loads((home / "custom_tasks.json").read_text())["tasks"]["synth_organs"]
    assert custom["classes"] == {str(k): v for k, v in CLASSES.items()} and custom["folder"] == "Dataset901_Synth"
    pred = trained["tmp"] / "pred"
    r = _cli("totalseg.cli.totalsegmentator", "-ta", "synth_organs", "-i", src / "s4" / "ct.nii.gz", "-o",
             pred / "s4", env=env)
    assert r.returncode == 0, r.stderr
    assert "Dataset901_Synth" in r.stderr  # the trained model ran
    assert sorted(p.name for p in (pred / "s4").iterdir()) == sorted(f"{n}.nii.gz" for n in CLASSES.values())
    assert nib.load(pred / "s4" / "liver.nii.gz").shape == SHAPE
    r = _cli("totalseg.cli.evaluate", "-p", pred, "-g", src, "-o", trained["tmp"] / "eval", "--split", "test",
             "-ta", "synth_organs", "-q", env=env)
    assert r.returncode == 0, r.stderr
    rows = (trained["tmp"] / "eval" / "per_case.csv").read_text().splitlines()
    assert rows[0].startswith("case_id,class,dice,nsd") and len(rows) == 1 + len(CLASSES)


def test_finetune_from_installed_task(trained):
    """A new dataset (two of the classes) starts from the installed task's checkpoint, with its plans (here with
    the no-augmentation short trainer, nnU-Net's NoDA variant)."""
    src, work, env = trained["src"], trained["work"], trained["env"]
    r = _cli("totalseg.cli.dataset", "-i", src, "-o", work, "-d", 902, "-n", "SynthFt", "-c", "liver", "spleen",
             "-q", env=env)
    assert r.returncode == 0, r.stderr
    r = _cli("totalseg.cli.train", "-w", work, "-d", 902, "-tr", "nnUNetTrainerShortNoDA", "--epochs", 1,
             "--iterations", 1, "--workers", 0, "-np", 1, "--finetune", "synth_organs", "-q", env=env)
    assert r.returncode == 0, r.stderr
    result = work / "nnUNet_results" / "Dataset902_SynthFt" / "nnUNetTrainerShortNoDA__nnUNetPlans__3d_fullres"
    assert (result / "fold_0" / "checkpoint_final.pth").is_file()
    plans = json.loads((work / "nnUNet_preprocessed" / "Dataset902_SynthFt" / "nnUNetPlans.json").read_text())
    assert plans["dataset_name"] == "Dataset902_SynthFt"
    assert plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"][0] == 4
    log = (work / "logs" / "train.log").read_text()
    assert "pretrained weights" in log and "Dataset901_Synth" in log


def test_resume_goes_on_from_a_latest_checkpoint_newer_than_the_final(tmp_path):
    """nnU-Net's --c prefers checkpoint_final.pth: after a resumed run stopped midway (a newer latest beside
    an older final) the final is set aside, renamed, so the next resume continues from the latest; otherwise
    nothing moves."""
    from totalseg.train.train import resume_from_latest

    fold = tmp_path / "fold_0"
    fold.mkdir()
    final, latest = fold / "checkpoint_final.pth", fold / "checkpoint_latest.pth"
    final.write_bytes(b"epoch 35")
    resume_from_latest(fold)  # a final alone: the finished run resumes from it
    assert final.read_bytes() == b"epoch 35"
    latest.write_bytes(b"epoch 61")
    os.utime(final, (1_000_000, 1_000_000))
    said: list[str] = []
    resume_from_latest(fold, said.append)
    assert not final.exists() and latest.read_bytes() == b"epoch 61"
    assert (fold / "checkpoint_final_superseded.pth").read_bytes() == b"epoch 35"
    assert len(said) == 1 and "checkpoint_latest.pth" in said[0]
    final.write_bytes(b"epoch 80")  # a final written after the latest (not what nnU-Net leaves): kept
    os.utime(latest, (1_000_000, 1_000_000))
    resume_from_latest(fold)
    assert final.read_bytes() == b"epoch 80" and latest.is_file()


def test_bf16_trainer_steps_in_bfloat16_autocast_on_the_cpu(monkeypatch):
    """nnUNetTrainerShortNoDABf16 runs nnU-Net's training and validation steps under CPU bfloat16 autocast (nnU-Net
    autocasts on CUDA only); on another device it leaves them as they are."""
    import torch

    from totalseg.train.train import TRAINERS

    sys.path.insert(0, str(TRAINERS))
    try:
        import totalseg_short as short
    finally:
        sys.path.remove(str(TRAINERS))
    seen = []

    def record(self, batch):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return {}

    monkeypatch.setattr(short.nnUNetTrainerShortNoDA, "train_step", record)
    monkeypatch.setattr(short.nnUNetTrainerShortNoDA, "validation_step", record)
    trainer = object.__new__(short.nnUNetTrainerShortNoDABf16)
    for device in ("cpu", "cuda"):
        trainer.device = torch.device(device)
        trainer.train_step({})
        trainer.validation_step({})
    assert seen == [(True, torch.bfloat16)] * 2 + [(False, torch.bfloat16)] * 2


def test_adam_trainer_fits_with_amsgrad_adamw_at_1e3(monkeypatch):
    """nnUNetTrainerShortNoDABf16Adam: the bf16 short trainer with nnU-Net's AdamW (AMSGrad) at 1e-3, decaying
    over the run's epochs (bench/train_fastest.py's testbed goes on with it from an SGD checkpoint)."""
    import torch

    from totalseg.train.train import TRAINERS

    sys.path.insert(0, str(TRAINERS))
    try:
        import totalseg_short as short
    finally:
        sys.path.remove(str(TRAINERS))
    monkeypatch.setattr(short.nnUNetTrainerShortNoDABf16, "__init__", lambda self, *a, **k: None)
    trainer = short.nnUNetTrainerShortNoDABf16Adam({}, "3d_fullres", 0, {})
    trainer.network, trainer.weight_decay, trainer.num_epochs = torch.nn.Conv3d(1, 2, 3), 3e-5, 10
    optimizer, scheduler = trainer.configure_optimizers()
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.AdamW) and group["amsgrad"] and group["lr"] == 1e-3
    scheduler.step(5)
    assert 0 < optimizer.param_groups[0]["lr"] < 1e-3
    assert isinstance(trainer, short.nnUNetTrainerShortNoDABf16)  # bf16 autocast steps, one checkpoint an epoch
