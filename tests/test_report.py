"""``totalseg_report``: the static HTML report, opened from disk in a real headless Chromium (selenium).

Checked from the page itself: the viewer loaded the volume and the labels (canvas pixels in the label-table
colours at the liver's slice), the class list has every class of the case, toggling a class changes the
canvas, and the gallery of a 6-case cohort (run here with the random-weights models) shows every case with
the flags a rescaled (0..4095) and a front-back flipped case must get. Screenshots go to the test's tmp
folder and, reduced, with TOTALSEG_UPDATE_SCREENS=1 to bench/report_screens/ (the documentation's pictures).
"""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from browser import chromium_driver, missing_reason, requested_urls, save_screenshot
from conftest import REF, _copy_home

from totalseg.cli.report import main as report_main
from totalseg.report import flags as qc
from totalseg.report.build import MARKER

CT_SM = REF / "example_ct_sm.nii.gz"
CT = REF / "example_ct.nii.gz"
SEG_DIR = REF / "example_seg_fast"
SEG_ML = REF / "example_seg.nii.gz"
LIVER = (0, 255, 255)  # label 5 in the label table's colours

pytestmark = pytest.mark.skipif(not SEG_DIR.is_dir(), reason="../shared/data not available")
needs_browser = pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))


# ------------------------------------------------------------------------------------------- helpers
def _meta(index: Path, element: str = "tsr-meta") -> dict:
    text = index.read_text(encoding="utf-8")
    start = text.index(f'id="{element}">') + len(f'id="{element}">')
    return json.loads(text[start:text.index("</script>", start)])


