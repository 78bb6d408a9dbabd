"""``totalseg_pulmonary_report``: pulmonary artery diameters at five landmarks.

Same flags, JSON, file names and log as the official ``totalseg_pulmonary_report`` (TotalSegmentator
2.18.0). With ``-rt``/``-rd`` the report is computed from mask folders made before; with ``-rm`` the
models run first (heartchambers_highres for the artery and the licensed task 514 for the landmarks).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from totalseg.cli.common import run

VERSION = "0.2.1"  # the official report's version, written into the JSON

MODEL_RUNS = [
    ("Running TotalSegmentator - pulmonary_artery", "  Skipping TotalSeg (already exists)",
     ["pulmonary_artery.nii.gz"], dict(task="heartchambers_highres")),
    ("Running T514 annulus pulmonary", "  Skipping T514 (already exists)",
     ["pul_annulus.nii.gz", "pul_sinotubular_junction.nii.gz", "pul_bifurcation.nii.gz", "pul_left_start.nii.gz",
      "pul_right_start.nii.gz"], dict(task="pulmonary_artery_landmarks")),
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="totalseg_pulmonary_report", description="Generate a pulmonary artery report.")

    def path(value: str) -> Path:
        return Path(value).resolve()

    p.add_argument("-i", "--ct_path", type=path, required=True, help="CT image (NIfTI).")
    p.add_argument("-rt", "--rois_totalseg", type=path, help="Folder of the pulmonary artery mask.")
    p.add_argument("-rd", "--rois_details", type=path, help="Folder of the five pulmonary landmark masks.")
    p.add_argument("-n", "--nodeinfo", type=path, help="Patient details (nodeinfo JSON), optional.")
    p.add_argument("-o", "--output_nifti", type=path, required=True, help="Report pages as RGB NIfTI.")
    p.add_argument("-j", "--output_json", type=path, required=True, help="Measurements as JSON.")
    p.add_argument("-l", "--output_log", type=path, required=True, help="Log file.")
    p.add_argument("-tmp", "--tmp_dir", type=path, help="Work folder (a temporary one if omitted).")
    p.add_argument("-a", "--pulmonary_fn", default="pulmonary_artery.nii.gz",
                   help="File name of the pulmonary artery mask in -rt.")
    p.add_argument("-rm", "--run_models", action="store_true", help="Run the segmentation models first.")
    p.add_argument("-mp", "--models_parallel", action="store_true",
                   help="Official: run the models in parallel (here they run one after the other; same masks).")
    p.add_argument("--host", choices=("local", "modal"), default="local",
                   help="Where the models run: local (modal, the official cloud option, is not supported).")
    p.add_argument("-t", "--test", default="None",
                   help="'basic': resample the CT to 1.5 mm instead of 0.8 mm with -rm.")
    p.add_argument("-d", "--debug", action="store_true", help="Keep the work folder and intermediate files.")
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


def _run(args) -> int:
    from totalseg.clinical.vessel_run import run_report
    from totalseg.errors import UserError

    if args.host == "modal":
        raise UserError("--host modal runs the models in the official Modal cloud app, which totalseg has not; "
                        "use --host local")
    return run_report(args, "pulmonary_report", VERSION, (args.output_nifti, args.output_json, args.output_log),
                      _report)


def _segment_first(args, models: Path, log) -> Path:
    """``-rm``: the fast heart mask, the CT cut around it and zoomed, then the report's models."""
    from totalseg.clinical.vessel_run import crop_and_resample, require, run_models, segment

    if (models / "heart.nii.gz").exists():
        log("  Skipping TotalSeg pulmonary fast (already exists)")
    else:
        segment(args.ct_path, models, dict(task="total", roi_subset=["heart"], fast=True))
        require(models, ["heart.nii.gz"], "TotalSegmentator pulmonary fast")
    ct = crop_and_resample(args.ct_path, models, ["heart.nii.gz"], 1.5 if args.test == "basic" else 0.8, log)
    run_models(ct, models, MODEL_RUNS, log)
    return ct


def _report(args, meta: dict, work: Path, log) -> None:
    import json

    from totalseg.clinical import pulmonary, pulmonary_pictures
    from totalseg.clinical.common import save_nifti
    from totalseg.write.atomic import write_atomic

    _progress(2, "Loading code")
    models = work / "models"
    models.mkdir(parents=True, exist_ok=True)
    ct, rt, rd = args.ct_path, args.rois_totalseg, args.rois_details
    if args.run_models:
        _progress(5, "Running models")
        ct = _segment_first(args, models, log)
        rt = rd = models
    _progress(20, "Loading data")
    result, context = pulmonary.measure(ct, rt, rd, meta, work, log, args.pulmonary_fn, args.debug)
    _progress(85, "Generating report images")
    pages = pulmonary_pictures.report_pages(result, context)
    _progress(90, "Generating report html")
    save_nifti(pages, args.output_nifti)
    _progress(95, "Combine masks for output")
    write_atomic(args.output_json, lambda tmp: tmp.write_text(json.dumps(result, indent=4)))
    _progress(100, "Done")


if __name__ == "__main__":
    sys.exit(main())
