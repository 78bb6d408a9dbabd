"""The ``totalsegmentator`` compatibility package: the official seed's Python examples run unchanged."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import REF

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the editable install may predate the package
    sys.path.insert(0, str(ROOT))

CT_SM = REF / "example_ct_sm.nii.gz"

# The seed's two examples, unchanged but for the --fast/--ml/cpu options and argv paths.
_SEED = """
import sys, json
input_path, output_path, output_path_2 = sys.argv[1:4]
import nibabel as nib
from totalsegmentator.python_api import totalsegmentator
if __name__ == "__main__":
    # option 1: provide input and output as file paths
    totalsegmentator(input_path, output_path, fast=True, ml=True, device="cpu", quiet=True)
    # option 2: provide input and output as nifti image objects
    input_img = nib.load(input_path)
    output_img = totalsegmentator(input_img, fast=True, device="cpu", quiet=True)
    nib.save(output_img, output_path_2)

from totalsegmentator.nifti_ext_header import load_multilabel_nifti
image_path = output_path
segmentation_nifti_img, label_map_dict = load_multilabel_nifti(image_path)
print(json.dumps(label_map_dict))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def test_seed_examples_match_totalseg(tmp_path, use_home):
    if not CT_SM.exists():
        pytest.skip("example_ct_sm.nii.gz not available")
    from totalseg.run.api import totalsegmentator

    out1, out2, ref = tmp_path / "seg_ml.nii.gz", tmp_path / "seg_img.nii.gz", tmp_path / "ref.nii.gz"
    proc = subprocess.run([sys.executable, "-c", _SEED, str(CT_SM), str(out1), str(out2)],
                          capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels = {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    assert labels[5] == "liver" and len(labels) == 117

    totalsegmentator(CT_SM, ref, fast=True, ml=True, device="cpu", quiet=True)
    expected = nib.load(ref)
    for path in (out1, out2):
        got = nib.load(path)
        assert np.array_equal(np.asanyarray(got.dataobj), np.asanyarray(expected.dataobj))
        assert np.array_equal(got.affine, expected.affine)
        assert got.get_data_dtype() == np.uint8
        assert [e.get_content() for e in got.header.extensions] == \
               [e.get_content() for e in expected.header.extensions]


def test_imports_do_not_load_torch():
    code = ("import sys\nimport totalsegmentator.python_api, totalsegmentator.nifti_ext_header\n"
            "import totalsegmentator.map_to_binary, totalsegmentator.libs\n"
            "import totalsegmentator.statistics, totalsegmentator.config, totalsegmentator.registry\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stderr


def test_python_api_forwards():
    import totalseg.run.api
    from totalsegmentator import python_api

    assert python_api.totalsegmentator is totalseg.run.api.totalsegmentator
    assert python_api.validate_device_type_api("gpu:1") == "gpu:1"
    assert python_api.validate_device_type_api("cpu") == "cpu"
    with pytest.raises(ValueError):
        python_api.validate_device_type_api("cuda")
    assert str(python_api.select_device("cpu")) == "cpu"


def test_class_maps():
    from totalsegmentator.map_to_binary import (class_map, class_map_5_parts, class_map_parts_headneck_muscles,
                                                class_map_parts_mr)
    from totalseg.registry import task_names

    assert class_map["total"][5] == "liver" and len(class_map["total"]) == 117
    assert len(class_map["total_mr"]) == 50
    assert set(task_names()) <= set(class_map)
    assert class_map["appendicular_bones_auxiliary"][13] == "femur"
    parts = class_map_5_parts
    assert list(parts) == ["class_map_part_organs", "class_map_part_vertebrae", "class_map_part_cardiac",
                           "class_map_part_muscles", "class_map_part_ribs"]
    assert [n for p in parts.values() for n in p.values()] == list(class_map["total"].values())
    assert parts["class_map_part_vertebrae"][1] == "sacrum"
    assert [n for p in class_map_parts_mr.values() for n in p.values()] == list(class_map["total_mr"].values())
    headneck = [n for p in class_map_parts_headneck_muscles.values() for n in p.values()]
    assert headneck == list(class_map["headneck_muscles"].values())


def test_nifti_ext_header(tmp_path):
    from totalsegmentator.nifti_ext_header import (add_label_map_to_nifti, load_multilabel_nifti,
                                                   save_multilabel_nifti)
    from totalseg.write.labelmap import label_table_xml

    data = np.zeros((3, 4, 5), dtype=np.uint8)
    data[0, 1, 2], data[2, 3, 4] = 5, 90
    img = nib.Nifti1Image(data, np.eye(4))
    assert add_label_map_to_nifti(img, {5: "liver", 90: "brain"}) is img  # in place, as the official
    assert img.header.extensions[0].get_content() == label_table_xml({5: "liver", 90: "brain"}).encode()
    add_label_map_to_nifti(img, ["a", "b"])  # replaces the table
    assert len(img.header.extensions) == 1 and load_multilabel_nifti(img)[1] == {1: "a", 2: "b"}
    assert load_multilabel_nifti(add_label_map_to_nifti(img, None))[1] == {1: "L5.0", 2: "L90.0"}
    path = tmp_path / "ml.nii.gz"
    save_multilabel_nifti(nib.Nifti1Image(data, np.eye(4)), path, {5: "liver", 90: "brain"})
    loaded, labels = load_multilabel_nifti(path)
    assert labels == {5: "liver", 90: "brain"}
    assert np.array_equal(np.asanyarray(loaded.dataobj), data)


def test_combine_masks(tmp_path):
    from totalsegmentator.libs import combine_masks
    from totalseg.assemble.combine import GROUPS
    from totalseg.write.labelmap import with_label_table

    lobes = GROUPS["lung"][0]
    rng = np.random.default_rng(0)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    masks = {name: (rng.random((6, 7, 8)) > 0.8).astype(np.uint8) for name in (*lobes, "liver")}
    folder = tmp_path / "seg"
    folder.mkdir()
    for name, mask in masks.items():
        nib.save(nib.Nifti1Image(mask, affine), folder / f"{name}.nii.gz")
    union = np.logical_or.reduce([masks[n] > 0 for n in lobes])

    img = combine_masks(folder, "lung")
    assert isinstance(img, nib.Nifti1Image) and img.get_data_dtype() == np.uint8
    assert np.array_equal(np.asanyarray(img.dataobj), union.astype(np.uint8))
    assert np.array_equal(img.affine, affine)
    custom = combine_masks(folder, ["liver", lobes[0]])
    assert np.array_equal(np.asanyarray(custom.dataobj), ((masks["liver"] > 0) | (masks[lobes[0]] > 0)))

    labels = np.zeros((6, 7, 8), dtype=np.uint8)
    label_map = {i: n for i, n in enumerate((*lobes, "liver"), start=1)}
    for i, name in label_map.items():
        labels[masks[name] > 0] = i
    ml = tmp_path / "ml.nii.gz"
    nib.save(with_label_table(nib.Nifti1Image(labels, affine), label_map), ml)
    from_ml = combine_masks(ml, "lung", multilabel=True)
    assert np.array_equal(np.asanyarray(from_ml.dataobj), np.isin(labels, [1, 2, 3, 4, 5]).astype(np.uint8))


def test_get_basic_statistics_equals_the_official_function():
    """totalsegmentator.statistics.get_basic_statistics on a segmentation made before: what the official function
    wrote for the reference fast masks (median, border masks included), and for an official run's labels with
    normalised intensities (tests/data/oracle_extra)."""
    from totalsegmentator.statistics import get_basic_statistics, touches_border

    seg = np.asanyarray(nib.load(REF / "example_seg_fast.nii.gz").dataobj)
    got = get_basic_statistics(seg, CT_SM, task="total", exclude_masks_at_border=False, metric="median", quiet=True)
    assert got == json.loads((REF / "example_seg_fast_median_stats.json").read_text())
    extra = Path(__file__).parent / "data" / "oracle_extra"
    seg = np.asanyarray(nib.load(extra / "fastest_stats_normalized_median.nii.gz").dataobj)
    got = get_basic_statistics(seg, nib.load(CT_SM), None, True, "total", False, None, "median", True)
    assert got == json.loads((extra / "fastest_stats_normalized_median.json").read_text())
    roi = get_basic_statistics(seg, CT_SM, roi_subset=["liver", "spleen"], extra_metrics=True)
    assert list(roi) == ["spleen", "liver"] and "incomplete" not in roi["liver"] and "n_voxels" in roi["liver"]
    cube = np.zeros((10, 10, 10), bool)
    cube[3:7, 3:7, 3:7] = True
    assert not touches_border(cube)
    cube[7, 5, 5] = True  # reaches the last three slices of the first axis
    assert touches_border(cube)


def test_config_module_reads_and_writes_the_home(tmp_path, monkeypatch):
    """totalsegmentator.config on an empty home: no config yet, then one made with a well-formed id; keys and
    licence stored; the offline licence states of the official function."""
    from totalsegmentator import config

    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    assert config.get_totalseg_dir() == tmp_path / "home"
    assert config.get_weights_dir() == tmp_path / "home" / "nnunet" / "results"
    assert config.get_config() is None and config.has_valid_license_offline()[0] == "missing_config_file"
    assert config.set_config_key("a", 1) is None and not (tmp_path / "home" / "config.json").exists()
    made = config.setup_totalseg()
    assert made["totalseg_id"].startswith("totalseg_") and len(made["totalseg_id"]) == 17
    assert config.setup_totalseg("totalseg_OTHER123")["totalseg_id"] == made["totalseg_id"]  # an id stays
    assert config.set_config_key("mirror", "x")["mirror"] == "x" and config.get_config_key("mirror") == "x"
    assert config.get_license_number() == "" and config.has_valid_license_offline()[0] == "missing_license"
    from totalseg.errors import UserError

    with pytest.raises(UserError, match="aca_"):
        config.set_license_number("wrong")
    config.set_license_number("aca_ABCDEFGHIJKLMN")
    assert config.get_license_number() == "aca_ABCDEFGHIJKLMN" and config.has_valid_license_offline()[0] == "yes"
    config.set_license_number("short", skip_validation=True)
    assert config.has_valid_license_offline()[0] == "invalid_license"
    assert json.loads((tmp_path / "home" / "config.json").read_text())["totalseg_id"] == made["totalseg_id"]
