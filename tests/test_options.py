"""The official 2.18.0 options beyond the core ones (issue #15): each works as the official's, or is refused
with one line before any work, or (no effect here) is accepted with a notice.

- Working options against the official outputs in tests/data/oracle_extra (official 2.18.0 on this machine,
  fake_weights_tiny; tests/data/make_oracle_extra.sh, cases listed in its OPTIONS table): 0 differing voxels.
- Refusals and notices through the command line: exit status, the one line, nothing written.
- Every flag of the official `--help` (official-behaviour.md §1.1) parses, and the API keeps the official
  parameters in their order.
"""
from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import REF
from totalseg.cli.totalsegmentator import main, parser
from totalseg.errors import UserError
from totalseg.write.labelmap import load_multilabel_nifti

CT = REF / "example_ct_sm.nii.gz"
EXTRA = Path(__file__).parent / "data" / "oracle_extra"

# Case name -> the options after -i/-o (as in make_oracle_extra.sh, without -rp/-s paths).
CASES = {
    "fast_rmb": ["--fast", "--ml", "-rmb"],
    "fastest_rmb500": ["--fastest", "--ml", "-rmb", "500"],
    "fast_v1o": ["--fast", "--ml", "-v1o"],
    "fast_v1o_roi": ["--fast", "--ml", "-v1o", "-rs", "liver", "aorta", "heart", "kidney_cyst_left"],
    "fastest_lowres": ["--fastest", "--ml", "-sl"],
    "fastest_lowres_files": ["--fastest", "-sl"],
    "fastest_stats": ["--fastest", "--ml"],
    "fastest_ho_legacy": ["--fastest", "--ml", "--higher_order_resampling_LEGACY"],
    "fastest_ho_legacy_roi": ["--fastest", "--ml", "--higher_order_resampling_LEGACY",
                              "-rs", "trachea", "vertebrae_T9", "liver"],
}


def _assert_same_image(ours: Path, theirs: Path, table: bool = True) -> None:
    a, b = nib.load(ours), nib.load(theirs)
    assert a.shape == b.shape and a.get_data_dtype() == b.get_data_dtype(), ours.name
    assert np.allclose(a.affine, b.affine, atol=1e-6), ours.name
    assert a.header["sform_code"] == b.header["sform_code"] and a.header["qform_code"] == b.header["qform_code"]
    differ = int((np.asanyarray(a.dataobj) != np.asanyarray(b.dataobj)).sum())
    assert differ == 0, f"{ours.name}: {differ} voxels differ from the official output"
    if table:
        assert load_multilabel_nifti(ours)[1] == load_multilabel_nifti(theirs)[1], ours.name


def _run_case(name: str, tmp_path: Path, extra: list[str] = (), quiet: bool = True) -> Path:
    ml = "--ml" in CASES[name]
    out = tmp_path / (f"{name}.nii.gz" if ml else name)
    args = ["-i", str(CT), "-o", str(out), *CASES[name], *extra, "-d", "cpu"] + (["-q"] if quiet else [])
    assert main(args) == 0
    return out


@pytest.mark.parametrize("name", ["fast_rmb", "fastest_rmb500", "fast_v1o", "fast_v1o_roi", "fastest_lowres",
                                  "fastest_ho_legacy", "fastest_ho_legacy_roi"])
def test_option_case_matches_official(name, use_home, tmp_path):
    out = _run_case(name, tmp_path, ["-rp", str(tmp_path / "report.json")] if name == "fast_rmb" else [])
    _assert_same_image(out, EXTRA / out.name)
    if name == "fast_rmb":
        _assert_report_like_official(tmp_path / "report.json", EXTRA / "fast_rmb_report.json", out)