def _wait_ready(driver, timeout: float = 120.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state = driver.execute_script("return window.TSR ? {ready: TSR.ready, error: TSR.error} : null")
        if state and state["error"]:
            pytest.fail(f"page error: {state['error']}")
        if state and state["ready"]:
            return state
        time.sleep(0.1)
    pytest.fail("page not ready in time")


def _wait_images(driver, timeout: float = 60.0) -> None:
    """Wait until every picture of the page has loaded or failed, scrolling lazy ones into view.

    The gallery is ready (interactive) before its lazily loaded tiles arrive; a slow machine shows the gap.
    """
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pending = driver.execute_script(
            "const p = [...document.images].filter(i => !i.complete);"
            " if (p.length) p[0].scrollIntoView(); return p.length")
        if not pending:
            driver.execute_script("window.scrollTo(0, 0)")
            return
        time.sleep(0.1)
    pytest.fail("pictures not loaded in time")


def _canvas(driver) -> np.ndarray:
    """RGB pixels of the viewer's canvas as the browser shows them (after the GPU finished)."""
    from PIL import Image

    driver.execute_script("const gl = TSR.nv.gl; TSR.nv.drawScene();"
                          "gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array(4));")
    png = driver.find_element("id", "gl").screenshot_as_png
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _count(rgb: np.ndarray, colour, tol: int = 12) -> int:
    return int((np.abs(rgb - np.array(colour)).max(axis=2) <= tol).sum())


def _no_network(driver) -> None:
    """No request since the last check went to the network (the report's own are file:// URLs)."""
    urls = requested_urls(driver)
    assert any(u.startswith("file:") and u.endswith(("niivue.umd.js", "gallery.js")) for u in urls), urls
    network = [u for u in urls if u.split(":", 1)[0].lower() in ("http", "https", "ws", "wss", "ftp")]
    assert not network, network


@pytest.fixture(scope="module")
def browser():
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    driver = chromium_driver()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def case_report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("case") / "report"
    assert report_main(["-i", str(CT_SM), "-s", str(SEG_DIR), "-o", str(out), "-q"]) == 0
    return out / "index.html"


def _present_classes(folder: Path) -> set[str]:
    return {p.name[:-7] for p in folder.glob("*.nii.gz") if np.asanyarray(nib.load(p).dataobj).any()}


# ------------------------------------------------------------------------------------------- case view
def test_case_report_files(case_report):
    """Self-contained folder: page, NiiVue bundle with its licence, volumes as scripts; classes complete."""
    folder = case_report.parent
    assert (folder / "assets" / "niivue.umd.js").stat().st_size > 1_000_000
    assert "BSD 2-Clause" in (folder / "assets" / "NIIVUE_LICENSE.txt").read_text()
    assert (folder / MARKER).is_file()
    meta = _meta(case_report)
    assert meta["grids"]["preview"]["step"] == 1 and meta["grids"]["full"] is None  # small: full grid at once
    names = {c["name"] for c in meta["classes"] if c["voxels"]}
    assert names == _present_classes(SEG_DIR) and len(names) == 40
    liver = next(c for c in meta["classes"] if c["name"] == "liver")
    assert liver["id"] == 5 and liver["rgb"] == list(LIVER)
    assert meta["stats"]["liver"]["volume"] == 1062450.0  # the official statistics.json's volume
    page = (folder / "index.html").read_text()
    assert "http://" not in page and "https://" not in page


@needs_browser
def test_case_view_in_browser(browser, case_report, tmp_path):
    requested_urls(browser)
    browser.get(case_report.as_uri())
    _wait_ready(browser)
    _no_network(browser)
    # the class list: every class of the case, in its colour
    items = browser.execute_script(
        "return [...document.querySelectorAll('#classes li')].map(li => [li.dataset.name,"
        " getComputedStyle(li.querySelector('.swatch')).backgroundColor])")
    assert {name for name, _ in items} == _present_classes(SEG_DIR)
    assert dict(items)["liver"] == "rgb(0, 255, 255)"
    # axial view through the liver, labels opaque: the slice shows the liver's colour and many others
    browser.find_element("css selector", '#views button[data-view="0"]').click()
    browser.execute_script("const o = document.getElementById('opacity'); o.value = 1;"
                           "o.dispatchEvent(new Event('input'));")
    browser.find_element("css selector", '#classes li[data-name="liver"] .name').click()
    shown = _canvas(browser)
    liver_px = _count(shown, LIVER)
    assert liver_px > 2000, liver_px
    palette = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (255, 128, 0)]
    assert sum(_count(shown, c) > 50 for c in palette) >= 4
    assert (shown.max(axis=2) > 40).mean() > 0.2  # the CT itself is drawn too
    # hiding the liver changes the canvas: its colour goes, the rest stays
    browser.find_element("css selector", '#classes input[data-id="5"]').click()
    hidden = _canvas(browser)
    assert _count(hidden, LIVER) < 0.2 * liver_px
    assert _count(hidden, (0, 255, 0)) > 50  # spleen still there
    browser.find_element("css selector", '#classes input[data-id="5"]').click()
    assert abs(_count(_canvas(browser), LIVER) - liver_px) < 0.05 * liver_px
    # the statistics table: one row per class, sortable by volume (largest first)
    rows = browser.execute_script("return document.querySelectorAll('#stats tbody tr').length")
    assert rows == 40
    browser.find_element("css selector", '#stats th[data-key="volume_ml"]').click()
    first = browser.execute_script("return document.querySelector('#stats tbody tr td').textContent")
    assert first == "liver"
    browser.find_element("css selector", '#views button[data-view="3"]').click()
    browser.execute_script("const o = document.getElementById('opacity'); o.value = 0.6;"
                           "o.dispatchEvent(new Event('input'));")
    _canvas(browser)
    assert save_screenshot(browser, tmp_path, "case_view.png").stat().st_size > 10_000


@needs_browser
def test_large_case_shows_preview_then_full_grid(browser, tmp_path):
    """A case above the preview budget opens on the subsampled grid; the button loads the full grid."""
    out = tmp_path / "report"
    assert report_main(["-i", str(CT_SM), "-s", str(SEG_ML), "-o", str(out), "-q",
                        "--preview_voxels", "100000"]) == 0
    meta = _meta(out / "index.html")
    assert meta["grids"]["preview"]["step"] == 2 and meta["grids"]["full"]["shape"] == [122, 101, 30]
    assert len([c for c in meta["classes"] if c["voxels"]]) == 41  # the multilabel file's 41 labels
    requested_urls(browser)
    browser.get((out / "index.html").as_uri())
    _wait_ready(browser)
    assert browser.execute_script("return TSR.grid") == "preview"
    browser.find_element("id", "full").click()
    end = time.monotonic() + 60
    while browser.execute_script("return TSR.grid") != "full" and time.monotonic() < end:
        time.sleep(0.1)
    assert browser.execute_script("return TSR.nv.volumes[0].dims.slice(1, 4)") == [122, 101, 30]
    _no_network(browser)


