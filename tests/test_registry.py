"""The task registry (pure data) and its listings; cross-checked against the official-layout fake weights."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from totalseg import registry
from totalseg.errors import UserError
from totalseg.registry import class_map, get_model, get_task, task_names
from totalseg.registry.listing import format_class_list, format_task_list, mode_names

SHARED = Path(__file__).resolve().parents[2] / "shared"
FAKE_RESULTS = SHARED / "data" / "fake_weights_tiny" / "nnunet" / "results"

TASKS, MAPS = registry._tables()

# Every task of the official 2.18.0 registry except total_v3, total_highres_test and test, with its class count.
EXPECTED_CLASSES = {
    "total": 117, "total_mr": 50, "body": 2, "body_mr": 2, "vertebrae_mr": 25, "lung_vessels": 4,
    "lung_vessels_LEGACY": 2, "cerebral_bleed": 1, "hip_implant": 1, "pleural_pericard_effusion": 3,
    "liver_vessels": 2, "head_glands_cavities": 19, "headneck_bones_vessels": 12, "head_muscles": 11,
    "headneck_muscles": 23, "oculomotor_muscles": 19, "lung_nodules": 2, "kidney_cysts": 2, "breasts": 1,
    "ventricle_parts": 12, "liver_segments": 8, "liver_segments_mr": 8, "liver_lesions": 1, "liver_lesions_mr": 1,
    "craniofacial_structures": 7, "abdominal_muscles": 22, "teeth": 77, "trunk_cavities": 4, "brain_aneurysm": 1,
    "vertebrae_body": 2, "vertebrae_pp": 24, "vertebrae_pp_refined": 24, "heartchambers_highres": 7,
    "appendicular_bones": 11, "appendicular_bones_mr": 8, "tissue_types": 3, "tissue_types_mr": 3,
    "tissue_4_types": 4, "face": 1, "face_mr": 1, "brain_structures": 16, "thigh_shoulder_muscles": 18,
    "thigh_shoulder_muscles_mr": 18, "coronary_arteries": 1, "coronary_arteries_LEGACY": 1, "aortic_sinuses": 4,
    "renal_arteries": 3, "aorta_annulus": 2, "aortic_dissection": 2, "pulmonary_artery_landmarks": 7,
}
LICENSED = {"heartchambers_highres", "appendicular_bones", "appendicular_bones_mr", "tissue_types", "tissue_types_mr",
            "tissue_4_types", "face", "face_mr", "brain_structures", "thigh_shoulder_muscles",
            "thigh_shoulder_muscles_mr", "coronary_arteries", "coronary_arteries_LEGACY", "aortic_sinuses",
            "renal_arteries", "aorta_annulus", "aortic_dissection", "pulmonary_artery_landmarks"}
CONFIGURATIONS = {"3d_fullres", "3d_fullres_high", "3d_lowres_high"}
RELEASES = {"v2.0.0-weights", "v2.3.0-weights", "v2.4.0-weights", "v2.5.0-weights"}
CROP_MODEL_IDS = {registry.CROP_MODEL_CT, registry.CROP_MODEL_CT_ROBUST, registry.CROP_MODEL_MR,
                  registry.CROP_MODEL_BODY}


def _tasks_using(model_id: int) -> list[str]:
    return [n for n in task_names() if any(model_id in m.models for m in get_task(n).modes.values())]


# ---------------------------------------------------------------- the data itself

def test_task_set_and_class_counts():
    assert set(task_names()) == set(EXPECTED_CLASSES)
    for name, n in EXPECTED_CLASSES.items():
        assert len(get_task(name).classes) == n, name
    assert len(get_task("total").classes) == 117
    assert len(get_task("total_mr").classes) == 50


def test_every_class_map_reference_exists():
    for mid, m in TASKS["models"].items():
        assert m["classes"] in MAPS, (mid, m["classes"])
    for name, t in TASKS["tasks"].items():
        assert t["classes"] in MAPS, name
        if t.get("auxiliary"):
            assert t["auxiliary"] in MAPS, name
            assert t["auxiliary"] == f"{name}_auxiliary"
        for mode in t["modes"].values():
            for mid in mode["models"]:
                assert str(mid) in TASKS["models"], (name, mid)
        for mid in t.get("download", []):
            assert str(mid) in TASKS["models"], (name, mid)
        if t.get("crop_model"):
            assert t["crop_model"] in TASKS["tasks"], name


def test_class_maps_are_one_based_and_unique():
    for key in MAPS:
        cm = class_map(key)
        assert sorted(cm) == list(range(1, len(cm) + 1)) or key.endswith("_auxiliary") or key == "total_v1", key
        assert len(set(cm.values())) == len(cm), key


def test_auxiliary_maps_of_the_official_registry():
    for name in ["appendicular_bones", "kidney_cysts", "face_mr", "renal_arteries"]:
        assert get_task(name).auxiliary == class_map(f"{name}_auxiliary")
    assert get_task("appendicular_bones").auxiliary == {12: "humerus", 13: "femur", 14: "liver", 15: "spleen"}
    assert get_task("kidney_cysts").auxiliary == {3: "kidney_left", 4: "kidney_right"}
    others = set(task_names()) - {"appendicular_bones", "kidney_cysts", "face_mr", "renal_arteries"}
    assert all(get_task(n).auxiliary == {} for n in others)


def test_model_output_maps_cover_task_labels():
    """A single-model task's model predicts the task labels plus its auxiliary labels, nothing else."""
    for name in task_names():
        task = get_task(name)
        for mode in task.modes.values():
            if len(mode.models) == 1:
                assert get_model(mode.models[0]).classes == {**task.classes, **task.auxiliary}, (name, mode)
            else:  # part models: their names, in part order, are the task's labels
                names = [v for mid in mode.models for _, v in sorted(get_model(mid).classes.items())]
                assert names == [v for _, v in sorted(task.classes.items())], name


