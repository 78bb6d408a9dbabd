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
from totalseg.cli.vessel_report import add_run_flags, parse, progress, report_parser, resample_spacing

VERSION = "0.2.1"  # the official report's version, written into the JSON

MODEL_RUNS = [
    ("Running TotalSegmentator - pulmonary_artery", "  Skipping TotalSeg (already exists)",
     ["pulmonary_artery.nii.gz"], dict(task="heartchambers_highres")),
    ("Running T514 annulus pulmonary", "  Skipping T514 (already exists)",
     ["pul_annulus.nii.gz", "pul_sinotubular_junction.nii.gz", "pul_bifurcation.nii.gz", "pul_left_start.nii.gz",
      "pul_right_start.nii.gz"], dict(task="pulmonary_artery_landmarks")),
]


def _parser() -> argparse.ArgumentParser:
    p = report_parser("totalseg_pulmonary_report", "Generate a pulmonary artery report.",
                      ("Folder of the pulmonary artery mask.", "Folder of the five pulmonary landmark masks."),
                      "Report pages as RGB NIfTI.")
    p.add_argument("-a", "--pulmonary_fn", default="pulmonary_artery.nii.gz",
                   help="File name of the pulmonary artery mask in -rt.")
    p.add_argument("--host", choices=("local", "modal"), default="local",
                   help="Where the models run: local (modal, the official cloud option, is not supported).")
    add_run_flags(p, VERSION)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse(_parser(), argv)
    return run(lambda: _run(args))


def _run(args) -> int:
    from totalseg.clinical.vessel_run import run_report
    from totalseg.errors import UserError

    if args.host == "modal":
        raise UserError("--host modal runs the models in the official Modal cloud app, which totalseg has not; "
                        "use --host local")
    return run_report(args, "pulmonary_report", VERSION, (args.output_nifti, args.output_json, args.output_log),
                      _report)


def _report(args, meta: dict, work: Path, log) -> None:
    import json

    from totalseg.clinical import pulmonary, pulmonary_pictures
    from totalseg.clinical.common import save_nifti
    from totalseg.clinical.vessel_run import segment_first
    from totalseg.write.atomic import write_atomic

    progress(2, "Loading code")
    models = work / "models"
    models.mkdir(parents=True, exist_ok=True)
    ct, rt, rd = args.ct_path, args.rois_totalseg, args.rois_details
    if args.run_models:
        progress(5, "Running models")
        ct = segment_first(args.ct_path, models, ["heart"], "pulmonary", resample_spacing(args), MODEL_RUNS, log)
        rt = rd = models
    progress(20, "Loading data")
    result, context = pulmonary.measure(ct, rt, rd, meta, work, log, args.pulmonary_fn, args.debug)
    progress(85, "Generating report images")
    pages = pulmonary_pictures.report_pages(result, context)
    progress(90, "Generating report html")
    save_nifti(pages, args.output_nifti)
    progress(95, "Combine masks for output")
    write_atomic(args.output_json, lambda tmp: tmp.write_text(json.dumps(result, indent=4)))
    progress(100, "Done")


if __name__ == "__main__":
    sys.exit(main())