# ------------------------------------------------------------------------------------------- cohort
def _run_case(source: Path, out: Path, *extra: str) -> tuple[str, str, float]:
    from totalseg.cli.totalsegmentator import main

    start = time.monotonic()
    code = main(["-i", str(source), "-o", str(out), "--fastest", "-d", "cpu", "-q",
                 "--report", str(out / "run_report.json"), *extra])
    return ("done" if code == 0 else "failed"), ("" if code == 0 else f"exit status {code}"), \
        time.monotonic() - start


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """A totalseg_batch-like folder of 6 cases from the real scans, run with the random-weights models."""
    from weights_server import closed_port_url

    root = tmp_path_factory.mktemp("cohort")
    home = _copy_home(root / "home")
    inputs = root / "inputs"
    inputs.mkdir()
    ct_sm, ct = nib.load(CT_SM), nib.load(CT)
    data = np.asanyarray(ct_sm.dataobj)
    scaled = np.round((data - data.min()) / float(data.max() - data.min()) * 4095).astype(np.int16)
    cases = {
        "upper_abdomen": ct_sm,
        "pelvis": ct.slicer[:, :, 0:30],
        "lower_abdomen": ct.slicer[:, :, 25:55],
        "lumbar": ct.slicer[:, :, 50:80],  # (slices 82:112 are example_ct_sm)
        "rescaled": nib.Nifti1Image(scaled, ct_sm.affine),  # 0..4095 instead of HU
        "flipped": nib.Nifti1Image(np.ascontiguousarray(data[:, ::-1, :]), ct_sm.affine),  # front <-> back
    }
    out = root / "out"
    rows = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOTALSEG_HOME_DIR", str(home))
        mp.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
        mp.setenv("TOTALSEG_WEIGHTS_URL", closed_port_url())
        for case_id, img in cases.items():
            source = inputs / f"{case_id}.nii.gz"
            nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine), source)
            # one case also writes its own report at the end of the run (TotalSegmentator --html_report)
            extra = ["--html_report", str(root / "html_upper_abdomen")] if case_id == "upper_abdomen" else []
            status, error, seconds = _run_case(source, out / case_id, *extra)
            rows.append({"case_id": case_id, "input": str(source), "status": status, "error": error,
                         "seconds": f"{seconds:.2f}"})
    with open(out / "cases.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["case_id", "input", "status", "error", "seconds"])
        writer.writeheader()
        writer.writerows(rows)
    assert all(r["status"] == "done" for r in rows), rows
    return out


@pytest.fixture(scope="module")
def gallery(cohort) -> Path:
    report = cohort.parent / "report"
    assert report_main(["-b", str(cohort), "-o", str(report), "-q"]) == 0
    return report / "index.html"


def test_totalsegmentator_html_report(cohort):
    index = cohort.parent / "html_upper_abdomen" / "index.html"
    meta = _meta(index)
    assert meta["title"] == "upper_abdomen" and meta["grids"]["preview"]["shape"] == [122, 101, 30]
    assert {c["name"] for c in meta["classes"]} == {p.name[:-7] for p in (cohort / "upper_abdomen").glob("*.nii.gz")}


def test_html_report_of_a_dicom_input(use_home, tmp_path):
    """-hr after a DICOM input: the page shows the series as read (its grid) with the run's masks."""
    from totalseg.load.dicom import load_dicom

    dicom = REF / "example_ct_dicom"
    status, error, _ = _run_case(dicom, tmp_path / "seg", "--html_report", str(tmp_path / "html"))
    assert status == "done", error
    meta = _meta(tmp_path / "html" / "index.html")
    series = load_dicom(dicom)
    assert meta["shape"] == list(series.volume.data.shape)
    assert meta["spacing"] == [round(float(z), 4) for z in series.header.get_zooms()[:3]]
    assert {c["name"] for c in meta["classes"]} == {p.name[:-7] for p in (tmp_path / "seg").glob("*.nii.gz")}


def test_gallery_flags(gallery):
    data = _meta(gallery, "tsr-cohort")
    kinds = {c["id"]: {f["kind"] for f in c["flags"]} for c in data["cases"]}
    assert len(kinds) == 6
    assert "not_hu" in kinds["rescaled"] and "flipped" in kinds["flipped"]
    for case_id in ("upper_abdomen", "pelvis", "lower_abdomen", "lumbar"):
        assert not kinds[case_id] & {"not_hu", "flipped", "failed"}, (case_id, kinds[case_id])
    for c in data["cases"]:
        assert (gallery.parent / c["tile"]).stat().st_size > 1000
        assert (gallery.parent / c["href"]).is_file()


@needs_browser
def test_gallery_in_browser(browser, gallery, tmp_path):
    requested_urls(browser)
    browser.get(gallery.as_uri())
    _wait_ready(browser)
    _wait_images(browser)
    tiles = browser.execute_script(
        "return [...document.querySelectorAll('.tile')].map(t => [t.dataset.case, t.dataset.flags,"
        " t.querySelector('img').complete && t.querySelector('img').naturalWidth > 0])")
    assert sorted(t[0] for t in tiles) == sorted(["upper_abdomen", "pelvis", "lower_abdomen", "lumbar",
                                                   "rescaled", "flipped"])
    assert all(t[2] for t in tiles), tiles
    flags = {t[0]: t[1].split() for t in tiles}
    assert "not_hu" in flags["rescaled"] and "flipped" in flags["flipped"]
    text = browser.execute_script("return document.querySelector('.tile[data-case=\"rescaled\"]').textContent")
    assert "not HU" in text
    _no_network(browser)
    save_screenshot(browser, tmp_path, "gallery.png")
    # filter by a flag: only the flipped case stays; then a tile opens the case's viewer
    browser.find_element("css selector", '#filters button[data-filter="flipped"]').click()
    shown = browser.execute_script("return [...document.querySelectorAll('.tile')].map(t => t.dataset.case)")
    assert shown == ["flipped"]
    browser.find_element("css selector", '.tile[data-case="flipped"]').click()
    _wait_ready(browser)
    assert browser.execute_script("return TSR.meta.title") == "flipped"
    assert browser.execute_script("return document.querySelectorAll('#classes li').length") >= 1


# ------------------------------------------------------------------------------------------- flags, errors
def test_cohort_flags_outlier_and_missing():
    volumes = {f"c{i}": {"liver": (1.5e6 * (1 + 0.05 * i), False), "spleen": (2e5, False)} for i in range(6)}
    volumes["c6"] = {"liver": (4.0e6, False)}  # liver 2.3x the median, spleen missing
    volumes["c7"] = {"liver": (9.0e6, True), "spleen": (2e5, False)}  # cut by the FOV: not compared
    flags = qc.cohort_flags(volumes)
    assert [f["kind"] for f in flags["c6"]] == ["volume_outlier", "missing_class"]
    assert "liver 2.3x" in flags["c6"][0]["text"] and "spleen" in flags["c6"][1]["text"]
    assert all(not flags[f"c{i}"] for i in range(6)) and not flags["c7"]
    assert qc.cohort_flags({"a": {"liver": (1.0, False)}}) == {"a": []}  # too few cases to judge


def test_run_report_flags_read_tolerantly():
    report = {"task": "total", "input_checks": [
        {"code": "not_hu", "message": "values 0..4095"}, {"code": "orientation_flipped", "message": "x"},
        {"check": "modality", "passed": True}], "warnings": ["image looks like MR (modality)"]}
    kinds = [f["kind"] for f in qc.report_flags(report)]
    assert kinds == ["not_hu", "flipped", "modality"]
    assert qc.report_flags(None) == [] and qc.report_flags({"warnings": "text"}) == []


def _fails(argv, capsys, needle):
    assert report_main([*argv, "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR: ") and "\n" not in err and needle in err, err


def test_bad_input_one_line_errors(tmp_path, capsys):
    out = tmp_path / "r"
    _fails(["-i", str(CT_SM), "-s", str(tmp_path / "missing"), "-o", str(out)], capsys, "does not exist")
    _fails(["-i", str(CT), "-s", str(SEG_ML), "-o", str(out)], capsys, "shape")
    _fails(["-b", str(tmp_path), "-o", str(out)], capsys, "cases.csv")
    _fails(["-o", str(out)], capsys, "-i IMAGE and -s")
    _fails(["-b", str(tmp_path), "-i", str(CT_SM), "-o", str(out)], capsys, "not both")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    _fails(["-i", str(CT_SM), "-s", str(SEG_ML), "-o", str(mine)], capsys, "not a folder this command wrote")
    assert (mine / "notes.txt").read_text() == "keep me"


def test_report_folder_replaced_atomically(tmp_path):
    out = tmp_path / "r"
    assert report_main(["-i", str(CT_SM), "-s", str(SEG_ML), "-o", str(out), "-q"]) == 0
    (out / "stale.txt").write_text("old")
    assert report_main(["-i", str(CT_SM), "-s", str(SEG_DIR), "-o", str(out), "-q"]) == 0
    assert not (out / "stale.txt").exists() and (out / "index.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no temporary or old folder left
