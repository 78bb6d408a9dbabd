"""totalseg_spine_report: the official 2.18.0 spine report's JSON, files, log and page from the reference masks.

The reference (``totalseg_reference/spine_report``) holds the official masks of the abdomen CT
(``test_result/totalseg_vertebrae_pp_refined.nii.gz``, its ``contrast_phase.json``) and the official report
(``example_ct_report/spine_report.json``). Given in the working folder (``-tmp``), the masks are used as they are
and no model runs. Where the official venv is present, its measurement code runs here on the same masks and
on resampled / reoriented / cut copies of them, and the numbers must be identical.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import REF
from totalseg.cli.spine_report import main

SPINE = REF / "spine_report"
MASKS = SPINE / "test_result" / "totalseg_vertebrae_pp_refined.nii.gz"
CT = REF / "example_ct.nii.gz"
OFFICIAL_JSON = SPINE / "example_ct_report" / "spine_report.json"


def _workdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(MASKS, path)
    shutil.copy(SPINE / "test_result" / "contrast_phase.json", path)
    return path


def _measure(ct_img, seg_img, spine_range="all"):
    from totalseg.clinical.spine import heights_json, measure_vertebrae
    from totalseg.write.labelmap import load_multilabel_nifti

    seg, label_map = load_multilabel_nifti(seg_img)
    ct, seg = nib.as_closest_canonical(ct_img), nib.as_closest_canonical(seg)
    found = measure_vertebrae(ct.get_fdata(), np.asanyarray(seg.dataobj), label_map, ct.header.get_zooms(),
                              spine_range)
    return heights_json(found)


@pytest.fixture(scope="module")
def tmp_run(tmp_path_factory):
    """One report with -tmp and -r: (folder, exit status)."""
    if not MASKS.exists():
        pytest.skip("../shared/data/totalseg_reference/spine_report is not available")
    root = tmp_path_factory.mktemp("spine_tmp")
    work = _workdir(root / "work")
    nodeinfo = root / "node" / "nodeinfo.json"
    nodeinfo.parent.mkdir()
    shutil.copy(SPINE / "example_nodeinfo.json", nodeinfo)
    rc = main(["-i", str(CT), "-n", str(nodeinfo), "-o", str(root / "out" / "spine_report.nii.gz"),
               "-j", str(root / "out" / "spine_report.json"), "-l", str(root / "out" / "spine_report.log"),
               "-tmp", str(work), "-r"])
    return root, rc


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory):
    """One report with --debug and -sr lumbar, without nodeinfo: (folder, exit status)."""
    if not MASKS.exists():
        pytest.skip("../shared/data/totalseg_reference/spine_report is not available")
    out = _workdir(tmp_path_factory.mktemp("spine_debug"))
    rc = main(["-i", str(CT), "-o", str(out / "spine_report.nii.gz"), "-j", str(out / "spine_report.json"),
               "-l", str(out / "spine_report.log"), "--debug", "-sr", "lumbar"])
    return out, rc


def test_json_equals_official_reference(tmp_run):
    root, rc = tmp_run
    assert rc == 0
    ours = json.loads((root / "out" / "spine_report.json").read_text())
    official = json.loads(OFFICIAL_JSON.read_text())
    assert ours == official
    assert list(ours["results"]) == list(official["results"])  # same key order too
    # The working folder keeps the masks, the phase and the heights (indent 2), and loses the pictures.
    work = root / "work"
    assert sorted(p.name for p in work.iterdir()) == ["contrast_phase.json", "spine_report_heights.json",
                                                      "totalseg_vertebrae_pp_refined.nii.gz"]
    assert json.loads((work / "spine_report_heights.json").read_text()) == official["results"]
    assert (work / "spine_report_heights.json").read_text().startswith('{\n  "vertebrae_L1')
    runtime = json.loads((root / "node" / "META" / "runtime.json").read_text())
    assert set(runtime) == {"spine_report"} and 0 < runtime["spine_report"] < 600


def test_log_as_official(tmp_run):
    root, _ = tmp_run
    lines = (root / "out" / "spine_report.log").read_text().splitlines()
    messages = [line.split(" ", 1)[1] for line in lines]
    assert all(len(line.split(" ", 1)[0]) == 5 and line[2] == ":" for line in lines)  # HH:MM
    page = nib.load(root / "out" / "spine_report.nii.gz")
    assert messages == ["Getting metadata...", "age: 55", "Creating report...",
                        "  Skipping TotalSeg vertebrae_pp_refined (already exists)",
                        "  Skipping totalseg_get_phase (already exists)",
                        f"width: {page.shape[0]}, height: {page.shape[1]}"]


def test_debug_files_and_page(debug_run):
    from matplotlib.image import imread

    from totalseg.clinical.common import nifti_to_pages

    out, rc = debug_run
    assert rc == 0
    names = {p.name for p in out.iterdir()}
    assert {"spine_report_preview_DEBUG.png", "spine_report_combined_preview.png", "spine_report_frontpage.png",
            "spine_report_heights.json", "spine_report.nii.gz", "spine_report.json",
            "spine_report.log"} <= names
    img = nib.load(out / "spine_report.nii.gz")
    assert img.header["datatype"] == 128 and img.shape[2] == 1  # RGB24, one page
    assert np.array_equal(img.affine, np.diag([-1.0, -1.0, 1.0, 1.0]))
    page = nifti_to_pages(img)[0]
    png = (imread(out / "spine_report_frontpage.png")[..., :3] * 255).round().astype(np.uint8)
    assert np.array_equal(page, png)
    assert page.shape[1] == 1200 and 900 < page.shape[0] < 1500
    # Fractures (L1, L3-L5 differ by > 20 %): the status box on the left is red.
    box = page[300:700, 50:500].reshape(-1, 3)
    assert np.median(box, axis=0).tolist() == [255, 0, 0]
    # The sagittal picture on the right shows the yellow labels of the flagged vertebrae.
    right = page[200:1000, 620:1180].astype(int)
    yellow = (right[..., 0] > 200) & (right[..., 1] > 200) & (right[..., 2] < 80)
    assert yellow.sum() > 200
    report = json.loads((out / "spine_report.json").read_text())
    assert report["metadata"]["PatientAge"] == 99 and report["metadata"]["version"] == "0.1.0"
    assert "WARNING: Could not find nodeinfo.json. Using default metadata." in (out / "spine_report.log").read_text()
    assert report["results"] == json.loads(OFFICIAL_JSON.read_text())["results"]  # L1-L5 are all lumbar


def test_reference_page_decodes():
    """The official page NIfTI decodes to an upright page: black first column and last row, title on top."""
    from totalseg.clinical.common import nifti_to_pages, pages_to_nifti

    ref = nib.load(SPINE / "example_ct_report" / "spine_report.nii.gz")
    page = nifti_to_pages(ref)[0]
    assert page.shape == (ref.shape[1] - 1, ref.shape[0] - 1, 3)
    assert np.array_equal(np.asanyarray(pages_to_nifti([page]).dataobj), np.asanyarray(ref.dataobj))
    # Light title text in the top band, dark page below it; footer text at the bottom.
    assert page[:60, 400:800].max() > 200 and page[-40:, :400].max() > 150


def test_spine_range_keeps_neighbours_for_orientation():
    ct, seg = nib.load(CT), nib.load(MASKS)
    full = json.loads(OFFICIAL_JSON.read_text())["results"]
    part = _measure(ct, seg, "l1_l4")
    # L5 only orients L4 (and T12 L1): L1-L4 are measured as with the whole spine.
    assert set(part) == {k for k in full if not k.startswith("vertebrae_L5")}
    assert all(part[k] == full[k] for k in part if k != "LWS_max")
    assert part["LWS_max"] == max(part[f"vertebrae_L{k}_height_difference"] for k in range(1, 5))


def test_cut_vertebrae_are_skipped():
    ct, seg = nib.load(CT), nib.load(MASKS)
    top = 60  # cuts through L3
    cut = nib.Nifti1Image(np.asanyarray(seg.dataobj)[:, :, :top], seg.affine, seg.header)
    res = _measure(nib.Nifti1Image(np.asanyarray(ct.dataobj)[:, :, :top], ct.affine), cut)
    labels = np.asanyarray(seg.dataobj)[:, :, :top]
    from totalseg.clinical.spine import ordered_vertebrae
    from totalseg.write.labelmap import load_multilabel_nifti

    names = dict((k, v) for k, v in ordered_vertebrae(load_multilabel_nifti(MASKS)[1]))
    touching = {names[k] for k in np.unique(labels[:, :, -1]) if k}
    measured = {k[: -len("_volume_ml")] for k in res if k.endswith("_volume_ml")}
    assert touching and not touching & measured
    assert measured == {names[k] for k in np.unique(labels) if k} - touching


def test_no_vertebrae_gives_empty_report(tmp_path):
    from totalseg.write.labelmap import load_multilabel_nifti, save_multilabel_nifti

    seg, label_map = load_multilabel_nifti(MASKS)
    work = tmp_path / "work"
    work.mkdir()
    empty = nib.Nifti1Image(np.zeros(seg.shape, np.uint8), seg.affine)
    save_multilabel_nifti(empty, work / MASKS.name, label_map)
    (work / "contrast_phase.json").write_text(json.dumps({"phase": "portal_venous"}))
    rc = main(["-i", str(CT), "-o", str(tmp_path / "r.nii.gz"), "-j", str(tmp_path / "r.json"),
               "-l", str(tmp_path / "r.log"), "-tmp", str(work)])
    assert rc == 0
    assert json.loads((tmp_path / "r.json").read_text())["results"] == {"LWS_max": None}
    from totalseg.clinical.common import nifti_to_pages

    page = nifti_to_pages(nib.load(tmp_path / "r.nii.gz"))[0]
    assert np.median(page[300:700, 50:500].reshape(-1, 3), axis=0).tolist() == [255, 0, 0]


def test_missing_model_is_one_line_error(use_home, tmp_path, capsys):
    """No masks given and no vertebrae_pp weights in the home (nor a network): one line, nothing written."""
    rc = main(["-i", str(CT), "-o", str(tmp_path / "r.nii.gz"), "-j", str(tmp_path / "r.json"),
               "-l", str(tmp_path / "r.log"), "-tmp", str(tmp_path / "work")])
    err = capsys.readouterr().err
    assert rc == 1
    errors = [line for line in err.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and "803" in errors[0] and "Traceback" not in err
    assert not (tmp_path / "r.nii.gz").exists() and not (tmp_path / "r.json").exists()


def test_user_errors(tmp_path, capsys):
    assert main(["-i", str(tmp_path / "nope.nii.gz"), "-o", "o.nii.gz", "-j", "o.json", "-l", "o.log"]) == 1
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "nodeinfo.json"
    bad.write_text(json.dumps({"PatientAge": "045M"}))
    work = _workdir(tmp_path / "work")
    assert main(["-i", str(CT), "-n", str(bad), "-o", str(tmp_path / "o.nii.gz"), "-j", str(tmp_path / "o.json"),
                 "-l", str(tmp_path / "o.log"), "-tmp", str(work)]) == 1
    err = capsys.readouterr().err
    assert err.count("ERROR:") == 1 and "045M" in err and not (tmp_path / "o.json").exists()


def test_age_from_dates_and_header_phase(tmp_path):
    import logging

    import pydicom
    from pydicom.dataset import FileMetaDataset

    from totalseg.cli.spine_report import _metadata
    from totalseg.clinical.common import header_phase

    node = tmp_path / "n.json"
    node.write_text(json.dumps({"PatientAge": "", "PatientBirthDate": "19500615", "StudyDate": "20200614"}))
    assert _metadata(node, logging.getLogger("t"))["PatientAge"] == 69
    node.write_text(json.dumps({"PatientSex": "F"}))
    assert _metadata(node, logging.getLogger("t"))["PatientAge"] == 120
    # The phase from the DICOM header stored beside the converted series.
    nifti = tmp_path / "study" / "nifti" / "ct_s004_a01.nii.gz"
    header = tmp_path / "study" / "DICOM" / "DICOMHEADER_s004_a01.dcm"
    header.parent.mkdir(parents=True)
    ds = pydicom.Dataset()
    ds.SeriesTime, ds.AcquisitionTime, ds.ContentTime, ds.ContrastBolusStartTime = ("101530", "101530",
                                                                                   "101530.5", "101400")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(header, enforce_file_format=True)
    assert header_phase(nifti) == ("portal_venous", 90.5)
    assert header_phase(tmp_path / "study" / "nifti" / "ct_s005.nii.gz") == ("error", -100.0)


def test_help_without_torch():
    code = ("import sys\nfrom totalseg.cli.spine_report import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\nassert 'torch' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--ct_path", "--nodeinfo", "--output_nifti", "--output_json", "--output_log", "-tmp", "--test",
                 "--original_nifti_path", "--spine_range", "--totalseg_parallel", "--save_runtime", "--debug",
                 "--version"):
        assert flag in proc.stdout


# --- the official 2.18.0 measurement code, run here on the same masks ------------------------------------------

def _official_python() -> Path | None:
    venv = os.environ.get("TOTALSEG_OFFICIAL_VENV")
    if not venv:
        from importlib.metadata import version

        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        venv = cache / "totalseg" / f"official-2.18.0-torch{version('torch').split('+')[0]}-py{py}"
    python = Path(venv) / "bin" / "python"
    return python if python.exists() else None


_OFFICIAL = """
import json, sys, io, contextlib, warnings
from pathlib import Path
import nibabel as nib
warnings.simplefilter("ignore")
from totalsegmentator.nifti_ext_header import load_multilabel_nifti
from totalsegmentator.spine_report.measure_verte_height import get_verte_height
out = {}
for case in json.loads(sys.argv[1]):
    ct = nib.as_closest_canonical(nib.load(case["ct"]))
    seg, labels = load_multilabel_nifti(case["seg"])
    seg = nib.as_closest_canonical(seg)
    with contextlib.redirect_stdout(io.StringIO()):
        get_verte_height(ct, seg, labels, seg, {}, None, None, case["out"], False,
                         horizontal_mask_type="raw", spine_range=case["range"])
    out[case["name"]] = json.loads(Path(case["out"]).read_text())
