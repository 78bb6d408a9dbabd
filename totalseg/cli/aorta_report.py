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
    p = argparse.ArgumentParser(prog="totalseg_aorta_report", description="Generate aorta report.")

    def path(value: str) -> Path:
        return Path(value).resolve()

    p.add_argument("-i", "--ct_path", type=path, required=True, help="CT image (NIfTI).")
    p.add_argument("-rt", "--rois_totalseg", type=path,
                   help="Folder of the TotalSegmentator masks (aorta, branches, T12).")
    p.add_argument("-rd", "--rois_details", type=path,
                   help="Folder of the detail masks (annulus, junction, lumens).")
    p.add_argument("-n", "--nodeinfo", type=path, help="Patient details (nodeinfo JSON), optional.")
    p.add_argument("-o", "--output_nifti", type=path, required=True, help="Report page(s) as RGB NIfTI.")
    p.add_argument("-j", "--output_json", type=path, required=True, help="Measurements as JSON.")
    p.add_argument("-l", "--output_log", type=path, required=True, help="Log file.")
    p.add_argument("-tmp", "--tmp_dir", type=path, help="Work folder (a temporary one if omitted).")
    p.add_argument("-c", "--cpr", type=path, help="Curved planar reformation overview (PNG).")
    p.add_argument("-ca", "--cpr_animated", type=path, help="Animated curved planar reformation (.nii.gz).")
    p.add_argument("-a", "--aorta_fn", default="aorta.nii.gz", help="File name of the aorta mask in -rt.")
    p.add_argument("-an", "--annulus_fn", default="annulus_proper.nii.gz",
                   help="File name of the annulus mask in -rd.")
    p.add_argument("-rm", "--run_models", action="store_true", help="Run the segmentation models first.")
    p.add_argument("-mp", "--models_parallel", action="store_true",
                   help="Official: run the models in parallel (here they run one after the other; same masks).")
    p.add_argument("-t", "--test", default="None",
                   help="'basic': resample the CT to 1.5 mm instead of 0.8 mm with -rm.")
    p.add_argument("-e", "--erosion", action="store_true",
                   help="Erode the aorta by one voxel (0.8 mm) before measuring.")
    p.add_argument("-d", "--debug", action="store_true", help="Keep the work folder and intermediate files.")
    p.add_argument("-sd", "--skip_dissection", action="store_true", help="Do not use the true/false lumen masks.")
    p.add_argument("-r", "--save_runtime", action="store_true", help="Add the runtime to META/runtime.json beside -n.")
    p.add_argument("--version", action="version", version=VERSION)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.run_models and (args.rois_totalseg is None or args.rois_details is None):
        parser.error("--rois_totalseg and --rois_details are required without --run_models")
    return run(lambda: _run(args))


def _progress(value: int, status: str) -> None:
    print(f"progress: {value}, status: {status}", flush=True)


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


def _segment_first(args, models: Path, log) -> Path:
    """``-rm``: the fast aorta/heart masks, the CT cut around them and zoomed, then the report's models."""
    from totalseg.clinical.vessel_run import crop_and_resample, require, run_models, segment

    if (models / "aorta.nii.gz").exists():
        log("  Skipping TotalSeg aorta fast (already exists)")
    else:
        segment(args.ct_path, models, dict(task="total", roi_subset=["aorta", "heart"], fast=True))
        require(models, ["aorta.nii.gz", "heart.nii.gz"], "TotalSegmentator aorta fast")
    ct = crop_and_resample(args.ct_path, models, ["aorta.nii.gz", "heart.nii.gz"],
                           1.5 if args.test == "basic" else 0.8, log)
    run_models(ct, models, MODEL_RUNS, log)
    return ct


def _run(args) -> int:
    from totalseg.clinical.vessel_run import run_report

    return run_report(args, "aorta_report", VERSION,
                      (args.output_nifti, args.output_json, args.output_log, args.cpr, args.cpr_animated), _report)


def _report(args, meta: dict, work: Path, log) -> None:
    import json

    from totalseg.clinical import aorta
    from totalseg.write.atomic import write_atomic

    _progress(2, "Loading code")
    models = work / "models"
    models.mkdir(parents=True, exist_ok=True)
    ct, rt, rd = args.ct_path, args.rois_totalseg, args.rois_details
    if args.run_models:
        _progress(5, "Running models")
        ct = _segment_first(args, models, log)
        rt = rd = models
    _check_inputs(rt, rd, args.aorta_fn, args.annulus_fn)
    _progress(19, "Running contrast phase detection")
    phase = _phase(ct, models, log)
    log(f"Contrast phase: {phase}")
    _progress(20, "Loading data")
    result, context = aorta.measure(ct, rt, rd, meta, work, log, phase, args.aorta_fn, args.annulus_fn,
                                    args.erosion, args.skip_dissection, args.debug)
    _pictures(args, result, context, rt, work, meta, log)
    _progress(95, "Combine masks for output")
    write_atomic(args.output_json, lambda tmp: tmp.write_text(json.dumps(result, indent=4)))
    _progress(100, "Done")


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
    _progress(85, "Generating report images")
    vessels = aorta.vessel_union(rt, context["grid"], work)
    pages = aorta_pictures.report_pages(result, context, vessels, meta, work)
    _progress(90, "Generating report html")
    save_nifti(pages, args.output_nifti)


if __name__ == "__main__":
    sys.exit(main())
