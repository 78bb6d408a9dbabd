"""``totalseg_report``: a static HTML report (opens from disk, no server, no network) of a case or a cohort."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from totalseg.cli.common import progress, run
from totalseg.errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="totalseg_report",
        description="Write a static HTML report: a viewer of a case (image, label map, statistics) with -i/-s, "
                    "or a gallery of a totalseg_batch output folder with -b. Open DIR/index.html in a browser.")
    p.add_argument("-i", metavar="IMAGE", dest="image", type=Path, help="input image (NIfTI file or DICOM folder)")
    p.add_argument("-s", metavar="SEG", dest="segmentation", type=Path,
                   help="segmentation of IMAGE: the folder of per-class masks, or the multilabel file of --ml")
    p.add_argument("-b", metavar="COHORT_DIR", dest="cohort", type=Path,
                   help="output folder of totalseg_batch (with cases.csv)")
    p.add_argument("-o", metavar="DIR", dest="output", type=Path, required=True,
                   help="report folder to write (replaced if it holds an earlier report)")
    p.add_argument("--modality", choices=["CT", "MR"], type=str.upper,
                   help="image modality (default: from the segmentation's task)")
    p.add_argument("--preview_voxels", type=int, default=None, metavar="N",
                   help="the viewer first shows every n-th voxel, at most N voxels (default 2000000: quick "
                        "to open also without a GPU); 0 = always the full grid")
    p.add_argument("--full_grid", choices=["yes", "no"], default=None,
                   help="also store the full grid, loaded on request (default: yes for a case, no for each "
                        "case of a cohort)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _run(args))


def _run(args) -> int:
    from totalseg.report.build import write_case_report, write_cohort_report
    from totalseg.report.export import PREVIEW_VOXELS

    say = progress(args.quiet)
    if args.preview_voxels is not None and args.preview_voxels < 0:
        raise UserError("--preview_voxels must be 0 (full grid) or a positive number of voxels")
    preview = PREVIEW_VOXELS if args.preview_voxels is None else args.preview_voxels
    if args.cohort is not None:
        if args.image is not None or args.segmentation is not None:
            raise UserError("give either -b COHORT_DIR or -i IMAGE -s SEG, not both")
        index = write_cohort_report(args.cohort, args.output, preview, args.full_grid == "yes", say)
    elif args.image is not None and args.segmentation is not None:
        index = write_case_report(args.image, args.segmentation, args.output, args.modality, preview,
                                  args.full_grid != "no", say)
    else:
        raise UserError("give -i IMAGE and -s SEGMENTATION for a case, or -b COHORT_DIR for a cohort")
    say(f"Report written: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