def test_total_and_headneck_part_maps():
    t = get_task("total")
    assert t.modes["default"].models == (291, 292, 293, 294, 295)
    offsets = {291: 0, 292: 24, 293: 50, 294: 68, 295: 91}
    for mid, off in offsets.items():
        for k, v in get_model(mid).classes.items():
            assert t.classes[k + off] == v
    assert t.classes[5] == "liver" and t.classes[90] == "brain"
    mr = get_task("total_mr")
    assert mr.modes["default"].models == (850, 851)
    assert len(get_model(850).classes) == 29 and len(get_model(851).classes) == 21
    hm = get_task("headneck_muscles")
    assert hm.modes["default"].models == (778, 779)
    assert len(get_model(778).classes) == 11 and len(get_model(779).classes) == 12
    assert get_model(779).classes[1] == "anterior_scalene_right"


def test_models_are_well_formed():
    for mid, m in TASKS["models"].items():
        model = get_model(int(mid))
        assert model.folder.startswith(f"Dataset{int(mid):03d}_"), mid
        assert model.configuration in CONFIGURATIONS, mid
        assert model.plans == "nnUNetPlans"
        assert model.trainer.startswith("nnUNetTrainer"), mid
        if model.licensed:
            assert model.release is None, mid
        else:
            assert model.release in RELEASES, mid
    # a few documented facts
    assert get_model(913).trainer == "nnUNetTrainer_MOSAIC_1k_QuarterLR_NoMirroring"
    assert get_model(113).configuration == "3d_lowres_high" and get_model(113).trainer == "nnUNetTrainer_onlyMirror01"
    assert get_model(615).trainer == "nnUNetTrainerDiceTopK10Loss_2000epochs"
    assert get_model(8).folder == "Dataset008_HepaticVessel" and get_model(8).release == "v2.4.0-weights"
    assert get_model(775).release == "v2.3.0-weights" and get_model(775).configuration == "3d_fullres_high"