print(json.dumps(out))
"""


def _variants(tmp: Path) -> list[dict]:
    """The reference masks as given, on a finer z grid, on a 1 mm y grid, in LPS, and cut at the top."""
    ct, seg = nib.load(CT), nib.load(MASKS)
    c, s = np.asanyarray(ct.dataobj).astype(np.int16), np.asanyarray(seg.dataobj)
    cases = [("as_given", c, s, ct.affine, "all")]
    aff = ct.affine.copy()
    aff[:, 2] *= 0.5
    cases.append(("z_1.5mm", np.repeat(c, 2, axis=2), np.repeat(s, 2, axis=2), aff, "lumbar"))
    aff = ct.affine.copy()
    aff[:, 1] /= 3
    cases.append(("y_1mm", np.repeat(c, 3, axis=1), np.repeat(s, 3, axis=1), aff, "thoracic_lumbar"))
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = np.array(c.shape[:2]) - 1
    cases.append(("lps", c[::-1, ::-1].copy(), s[::-1, ::-1].copy(), ct.affine @ flip, "l1_l4"))
    cases.append(("cut", c[:, :, :60].copy(), s[:, :, :60].copy(), ct.affine, "all"))
    out = []
    for name, cd, sd, affine, spine_range in cases:
        seg_img = nib.Nifti1Image(sd, affine)
        for ext in seg.header.extensions:
            seg_img.header.extensions.append(ext)
        nib.save(nib.Nifti1Image(cd, affine), tmp / f"{name}_ct.nii.gz")
        nib.save(seg_img, tmp / f"{name}_seg.nii.gz")
        out.append({"name": name, "ct": str(tmp / f"{name}_ct.nii.gz"), "seg": str(tmp / f"{name}_seg.nii.gz"),
                    "out": str(tmp / f"{name}_official.json"), "range": spine_range})
    return out


@pytest.mark.official
def test_same_numbers_as_official_here(tmp_path):
    python = _official_python()
    if python is None or not MASKS.exists():
        pytest.skip("the official TotalSegmentator 2.18.0 venv is not made on this machine")
    cases = _variants(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run([str(python), "-c", _OFFICIAL, json.dumps(cases)], capture_output=True, text=True,
                          timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    official = json.loads(proc.stdout.strip().splitlines()[-1])
    for case in cases:
        ours = _measure(nib.load(case["ct"]), nib.load(case["seg"]), case["range"])
        assert ours == official[case["name"]], case["name"]
        assert list(ours) == list(official[case["name"]]), case["name"]
    assert sum(k.endswith("_volume_ml") for k in official["as_given"]) == 5


def test_small_image_stops_as_official(tmp_path):
    """An image under 20 voxels along an axis: the official log line, status 0 and no report."""
    ct = nib.load(CT)
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(ct.dataobj)[:, :, :15], ct.affine), small)
    rc = main(["-i", str(small), "-o", str(tmp_path / "r.nii.gz"), "-j", str(tmp_path / "r.json"),
               "-l", str(tmp_path / "r.log")])
    assert rc == 0 and not (tmp_path / "r.json").exists() and not (tmp_path / "r.nii.gz").exists()
    assert (tmp_path / "r.log").read_text().splitlines()[-1].endswith("WARNING: Image shape is very small. Stopping.")


def _chest_case(tmp: Path) -> dict:
    """The 512 x 512 x 141 chest CT (0.98 x 0.98 x 2 mm, LPS) with made-up vertebrae: its largest bone
    component near the midline, cut into 12-slice pieces labelled T1, T2, ... (shapes as real as the bone)."""
    from scipy import ndimage

    from totalseg.write.labelmap import load_multilabel_nifti, save_multilabel_nifti

    ct = nib.load(REF.parent / "extra_ct" / "itkelastix_chest_ct.nii.gz")
    c = np.asanyarray(ct.dataobj)
    band = np.zeros(c.shape, bool)
    band[c.shape[0] // 2 - 35:c.shape[0] // 2 + 35] = True
    parts, n = ndimage.label((c > 180) & band)
    spine = parts == 1 + np.argmax(ndimage.sum(parts > 0, parts, range(1, n + 1)))
    seg = np.zeros(c.shape, np.uint8)
    for k, z0 in enumerate(range(2, c.shape[2] - 2, 13)):
        seg[:, :, z0:z0 + 12][spine[:, :, z0:z0 + 12]] = 8 + k  # vertebrae_T1 = 8
    save_multilabel_nifti(nib.Nifti1Image(seg, ct.affine), tmp / "chest_seg.nii.gz", load_multilabel_nifti(MASKS)[1])
    return {"name": "chest", "ct": str(REF.parent / "extra_ct" / "itkelastix_chest_ct.nii.gz"),
            "seg": str(tmp / "chest_seg.nii.gz"), "out": str(tmp / "chest_official.json"), "range": "all"}


@pytest.mark.slow
@pytest.mark.official
def test_same_numbers_as_official_on_a_chest_ct(tmp_path):
    """A realistic size (the official code needs 1-2 minutes here, ours about 10 s)."""
    python = _official_python()
    if python is None or not (REF.parent / "extra_ct" / "itkelastix_chest_ct.nii.gz").exists():
        pytest.skip("the official venv or ../shared/data/extra_ct is not available")
    case = _chest_case(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run([str(python), "-c", _OFFICIAL, json.dumps([case])], capture_output=True, text=True,
                          timeout=1800, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    official = json.loads(proc.stdout.strip().splitlines()[-1])["chest"]
    ours = _measure(nib.load(case["ct"]), nib.load(case["seg"]))
    assert ours == official and list(ours) == list(official)
    assert sum(k.endswith("_volume_ml") for k in ours) >= 8


# The official page goes through wkhtmltoimage (imgkit), which Debian no longer ships: headless Chromium
# renders the same HTML instead, so that the official command runs to its end here.
_OFFICIAL_CLI = """
import subprocess, sys
from pathlib import Path
import imgkit

