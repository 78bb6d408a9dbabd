"""``TotalSegmentator``: the official command line, flag for flag.

Only argparse and the registry load at start-up; torch comes in when a run begins.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from totalseg.version import OFFICIAL_VERSION, __version__
from totalseg.cli.common import run
from totalseg.errors import UserError


def parser() -> argparse.ArgumentParser:
    """The official command line, flag for flag: the option table's flags (totalseg_batch takes its per-case
    options from it), plus what only a command line has."""
    from totalseg.run.options import add_arguments

    p = argparse.ArgumentParser(
        prog="TotalSegmentator",
        description="Segment 117 classes in CT images and 50 in MR images (totalseg, official weights).")
    a = p.add_argument
    a("-i", metavar="filepath", dest="input", type=Path,
      help="CT/MR NIfTI image (.nii or .nii.gz), or a DICOM series: folder, .zip or multi-frame file")
    a("-o", metavar="directory", dest="output", type=Path,
      help="output folder for per-class masks, or a .nii.gz file with --ml")
    add_arguments(p)
    a("-hr", "--html_report", type=Path, metavar="DIR",
      help="also write an HTML report of the result to this folder (totalseg_report: viewer and statistics)")
    a("-lt", "--list-tasks", action="store_true", help="list the tasks and exit")
    a("-lc", "--list-classes", nargs="?", const="total", metavar="TASK", help="list a task's classes and exit")
    a("--version", action="version", version=f"totalseg {__version__} (TotalSegmentator {OFFICIAL_VERSION} compatible)")
    return p


def _not_on_the_input_grid(args: argparse.Namespace) -> bool:
    """Whether the run writes no NIfTI masks on the input's grid (for the HTML report)."""
    from totalseg.run.options import collect, from_command_line
    from totalseg.run.setup import masks_on_input_grid

    return not masks_on_input_grid(collect(from_command_line(args)))


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
    if args.html_report is not None and _not_on_the_input_grid(args):
        raise UserError("--html_report reads the NIfTI masks on the input's grid: not with -ss, -sl or DICOM output")
    from totalseg.run.api import totalsegmentator
    from totalseg.run.options import from_command_line

    options = from_command_line(args)
    options["report"] = None if args.report is None else args.report.absolute()
    totalsegmentator(args.input.absolute(), args.output.absolute(), **options)
    if args.html_report is not None:
        from totalseg.cli.common import progress
        from totalseg.report.build import write_case_report

        index = write_case_report(args.input.absolute(), args.output.absolute(), args.html_report.absolute(),
                                  notice=progress(args.quiet))
        progress(args.quiet)(f"HTML report written: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