def test_tasks_are_well_formed():
    for name in task_names():
        t = get_task(name)
        assert t.modality == ("mr" if name.endswith("_mr") or name == "brain_aneurysm" else "ct"), name
        assert t.licensed == (name in LICENSED), name
        assert all(get_model(m).licensed == t.licensed for mode in t.modes.values() for m in mode.models), name
        assert "default" in t.modes and set(t.modes) <= {"default", "fast", "fastest"}, name
        assert t.step == (0.8 if name in ("total", "total_mr") else 0.5), name
        for mode in t.modes.values():
            assert mode.resample is None or (len(mode.resample) == 3 and all(x > 0 for x in mode.resample))
        assert len(t.crop_addon) == 3
        if t.crop is not None:
            assert t.crop_addon == ((20.0,) * 3 if t.crop_model is None else (10.0,) * 3), name
        else:
            assert t.crop_addon == (3.0,) * 3, name
        assert t.remove_outside is None or t.crop is not None, name
        # download: every mode's models, plus the crop models the task needs
        mode_ids = {m for mode in t.modes.values() for m in mode.models}
        assert len(set(t.download)) == len(t.download), name
        if name not in ("total", "total_mr"):  # these two follow totalseg_download_weights (doc §1.2)
            assert mode_ids <= set(t.download), name
        if t.crop is not None and t.crop_model is None:
            if "body_trunc" in t.crop or "body_extremities" in t.crop:
                need = registry.CROP_MODEL_BODY
            elif t.modality == "mr":
                need = registry.CROP_MODEL_MR
            else:
                need = registry.CROP_MODEL_CT_ROBUST if t.always_robust_crop else registry.CROP_MODEL_CT
            assert need in t.download, name
            crop_task = get_task("body" if need == registry.CROP_MODEL_BODY else
                                 "total_mr" if need == registry.CROP_MODEL_MR else "total")
            assert set(t.crop) <= set(crop_task.classes.values()), name
            assert set(t.remove_outside or ()) <= set(crop_task.classes.values()), name
        if t.crop_model is not None:
            assert set(t.crop) <= set(get_task(t.crop_model).classes.values()), name
            assert set(get_task(t.crop_model).download) <= set(t.download), name
        if t.crop is None and name not in ("total", "total_mr"):
            assert not (set(t.download) - mode_ids) & CROP_MODEL_IDS or name == "body", name


def test_documented_task_details():
    assert get_task("total").download == (291, 292, 293, 294, 295, 298)
    assert get_task("body").modes["fast"].models == (300,) and get_task("body").modes["fast"].resample == (6.0,) * 3
    assert get_task("body_mr").modes["fast"].models == (598,)
    assert get_task("body_mr").modes["fast"].resample == (6.0,) * 3
    assert get_task("body").postprocess == "body" and get_task("body_mr").postprocess is None
    assert get_task("vertebrae_pp").postprocess == "vertebrae_pp"
    assert get_task("vertebrae_pp_refined").download == (803, 305)
    for name in ("pleural_pericard_effusion", "brain_aneurysm"):
        assert get_task(name).folds is None
    for name in ("aorta_annulus", "aortic_dissection", "pulmonary_artery_landmarks"):
        assert get_task(name).folds == (0, 1, 2, 3, 4)
    assert get_task("kidney_cysts").folds == (0,)
    assert get_task("lung_vessels").always_robust_crop and get_task("lung_vessels").download == (117, 297)
    assert get_task("lung_vessels").modes["default"].resample == (0.703125, 0.703125, 1.0)
    assert get_task("lung_vessels_LEGACY").modes["default"].resample is None
    assert get_task("teeth").crop_model == "craniofacial_structures"
    assert get_task("teeth").download == (113, 115, 298)
    assert get_task("abdominal_muscles").download == (952, 300)
    assert get_task("liver_segments_mr").download == (576, 852)
    hc = get_task("heartchambers_highres")
    assert hc.remove_outside == ("heart", "aorta", "inferior_vena_cava") and hc.always_robust_crop
    assert get_task("thigh_shoulder_muscles").modes["default"].models == (857,)
    assert get_task("thigh_shoulder_muscles_mr").modes["default"].models == (857,)
    assert get_task("headneck_muscles").crop == ("clavicula_left", "clavicula_right", "vertebrae_C1", "vertebrae_C5",
                                                 "vertebrae_T1", "vertebrae_T4")
    assert not get_task("total").disallow_fast and get_task("lung_nodules").disallow_fast


