"""``TotalSegmentator``: the official command line, flag for flag.

Only argparse and the registry load at start-up; torch comes in when a run begins.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from totalseg import OFFICIAL_VERSION, __version__
from totalseg.cli.common import run
from totalseg.errors import UserError


def _positive_float(value: str) -> float:
    """-rmb's size, as the official parses it."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"Invalid number: '{value}'.") from None
    if number <= 0:
        raise argparse.ArgumentTypeError("Value must be greater than 0.")
    return number


def parser() -> argparse.ArgumentParser:
    """The official command line, flag for flag (totalseg_batch takes its per-case options from it)."""
    p = argparse.ArgumentParser(
        prog="TotalSegmentator",
        description="Segment 117 classes in CT images and 50 in MR images (totalseg, official weights).")
    a = p.add_argument
    a("-i", metavar="filepath", dest="input", type=Path,
      help="CT/MR NIfTI image (.nii or .nii.gz), or a DICOM series: folder, .zip or multi-frame file")
    a("-o", metavar="directory", dest="output", type=Path,
      help="output folder for per-class masks, or a .nii.gz file with --ml")
    a("-ot", "--output_type", nargs="+", default=["nifti"],
      help="nifti, dicom_seg and/or dicom_rtstruct (dicom = dicom_rtstruct); DICOM outputs need DICOM input")
    a("--series_uid", help="DICOM input: the SeriesInstanceUID to segment (default: largest CT/MR series)")
    a("-ml", "--ml", action="store_true", help="write one multilabel file instead of one file per class")
    a("-nr", "--nr_thr_resamp", type=int, default=None,
      help="threads for resampling (default: all cores; the result is the same with any number)")
    a("-ns", "--nr_thr_saving", type=int, default=6, help="threads that write the per-class files (default 6)")
    a("-f", "--fast", action="store_true", help="3 mm model: faster, less accurate")
    a("-ff", "--fastest", action="store_true", help="6 mm model: fastest, least accurate")
    a("-sl", "--save_lowres", action="store_true",
      help="with -f/-ff save the segmentation at the model resolution (3 or 6 mm), not upsampled; nifti only, "
           "not with cropping tasks, -rs or -bs")
    a("-t", "--nora_tag", default="None", help="official: tag the outputs in a local NORA; refused here")
    a("-p", "--preview", action="store_true", help="write a preview png")
    a("-ta", "--task", default="total", help="task to run (see --list-tasks)")
    a("-ms", "--model_size", choices=["big", "small"], default="big",
      help="official: small only for task total_v3 (not in this registry); big (default) here")
    a("-rs", "--roi_subset", nargs="+", help="only these classes (crop first with the low-resolution model)")
    a("-rsr", "--roi_subset_robust", nargs="+", help="like -rs, cropping with the 3 mm model")
    a("-rc", "--robust_crop", action="store_true", help="crop with the 3 mm model instead of the 6 mm one")
    a("-ho", "--higher_order_resampling", "--high_order_resampling", action="store_true",
      help="official: nnU-Net's cropped-logits resampling; refused here (not supported)")
    a("--higher_order_resampling_LEGACY", "--high_order_resampling_LEGACY", action="store_true",
      help="upsample the labels one-hot with order 1 (smoother masks) instead of nearest-neighbour")
    a("-s", "--statistics", nargs="?", const=True, default=False,
      help="write statistics.json (volume in mm3, mean intensity per class), optionally to this path")
    a("-r", "--radiomics", action="store_true", help="radiomics features per class")
    a("-rp", "--report", type=Path, metavar="filepath",
      help="write a JSON run report (versions, device, task, classes, runtime, output files) to this path")
    a("-hr", "--html_report", type=Path, metavar="DIR",
      help="also write an HTML report of the result to this folder (totalseg_report: viewer and statistics)")
    a("-sii", "--stats_include_incomplete", action="store_true",
      help="statistics also for masks touching the image border")
    a("-sa", "--stats_aggregation", choices=["mean", "median"], default="mean", help="intensity aggregation")
    a("-sx", "--statistics_extra", action="store_true", help="more statistics: voxels, std, min, max, centroid, bbox")
    a("-cp", "--crop_path", type=Path, help="official legacy option; no effect (a notice says so)")
    a("-bs", "--body_seg", action="store_true", help="crop to the body first (body 6 mm model)")
    a("-fs", "--force_split", action="store_true", help="process the image in three chunks along z")
    a("-ss", "--skip_saving", action="store_true", help="do not write segmentations (statistics only)")
    a("-ndm", "--no_derived_masks", action="store_true", help="body task: no body/skin masks")
    a("-v1o", "--v1_order", action="store_true",
      help="task total, multilabel output: classes in the v1 order (104 classes); v2-only classes removed")
    a("-rmb", "--remove_small_blobs", nargs="?", type=_positive_float, const=200.0, default=False, metavar="mm3",
      help="remove connected components of at most this size (mm3, default 200) from every class")
    a("-d", "--device", default="gpu", help="gpu, gpu:N, cpu or mps (gpu without CUDA falls back to cpu)")
    a("--engine", choices=["exact", "fast"], default=None,
      help="exact (default; the official arithmetic, same masks bit for bit) or fast (CPU: OpenVINO, bf16 "
           "where the CPU has it; a few voxels may differ). Default: $TOTALSEG_ENGINE or exact")
    a("-q", "--quiet", action="store_true", help="print nothing but errors")
    a("-v", "--verbose", action="store_true", help="more output")
    a("-sp", "--save_probabilities", type=Path, help="official: nnU-Net's probabilities; refused here")
    a("--debug", action="store_true", help="on an unexpected error, print the input path and task")
    a("-l", "--license_number", help="licence number for the licensed tasks (stored in config.json)")
    a("-ro", "--resampling_order", type=int, default=1, choices=range(6), metavar="{0..5}",
      help="spline order for resampling the input (default 1)")
    a("--test", metavar="0|1|3", choices=[0, 1, 3], type=int, default=0,
      help="official test-suite switch; anything but 0 is refused here")
    a("-lt", "--list-tasks", action="store_true", help="list the tasks and exit")
    a("-lc", "--list-classes", nargs="?", const="total", metavar="TASK", help="list a task's classes and exit")
    a("--version", action="version", version=f"totalseg {__version__} (TotalSegmentator {OFFICIAL_VERSION} compatible)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    if args.list_tasks or args.list_classes:
        from totalseg.registry import get_task
        from totalseg.registry.listing import format_class_list, format_task_list

        if args.list_tasks:
            print(format_task_list())
        else:
            get_task(args.list_classes)
            print(format_class_list(args.list_classes))
        return 0
    if args.input is None or args.output is None:
        parser().error("the following arguments are required: -i, -o")
    if not args.input.exists():
        raise UserError(f"the input file or folder does not exist: {args.input}")
    if args.html_report is not None and (args.skip_saving or args.save_lowres or args.output_type != ["nifti"]):
        raise UserError("--html_report reads the NIfTI masks on the input's grid: not with -ss, -sl or DICOM output")
    from totalseg.run.api import totalsegmentator

    totalsegmentator(
        args.input.absolute(), args.output.absolute(), ml=args.ml, fast=args.fast, fastest=args.fastest,
        preview=args.preview, nr_thr_resamp=args.nr_thr_resamp, nr_thr_saving=args.nr_thr_saving,
        nora_tag=args.nora_tag, crop_path=args.crop_path, test=args.test, debug=args.debug,
        report=None if args.report is None else args.report.absolute(), model_size=args.model_size,
        task=args.task, roi_subset=args.roi_subset, roi_subset_robust=args.roi_subset_robust,
        statistics=args.statistics, radiomics=args.radiomics, body_seg=args.body_seg,
        force_split=args.force_split, output_type=args.output_type, quiet=args.quiet, verbose=args.verbose,
        skip_saving=args.skip_saving, device=args.device, license_number=args.license_number,
        statistics_exclude_masks_at_border=not args.stats_include_incomplete,
        no_derived_masks=args.no_derived_masks, v1_order=args.v1_order,
        stats_aggregation=args.stats_aggregation, remove_small_blobs=args.remove_small_blobs,
        robust_crop=args.robust_crop, higher_order_resampling=args.higher_order_resampling,
        higher_order_resampling_LEGACY=args.higher_order_resampling_LEGACY,
        save_probabilities=args.save_probabilities, statistics_extra=args.statistics_extra,
        save_lowres=args.save_lowres, resampling_order=args.resampling_order, series_uid=args.series_uid,
        engine=args.engine)
    if args.html_report is not None:
        from totalseg.cli.common import progress
        from totalseg.report.build import write_case_report

        index = write_case_report(args.input.absolute(), args.output.absolute(), args.html_report.absolute(),
                                  notice=progress(args.quiet))
        progress(args.quiet)(f"HTML report written: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
