"""``totalseg_aorta_report``: aortic diameters at the standard landmarks, section lengths and volumes.

Same flags, JSON, file names and log as the official ``totalseg_aorta_report`` (TotalSegmentator 2.18.0).
With ``-rt``/``-rd`` the report is computed from mask folders made before; with ``-rm`` the models run
first (total-task aorta and branches, and the licensed tasks 716, 713 and 710).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from totalseg.cli.common import run
from totalseg.cli.vessel_report import add_run_flags, parse, progress, report_parser, resample_spacing, resolved

VERSION = "0.1.2"  # the official report's version, written into the JSON

# (status, message when skipped, masks it leaves, options of the segmentation run)
MODEL_RUNS = [
    ("Running TotalSegmentator - aorta", "  Skipping TotalSeg (already exists)", ["brachiocephalic_trunk.nii.gz"],
     dict(task="total", roi_subset=["aorta", "brachiocephalic_trunk", "subclavian_artery_left",
                                    "common_carotid_artery_left", "iliac_artery_left", "iliac_artery_right",
                                    "vertebrae_T12"])),
    ("Running T716 TF lumen", "  Skipping T716 (already exists)",
     ["aorta_true_lumen.nii.gz", "aorta_false_lumen.nii.gz"], dict(task="aortic_dissection")),
    ("Running T713 annulus proper", "  Skipping T713 (already exists)",
     ["annulus_proper.nii.gz", "sinotubular_junction.nii.gz"], dict(task="aorta_annulus")),
    ("Running T710 renal arteries", "  Skipping T710 (already exists)",
     ["celiac_trunk.nii.gz", "superior_mesenteric_artery.nii.gz", "renal_arteries.nii.gz"],
     dict(task="renal_arteries")),
]


def _parser() -> argparse.ArgumentParser:
    p = report_parser("totalseg_aorta_report", "Generate aorta report.",
                      ("Folder of the TotalSegmentator masks (aorta, branches, T12).",
                       "Folder of the detail masks (annulus, junction, lumens)."), "Report page(s) as RGB NIfTI.")
    p.add_argument("-c", "--cpr", type=resolved, help="Curved planar reformation overview (PNG).")
    p.add_argument("-ca", "--cpr_animated", type=resolved, help="Animated curved planar reformation (.nii.gz).")
    p.add_argument("-a", "--aorta_fn", default="aorta.nii.gz", help="File name of the aorta mask in -rt.")
    p.add_argument("-an", "--annulus_fn", default="annulus_proper.nii.gz",
                   help="File name of the annulus mask in -rd.")
    p.add_argument("-e", "--erosion", action="store_true",
                   help="Erode the aorta by one voxel (0.8 mm) before measuring.")
    p.add_argument("-sd", "--skip_dissection", action="store_true", help="Do not use the true/false lumen masks.")
    add_run_flags(p, VERSION)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse(_parser(), argv)
    return run(lambda: _run(args))


def _phase(ct: Path, models: Path, log) -> str:
    """The contrast phase (cached as ``models/contrast_phase.json``, as officially)."""
    import json

    from totalseg.write.atomic import write_atomic

    started = time.time()
    cached = models / "contrast_phase.json"
    if cached.exists():
        log("  Skipping totalseg_get_phase (already exists)")
    else:
        from totalseg.classify.phase import contrast_phase

        result = contrast_phase(ct)
        write_atomic(cached, lambda tmp: tmp.write_text(json.dumps(result, indent=4)))
    phase = json.loads(cached.read_text())["phase"]
    print(f"Contrast phase done (took: {time.time() - started:.2f}s)")
    return phase


def _run(args) -> int:
    from totalseg.clinical.vessel_run import run_report

    return run_report(args, "aorta_report", VERSION,
                      (args.output_nifti, args.output_json, args.output_log, args.cpr, args.cpr_animated), _report)


def _report(args, meta: dict, work: Path, log) -> None:
    import json

    from totalseg.clinical import aorta
    from totalseg.clinical.vessel_run import segment_first
    from totalseg.write.atomic import write_atomic

    progress(2, "Loading code")
    models = work / "models"
    models.mkdir(parents=True, exist_ok=True)
    ct, rt, rd = args.ct_path, args.rois_totalseg, args.rois_details
    if args.run_models:
        progress(5, "Running models")
        ct = segment_first(args.ct_path, models, ["aorta", "heart"], "aorta", resample_spacing(args), MODEL_RUNS, log)
        rt = rd = models
    _check_inputs(rt, rd, args.aorta_fn, args.annulus_fn)
    progress(19, "Running contrast phase detection")
    phase = _phase(ct, models, log)
    log(f"Contrast phase: {phase}")
    progress(20, "Loading data")
    result, context = aorta.measure(ct, rt, rd, meta, work, log, phase, args.aorta_fn, args.annulus_fn,
                                    args.erosion, args.skip_dissection, args.debug)
    _pictures(args, result, context, rt, work, meta, log)
    progress(95, "Combine masks for output")
    write_atomic(args.output_json, lambda tmp: tmp.write_text(json.dumps(result, indent=4)))
    progress(100, "Done")


def _check_inputs(rt: Path, rd: Path, aorta_fn: str, annulus_fn: str) -> None:
    """One line naming the first mask the report needs that is missing."""
    from totalseg.errors import UserError

    for path in (rt / aorta_fn, rd / annulus_fn):
        if not path.exists():
            raise UserError(f"the mask {path} does not exist; check -rt/-rd and -a/-an")


def _pictures(args, result: dict, context: dict, rt: Path, work: Path, meta: dict, log) -> None:
    """The report page (RGB NIfTI), and the CPR pictures when asked for."""
    from totalseg.clinical import aorta, aorta_pictures
    from totalseg.clinical.common import save_nifti

    if args.cpr is not None or args.cpr_animated is not None:
        log("Calculating CPR...")
        cpr = aorta_pictures.straightened(context, fast=args.debug)
        if args.cpr is not None:
            aorta_pictures.write_cpr_png(cpr, meta, args.cpr)
        if args.cpr_animated is not None:
            save_nifti(aorta_pictures.cpr_animation(cpr, meta), args.cpr_animated)
    progress(85, "Generating report images")
    vessels = aorta.vessel_union(rt, context["grid"], work)
    pages = aorta_pictures.report_pages(result, context, vessels, meta, work)
    progress(90, "Generating report html")
    save_nifti(pages, args.output_nifti)


if __name__ == "__main__":
    sys.exit(main())