# ---------------------------------------------------------------- Task.mode

def test_mode_selection():
    total = get_task("total")
    assert total.mode().models == (291, 292, 293, 294, 295)
    assert total.mode(fast=True).models == (297,)
    assert total.mode(fastest=True).models == (298,)
    assert total.mode(fast=True, fastest=True).models == (298,)
    mr = get_task("total_mr")
    assert mr.mode(fast=True).models == (852,) and mr.mode(fastest=True).models == (853,)
    body = get_task("body")
    assert body.mode(fastest=True).models == (300,)  # --fastest falls back to fast
    assert get_task("body_mr").mode(fastest=True).models == (598,)
    assert get_task("vertebrae_mr").mode(fast=True).models == (756,)  # no fast mode: default, silently
    assert get_task("lung_vessels").mode(fast=True).models == (117,)
    only_total = [n for n in task_names() if "fastest" in get_task(n).modes]
    assert sorted(only_total) == ["total", "total_mr"]


@pytest.mark.parametrize("kwargs", [{"fast": True}, {"fastest": True}])
def test_mode_disallow_fast(kwargs):
    with pytest.raises(UserError, match="--fast"):
        get_task("lung_nodules").mode(**kwargs)
    assert get_task("lung_nodules").mode().models == (913,)


def test_unknown_task():
    with pytest.raises(UserError):
        get_task("nope")
    with pytest.raises(UserError):
        format_class_list("nope")


# ---------------------------------------------------------------- listings

def test_format_task_list():
    """Layout of the official --list-tasks table (2.18.0), minus total_v3, total_highres_test and test."""
    text = format_task_list()
    lines = text.splitlines()
    assert lines[0] == "TASK                        MODALITY  LICENSE  CLASSES"
    assert lines[1] == "-" * 54
    rows = lines[2:-2]
    assert len(rows) == len(task_names()) == 50
    assert [r.split()[0] for r in rows] == task_names()
    assert rows[0] == "total                       CT        no       117"
    assert lines[-2] == ""
    assert lines[-1] == ("50 tasks. Licensed tasks need a (free for non-commercial) license: "
                         "https://backend.totalsegmentator.com/license-academic/")
    by_name = {r.split()[0]: r.split() for r in rows}
    assert by_name["total_mr"][1:] == ["MR", "no", "50"]
    assert by_name["tissue_types"][1:] == ["CT", "yes", "3"]
    assert by_name["pulmonary_artery_landmarks"][1:] == ["CT", "yes", "7"]
    assert by_name["teeth"][3] == "77"
    assert all(not line.endswith(" ") for line in lines)
    # official registry order: total first, total_mr after vertebrae_pp_refined, pulmonary_artery_landmarks last
    names = task_names()
    assert names.index("total_mr") == names.index("vertebrae_pp_refined") + 1
    assert names[-1] == "pulmonary_artery_landmarks"


def test_format_task_list_with_modes():
    lines = format_task_list(show_modes=True).splitlines()
    assert lines[0].endswith("CLASSES  MODES")
    by_name = {r.split()[0]: r for r in lines[2:-2]}
    assert by_name["total"].endswith("117      default, fast, fastest")
    assert by_name["total_mr"].endswith("default, fast, fastest")
    assert by_name["body"].endswith("default, fast")
    assert by_name["body_mr"].endswith("default, fast")
    assert by_name["lung_nodules"].endswith("default")
    assert mode_names("total") == ["default", "fast", "fastest"]