def from_string(html, output_file, options=None):
    page = Path(str(output_file) + ".chromium.html")
    page.write_text(html)
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={output_file}", "--window-size=1200,1600", f"file://{page}"],
                   check=True, capture_output=True)
    return True

imgkit.from_string = from_string
sys.argv = ["totalseg_spine_report"] + sys.argv[1:]
from totalsegmentator.bin.totalseg_spine_report import main
main()
"""


@pytest.mark.slow
@pytest.mark.official
def test_official_command_live_gives_the_same_report(tmp_path):
    """The official ``totalseg_spine_report`` run here on the same masks: the same JSON bytes and log lines."""
    python = _official_python()
    if python is None or shutil.which("chromium") is None or not MASKS.exists():
        pytest.skip("the official venv or chromium is not available")
    outputs = {}
    for who in ("official", "ours"):
        work = _workdir(tmp_path / who / "work")
        args = ["-i", str(CT), "-n", str(SPINE / "example_nodeinfo.json"), "-o", str(tmp_path / who / "r.nii.gz"),
                "-j", str(tmp_path / who / "r.json"), "-l", str(tmp_path / who / "r.log"), "-tmp", str(work)]
        if who == "official":
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
            proc = subprocess.run([str(python), "-c", _OFFICIAL_CLI, *args], capture_output=True, text=True,
                                  timeout=900, env=env, cwd=tmp_path)
            assert proc.returncode == 0, proc.stderr[-3000:]
        else:
            assert main(args) == 0
        log = (tmp_path / who / "r.log").read_text().splitlines()
        outputs[who] = ((tmp_path / who / "r.json").read_bytes(), [line[6:] for line in log if "width:" not in line],
                        nib.load(tmp_path / who / "r.nii.gz"))
    assert outputs["ours"][0] == outputs["official"][0]
    assert outputs["ours"][1] == outputs["official"][1]
    ours, official = outputs["ours"][2], outputs["official"][2]
    assert ours.header["datatype"] == official.header["datatype"] == 128
    assert np.array_equal(ours.affine, official.affine) and ours.shape[0] == official.shape[0] == 1201


@pytest.mark.parametrize("title", ["Spine report", "Pulmonary Report", "A report with a much longer title than these"])
def test_report_header_puts_the_version_right_of_the_title(title):
    """The version stands beside the title whatever its length (measured, not guessed from the letters)."""
    from totalseg.clinical.common import PageLayout, draw_header

    page = PageLayout(120)
    draw_header(page, title, "0.2.1", "2026-12-07 12:00")
    renderer = page.fig.canvas.get_renderer()
    boxes = {t.get_text(): t.get_window_extent(renderer=renderer) for t in page.fig.texts}
    assert boxes[title].x1 < boxes["0.2.1"].x0 < boxes[title].x1 + 20
    page.rgb()  # closes the figure