def _assert_report_like_official(ours: Path, theirs: Path, output: Path) -> None:
    import torch

    a, b = json.loads(ours.read_text()), json.loads(theirs.read_text())
    assert list(a)[: len(b)] == list(b)  # the official keys, in order; ours adds totalseg_version and engine
    for key in b:
        if key in ("input", "output", "runtime_seconds", "nnunetv2_version", "torch_version"):
            continue
        assert a[key] == b[key], key
    assert a["input"] == str(CT) and a["output"] == str(output)
    assert a["nnunetv2_version"] is None and a["torch_version"] == torch.__version__
    assert a["runtime_seconds"] > 0 and a["engine"] == "exact"


def test_save_lowres_files_match_official(use_home, tmp_path, capsys):
    """Per-class files at model resolution; -ns sets the writer's threads, -nr the resampling's (same files),
    -cp only says it does nothing, -v adds timings, and --report lists the files."""
    extra = ["-ns", "2", "-nr", "4", "-cp", str(tmp_path / "nowhere"), "-v", "-rp", str(tmp_path / "r.json")]
    out = _run_case("fastest_lowres_files", tmp_path, extra, quiet=False)
    theirs = EXTRA / "fastest_lowres_files"
    names = sorted(p.name for p in theirs.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names and len(names) == 117
    for name in names:
        _assert_same_image(out / name, theirs / name, table=False)
    err = capsys.readouterr().err
    assert "-cp/--crop_path has no effect" in err and "nr_thr_resamp" not in err
    assert "predicted on cpu in" in err and "saved in" in err and "resampled to 6 mm in" in err
    assert json.loads((tmp_path / "r.json").read_text())["output_files"] == names
    assert not (tmp_path / "nowhere").exists()


def test_fastest_statistics_match_official(use_home, tmp_path):
    """--fastest statistics come from the input grid (the official computes them at model resolution
    with --fast only)."""
    from parity import assert_statistics_parity

    out = _run_case("fastest_stats", tmp_path, ["-s", str(tmp_path / "stats.json")])
    _assert_same_image(out, EXTRA / out.name)
    assert_statistics_parity(tmp_path / "stats.json", EXTRA / "fastest_stats.json")


# API cases (no flag): the options given to the official Python API (API table of make_oracle_extra.sh).
API_CASES = {
    "fast_stats_normalized": dict(fast=True, ml=True, statistics_normalized_intensities=True),
    "fastest_stats_normalized_median": dict(fastest=True, ml=True, statistics_normalized_intensities=True,
                                            stats_aggregation="median", statistics_exclude_masks_at_border=False),
}


@pytest.mark.parametrize("name", sorted(API_CASES))
def test_normalized_statistics_match_official(name, use_home, tmp_path):
    """statistics_normalized_intensities: (ct - min) / (max - min) of the image the statistics are taken on (the
    model's grid with --fast, the input's otherwise), then mean or median per class, as the official API."""
    from parity import assert_statistics_parity
    from totalseg import totalsegmentator

    out = tmp_path / f"{name}.nii.gz"
    totalsegmentator(CT, out, statistics=tmp_path / "stats.json", device="cpu", quiet=True, **API_CASES[name])
    _assert_same_image(out, EXTRA / out.name)
    assert_statistics_parity(tmp_path / "stats.json", EXTRA / f"{name}.json")
    values = [entry["intensity"] for entry in json.loads((tmp_path / "stats.json").read_text()).values()]
    assert all(0.0 <= v <= 1.0 for v in values) and any(0.0 < v < 1.0 for v in values)


def _sheared_ct(dst: Path) -> Path:
    """The fast_sheared input, built as make_oracle_extra.sh builds it (tests/data/make_sheared_ct.py)."""
    import importlib.util

    script = Path(__file__).parent / "data" / "make_sheared_ct.py"
    spec = importlib.util.spec_from_file_location("make_sheared_ct", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_sheared_ct(CT, dst)


def test_sheared_input_matches_official(use_home, tmp_path, capsys):
    """A sheared affine (axes 74.6-88 degrees apart, pixdim unlike the column lengths) is segmented as the
    official does, with one warning; the output keeps the input's affine and header."""
    src = _sheared_ct(tmp_path / "sheared.nii.gz")
    out = tmp_path / "fast_sheared.nii.gz"
    report = tmp_path / "report.json"
    assert main(["-i", str(src), "-o", str(out), "--fast", "--ml", "-d", "cpu", "-rp", str(report)]) == 0
    _assert_same_image(out, EXTRA / out.name)
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("WARNING:") and "field of view" not in line]  # the cut-off check's line
    assert len(warnings) == 1 and "sheared grid (axes 74.6 degrees apart" in warnings[0], warnings
    assert f"WARNING: {json.loads(report.read_text())['warnings'][0]}" == warnings[0]  # the reader's, reported
    assert "3.027 x 3 x 3.008 mm" in warnings[0] and "LAS" in warnings[0]
    ours, given = nib.load(out), nib.load(src)
    assert np.array_equal(ours.affine, given.affine)
    same = ("sform_code", "qform_code", "srow_x", "srow_y", "srow_z", "quatern_b", "quatern_c", "quatern_d",
            "qoffset_x", "qoffset_y", "qoffset_z", "pixdim")
    assert all(np.array_equal(ours.header[k], given.header[k]) for k in same)


def _refused(args: list[str], tmp_path: Path, capsys, fragment: str) -> None:
    out = tmp_path / "out"
    assert main(["-i", str(CT), "-o", str(out), *args, "-d", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ERROR: ") and fragment in err[0], err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, fragment", [
    (["-sp", "{tmp}"], "--save_probabilities takes a file path"),
    (["--high_order_resampling_LEGACY", "-v1o", "-rs", "liver", "-q"], "with --v1_order and --roi_subset"),
    (["--test", "1"], "--test is internal to the official test suite"),
    (["-t", "project1"], "--nora_tag calls a local NORA installation"),
    (["-ms", "small"], "model_size='small' is currently only supported for task 'total_v3'."),
    (["-ns", "0"], "--nr_thr_saving must be at least 1"),
    (["-sl"], "save_lowres only works together with fast or fastest mode."),
    (["-sl", "--fast", "-rs", "liver"], "save_lowres is not supported together with cropping, roi_subset"),
    (["-sl", "--fast", "-bs"], "save_lowres is not supported together with cropping, roi_subset"),
    (["-sl", "--fast", "-ta", "body"], "the body task's derived masks"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_refused_before_any_work(args, fragment, use_home, tmp_path, capsys):
    _refused([a.replace("{tmp}", str(tmp_path)) for a in args], tmp_path, capsys, fragment)


def test_refused_dicom_output_combinations(use_home, tmp_path, capsys):
    dicom = REF / "example_ct_dicom"
    if not dicom.is_dir():
        pytest.skip("no example_ct_dicom")
    for args, fragment in ((["-v1o"], "--v1_order cannot be combined with DICOM output"),
                           (["--fast", "-sl"], "save_lowres only supports nifti output.")):
        out = tmp_path / "seg.dcm"
        assert main(["-i", str(dicom), "-o", str(out), "-ot", "dicom_seg", *args, "-d", "cpu", "-q"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err
        assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("options, fragment", [
    ({"plans": "nnUNetResEncUNetLPlans"}, "plans 'nnUNetResEncUNetLPlans' is not supported"),
    ({"model_size": "medium"}, "model_size must be 'big' or 'small'."),
    ({"remove_small_blobs": -5}, "--remove_small_blobs takes a size in mm3 greater than 0"),
])
def test_api_only_options_refused(options, fragment, use_home, tmp_path):
    from totalseg.run.api import totalsegmentator

    with pytest.raises(UserError, match=re.escape(fragment)):
        totalsegmentator(CT, tmp_path / "out", device="cpu", fast=True, **options)
    assert list(tmp_path.iterdir()) == []


def test_remove_small_blobs_needs_a_positive_size(capsys):
    with pytest.raises(SystemExit) as e:
        main(["-i", str(CT), "-o", "x", "-rmb", "0"])
    assert e.value.code == 2 and "Value must be greater than 0." in capsys.readouterr().err


def test_notices_and_debug(use_home, tmp_path, capsys, monkeypatch):
    """-v1o on another task and -cp say they have no effect; --debug names input and task on an
    unexpected error. (The prediction is replaced: these happen before or around it.)"""
    import totalseg.run.steps

    def boom(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(totalseg.run.steps, "segment", boom)
    args = ["-i", str(CT), "-o", str(tmp_path / "o.nii.gz"), "--ml", "-ta", "body", "--fast", "-v1o",
            "-cp", str(tmp_path), "-nr", "2", "--debug", "-d", "cpu"]
    with pytest.raises(RuntimeError, match="boom"):
        main(args)
    err = capsys.readouterr().err
    assert "--v1_order applies to task total only" in err
    assert "-cp/--crop_path has no effect" in err
    assert f"Error during prediction for input: {CT}, task: body" in err
    assert list(tmp_path.iterdir()) == []


# Every flag of the official 2.18.0 `TotalSegmentator --help` (official-behaviour.md §1.1), with a value
# where it takes one, and the dest the official passes on.
OFFICIAL_FLAGS = [
    (["-ot", "nifti"], "output_type"), (["--output_type", "dicom_seg"], "output_type"),
    (["-ml"], "ml"), (["--ml"], "ml"), (["-nr", "2"], "nr_thr_resamp"), (["--nr_thr_resamp", "2"], "nr_thr_resamp"),
    (["-ro", "3"], "resampling_order"), (["--resampling_order", "0"], "resampling_order"),
    (["-ns", "2"], "nr_thr_saving"), (["--nr_thr_saving", "1"], "nr_thr_saving"),
    (["-f"], "fast"), (["--fast"], "fast"), (["-ff"], "fastest"), (["--fastest"], "fastest"),
    (["-sl"], "save_lowres"), (["--save_lowres"], "save_lowres"), (["-t", "p"], "nora_tag"),
    (["--nora_tag", "p"], "nora_tag"), (["-p"], "preview"), (["--preview"], "preview"),
    (["-ta", "body"], "task"), (["--task", "body"], "task"), (["-ms", "small"], "model_size"),
    (["--model_size", "big"], "model_size"), (["-rs", "liver", "aorta"], "roi_subset"),
    (["--roi_subset", "liver"], "roi_subset"), (["-rsr", "liver"], "roi_subset_robust"),
    (["--roi_subset_robust", "liver"], "roi_subset_robust"), (["-rc"], "robust_crop"),
    (["--robust_crop"], "robust_crop"),
    (["--higher_order_resampling_LEGACY"], "higher_order_resampling_LEGACY"),
    (["--high_order_resampling_LEGACY"], "higher_order_resampling_LEGACY"),
    (["-ho"], "higher_order_resampling"), (["--higher_order_resampling"], "higher_order_resampling"),
    (["--high_order_resampling"], "higher_order_resampling"), (["-s"], "statistics"),
    (["--statistics", "s.json"], "statistics"), (["-r"], "radiomics"), (["--radiomics"], "radiomics"),
    (["-rp", "r.json"], "report"), (["--report", "r.json"], "report"), (["-sii"], "stats_include_incomplete"),
    (["--stats_include_incomplete"], "stats_include_incomplete"), (["-sa", "median"], "stats_aggregation"),
    (["--stats_aggregation", "mean"], "stats_aggregation"), (["-sx"], "statistics_extra"),
    (["--statistics_extra"], "statistics_extra"), (["-cp", "c"], "crop_path"), (["--crop_path", "c"], "crop_path"),
    (["-bs"], "body_seg"), (["--body_seg"], "body_seg"), (["-fs"], "force_split"), (["--force_split"], "force_split"),
    (["-ss"], "skip_saving"), (["--skip_saving"], "skip_saving"), (["-ndm"], "no_derived_masks"),
    (["--no_derived_masks"], "no_derived_masks"), (["-v1o"], "v1_order"), (["--v1_order"], "v1_order"),
    (["-rmb"], "remove_small_blobs"), (["--remove_small_blobs", "50"], "remove_small_blobs"),
    (["-d", "gpu:1"], "device"), (["--device", "cpu"], "device"), (["-q"], "quiet"), (["--quiet"], "quiet"),
    (["-v"], "verbose"), (["--verbose"], "verbose"), (["-sp", "p.npz"], "save_probabilities"),
    (["--save_probabilities", "p.npz"], "save_probabilities"), (["--debug"], "debug"),
    (["-l", "aca_12345678901234"], "license_number"), (["--license_number", "aca_1"], "license_number"),
    (["--test", "1"], "test"), (["-lt"], "list_tasks"), (["--list-tasks"], "list_tasks"),
    (["-lc"], "list_classes"), (["--list-classes", "body"], "list_classes"),
]


@pytest.mark.parametrize("flag, dest", OFFICIAL_FLAGS, ids=[" ".join(f) for f, _ in OFFICIAL_FLAGS])
def test_parser_accepts_every_official_flag(flag, dest):
    args = parser().parse_args(["-i", "ct.nii.gz", "-o", "out", *flag])
    default = parser().parse_args(["-i", "ct.nii.gz", "-o", "out"])
    assert getattr(args, dest) != getattr(default, dest) or flag[-1] in ("big", "mean", "cpu", "nifti")


def test_parser_values_as_official():
    args = parser().parse_args(["-i", "a", "-o", "b", "-rmb"])
    assert args.remove_small_blobs == 200.0
    assert parser().parse_args(["-i", "a", "-o", "b"]).remove_small_blobs is False
    for bad in (["--test", "2"], ["-rmb", "-1"], ["-ms", "medium"], ["-ro", "6"]):
        with pytest.raises(SystemExit):
            parser().parse_args(["-i", "a", "-o", "b", *bad])


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and "2.18.0" in capsys.readouterr().out


OFFICIAL_API = ["input", "output", "ml", "nr_thr_resamp", "nr_thr_saving", "fast", "nora_tag", "preview", "task",
                "roi_subset", "statistics", "radiomics", "crop_path", "body_seg", "force_split", "output_type",
                "quiet", "verbose", "test", "skip_saving", "device", "license_number",
                "statistics_exclude_masks_at_border", "no_derived_masks", "v1_order", "fastest",
                "roi_subset_robust", "stats_aggregation", "remove_small_blobs",
                "statistics_normalized_intensities", "robust_crop", "higher_order_resampling_LEGACY",
                "higher_order_resampling", "save_probabilities", "debug", "report", "statistics_extra",
                "save_lowres", "resampling_order", "plans", "model_size"]


def test_api_has_the_official_parameters_in_order():
    from totalseg.run.api import totalsegmentator

    names = list(inspect.signature(totalsegmentator).parameters)
    assert names[: len(OFFICIAL_API)] == OFFICIAL_API


def test_remove_small_blobs_rule():
    """Components of at most mm3 / voxel volume voxels go, per class, 6-connected (diagonal voxels are apart)."""
    from totalseg.assemble.postprocess import remove_small_components as remove_small_blobs

    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    labels[0, 0, 0:2] = 1  # 2 voxels: exactly at the threshold -> removed
    labels[4, 4, 0:3] = 1  # 3 voxels -> kept
    labels[6, 6, 6] = labels[7, 7, 7] = 2  # two diagonal single voxels: two components -> both removed
    labels[2, 2, 4:7] = 2  # 3 voxels of class 2 -> kept
    labels[2, 3, 4] = 3  # touches class 2 but is its own class: 1 voxel -> removed
    remove_small_blobs(labels, {1: "a", 2: "b", 3: "c"}, np.array([2.0, 2.0, 2.0], dtype=np.float32), 16)
    assert labels[0, 0, 0:2].sum() == 0 and (labels[4, 4, 0:3] == 1).all()
    assert labels[6, 6, 6] == labels[7, 7, 7] == 0 and (labels[2, 2, 4:7] == 2).all() and labels[2, 3, 4] == 0
