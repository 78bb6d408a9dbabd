"""Write a report folder: a case viewer (``write_case_report``) or a cohort gallery with one viewer per case
(``write_cohort_report``). The folder is built beside the target and renamed into place when complete."""
from __future__ import annotations

from pathlib import Path

from totalseg.errors import UserError
from totalseg.notice import Notice, notice_printer
from totalseg.report import flags as qc
from totalseg.report.case import load_case
from totalseg.report.casepage import case_statistics, write_case_page
from totalseg.report.cohort import CohortCase, folder_names, read_cohort
from totalseg.report.export import PREVIEW_VOXELS
from totalseg.report.pages import copy_assets, gallery_page
from totalseg.report.tiles import render_tile, write_png
from totalseg.write.atomic import write_folder_atomic

MARKER = ".totalseg_report"  # a folder holding this file may be replaced by a new report


def _finish(folder: Path) -> None:
    (folder / MARKER).write_text("written by totalseg_report; may be replaced by the next report\n")


def _shape_text(case) -> str:
    shape = "x".join(str(n) for n in case.labels.shape)
    spacing = "x".join(f"{z:g}" for z in case.zooms)
    return f"{case.modality} {shape} voxels of {spacing} mm" + (f" · task {case.task}" if case.task else "")


def write_case_report(image: Path, segmentation: Path, output: Path, modality: str | None = None,
                      preview_voxels: int = PREVIEW_VOXELS, full_grid: bool = True,
                      notice: Notice | None = None) -> Path:
    """Report of one case: ``output/index.html`` with the viewer (``full_grid``: store the full grid beside
    the preview grid). Returns ``output/index.html``."""
    say = notice or notice_printer(True)
    say(f"Reading {image} and {segmentation}...")
    case = load_case(Path(image), Path(segmentation), modality)
    stats = case_statistics(case)
    flags = qc.case_flags(image=case.image, affine=case.affine, modality=case.modality, task=case.task, stats=stats)

    def write(folder: Path) -> None:
        copy_assets(folder / "assets")
        write_case_page(folder, case, stats, assets="assets", title=Path(image).name.split(".nii")[0],
                        subtitle=_shape_text(case), flags=flags, preview_voxels=preview_voxels,
                        full=full_grid)
        _finish(folder)

    say(f"Writing the report to {output}...")
    write_folder_atomic(Path(output), write, MARKER)
    return Path(output).absolute() / "index.html"


def _one_case(c: CohortCase, folder: Path, name: str, preview_voxels: int, full_grid: bool) -> tuple[dict, dict | None]:
    """Tile and viewer of one cohort case: its gallery entry and its ``{class: (volume, incomplete)}``."""
    entry = {"id": c.case_id, "status": c.status, "seconds": c.seconds, "error": c.error,
             "tile": None, "href": None, "flags": []}
    report = c.run_report
    if c.status != "done" or c.segmentation is None or c.input is None:
        if c.status == "done":  # listed as done but its results are not there
            entry["status"] = "no result"
        entry["flags"] = qc.case_flags(status=entry["status"], error=c.error or "no segmentation found",
                                       report=report)
        return entry, None
    try:
        case = load_case(c.input, c.segmentation, (report or {}).get("modality"))
    except UserError as e:
        entry["status"] = "unreadable"
        entry["flags"] = qc.case_flags(status="unreadable", error=str(e), report=report)
        return entry, None
    stats = case_statistics(case)
    entry["flags"] = qc.case_flags(report=report, image=case.image, affine=case.affine, modality=case.modality,
                                   task=(report or {}).get("task") or case.task, stats=stats)
    write_png(render_tile(case.image, case.labels, case.affine, case.modality), folder / "tiles" / f"{name}.png")
    write_case_page(folder / "cases" / name, case, stats, assets="../../assets", title=c.case_id,
                    subtitle=_shape_text(case), flags=entry["flags"], back="../../index.html",
                    preview_voxels=preview_voxels, full=full_grid)
    entry["tile"], entry["href"] = f"tiles/{name}.png", f"cases/{name}/index.html"
    volumes = {n: (float(s["volume"]), bool(s.get("incomplete"))) for n, s in stats.items()}
    return entry, volumes


def write_cohort_report(cohort: Path, output: Path, preview_voxels: int = PREVIEW_VOXELS, full_grid: bool = False,
                        notice: Notice | None = None) -> Path:
    """Gallery of a ``totalseg_batch`` output folder, ``output/index.html``, with a viewer per case under
    ``output/cases/`` (preview grids only, unless ``full_grid``: a thousand full CTs would be a huge folder).
    Returns ``output/index.html``."""
    say = notice or notice_printer(True)
    cases = read_cohort(Path(cohort))
    names = folder_names([c.case_id for c in cases])

    def write(folder: Path) -> None:
        copy_assets(folder / "assets")
        entries, volumes = [], {}
        for i, c in enumerate(cases, start=1):
            say(f"Case {i}/{len(cases)}: {c.case_id}")
            entry, vols = _one_case(c, folder, names[c.case_id], preview_voxels, full_grid)
            entries.append(entry)
            if vols is not None:
                volumes[c.case_id] = vols
        from_cohort = qc.cohort_flags(volumes)  # the case pages are written by now: only the gallery has these
        for entry in entries:
            entry["flags"] += from_cohort.get(entry["id"], [])
        done = sum(e["status"] == "done" for e in entries)
        page = gallery_page({"title": Path(cohort).absolute().name, "kinds": qc.KINDS, "cases": entries,
                             "subtitle": f"{len(entries)} cases, {done} done, "
                                         f"{sum(bool(e['flags']) for e in entries)} flagged"}, "assets")
        (folder / "index.html").write_text(page, encoding="utf-8")
        _finish(folder)

    say(f"Writing the report to {output}...")
    write_folder_atomic(Path(output), write, MARKER)
    return Path(output).absolute() / "index.html"