def test_format_class_list():
    lines = format_class_list("total").splitlines()
    assert lines[0] == "Task 'total'  [CT, open license, 117 classes]"
    assert lines[1] == ""
    classes = lines[2:]
    assert len(classes) == 117
    assert classes[4] == "   5  liver"
    assert classes[4].split() == ["5", "liver"]
    assert classes[-1] == " 117  costal_cartilages"
    assert format_class_list() == format_class_list("total")
    assert format_class_list("body").splitlines()[2:] == ["   1  body_trunc", "   2  body_extremities"]
    assert format_class_list("tissue_types").splitlines()[0] == "Task 'tissue_types'  [CT, license required, 3 classes]"
    assert format_class_list("total_mr").splitlines()[0] == "Task 'total_mr'  [MR, open license, 50 classes]"
    assert len(format_class_list("total_mr").splitlines()) == 52
    # auxiliary labels are not task outputs
    assert len(format_class_list("appendicular_bones").splitlines()) == 13


def test_listing_imports_no_torch_or_numpy():
    code = ("import sys; from totalseg.registry.listing import format_task_list, format_class_list; "
            "format_task_list(); format_class_list('total'); "
            "print(','.join(m for m in ('torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == ""


# ---------------------------------------------------------------- cross-check with the official-layout weights

def _fake_datasets():
    if not FAKE_RESULTS.is_dir():
        return []
    return sorted(p for p in FAKE_RESULTS.iterdir() if p.is_dir() and p.name.startswith("Dataset"))


def test_fake_weights_present_or_skip():
    if not FAKE_RESULTS.is_dir():
        pytest.skip(f"{FAKE_RESULTS} absent")
    assert len(_fake_datasets()) == 32


@pytest.mark.parametrize("folder", _fake_datasets(), ids=lambda p: p.name)
def test_fake_weights_match_registry(folder: Path):
    mid = int(folder.name[len("Dataset"):].split("_")[0])
    model = get_model(mid)
    assert model.folder == folder.name
    subs = [p.name for p in folder.iterdir() if p.is_dir()]
    assert subs == [model.subfolder]
    sub = folder / model.subfolder
    labels = json.loads((sub / "dataset.json").read_text())["labels"]
    fake = {int(v): k for k, v in labels.items() if k != "background"}
    ours = model.classes
    if fake != ours:
        # The fake home was generated from the task maps only; the official model also predicts the task's
        # auxiliary labels, which the registry keeps in the model's map. Nothing else may differ.
        aux = {}
        for name in _tasks_using(mid):
            aux.update(get_task(name).auxiliary)
        assert aux, (folder.name, fake, ours)
        assert {k: v for k, v in ours.items() if k not in aux} == fake, folder.name
    # the plans' spacing is the task's resample spacing reversed (z, y, x), where the task resamples
    plans = json.loads((sub / "plans.json").read_text())
    spacing = plans["configurations"][model.configuration]["spacing"]
    for name in _tasks_using(mid):
        for mode in get_task(name).modes.values():
            if mid in mode.models and mode.resample is not None:
                assert tuple(spacing[::-1]) == pytest.approx(mode.resample, abs=1e-9), (name, folder.name)


def _write_custom_task(home: Path, classes: dict) -> None:
    """``<home>/custom_tasks.json`` with one task "synth" running Dataset901_Synth."""
    entry = {"folder": "Dataset901_Synth", "trainer": "nnUNetTrainer", "plans": "nnUNetPlans",
             "configuration": "3d_fullres", "classes": classes}
    (home / "custom_tasks.json").write_text(json.dumps({"tasks": {"synth": entry}}))


def test_official_class_map_follows_custom_tasks_json(tmp_path, monkeypatch):
    """The official ``class_map`` table lists custom tasks: an edit of custom_tasks.json between two
    calls is seen (added, renamed, removed), and an unchanged file gives the table already built."""
    from totalseg.registry import official_maps

    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path))
    assert "synth" not in official_maps.table("class_map")
    _write_custom_task(tmp_path, {"1": "liver"})
    first = official_maps.table("class_map")
    assert first["synth"] == {1: "liver"} and official_maps.table("class_map") is first
    _write_custom_task(tmp_path, {"1": "liver", "2": "right_kidney"})
    assert official_maps.table("class_map")["synth"] == {1: "liver", 2: "right_kidney"}
    assert official_maps.table("class_map_5_parts") == official_maps.table("class_map_5_parts")
    (tmp_path / "custom_tasks.json").unlink()
    assert "synth" not in official_maps.table("class_map")
