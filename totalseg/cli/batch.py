"""``totalseg_batch``: a cohort in one command (every per-case option of ``TotalSegmentator``).

Exit status 0 when every case is done, 1 when some failed (a summary line names them) or the command
itself could not start (one ``ERROR:`` line).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from totalseg.cli.common import run
from totalseg.cli.totalsegmentator import parser as single_case_parser
from totalseg.errors import UserError

# This command's own options (and those it reads itself: the predictor's device and engine, quiet).
_OWN = {"help", "version", "inputs", "output", "retry_failed", "in_flight", "ray", "ray_cpus_per_worker",
        "ray_workers", "quiet", "device", "engine", "html_report"}


def _single_run_only() -> set[str]:
    """Options of TotalSegmentator that name one case's files or print listings: hidden here, refused if given."""
    from totalseg.run.options import OPTIONS

    return {o.dest for o in OPTIONS if not o.cohort and o.flags} - _OWN | {"list_tasks", "list_classes"}


def _parser() -> argparse.ArgumentParser:
    single = single_case_parser()  # its per-case options, defined once
    for action in single._actions:
        if action.dest in _single_run_only():
            action.help = argparse.SUPPRESS
    p = argparse.ArgumentParser(
        prog="totalseg_batch", parents=[single], conflict_handler="resolve",
        description="Segment a cohort with the models loaded once: OUT_DIR/<case_id>/ per case (what "
                    "TotalSegmentator writes), cases.csv, statistics.csv. Rerun the same command to resume.")
    a = p.add_argument
    a("-i", "--input", dest="inputs", nargs="+", type=Path, required=True, metavar="INPUT",
      help="folders (every NIfTI file and DICOM series/zip under them), files, or .txt/.csv lists of paths "
           "(CSV: an 'input' column, optionally 'case_id')")
    a("-o", "--output", dest="output", type=Path, required=True, metavar="OUT_DIR", help="the cohort folder")
    a("-s", "--statistics", action="store_true",
      help="statistics.json per case, and all of them in OUT_DIR/statistics.csv (+ .parquet with pyarrow)")
    a("--retry-failed", action="store_true", help="run again the cases that failed before (default: skip)")
    a("--in-flight", type=int, default=2, metavar="N",
      help="cases in progress at once; with 2 (default) one is read and written while another runs the networks")
    a("--ray", nargs="?", const=True, default=None, metavar="ADDRESS",
      help="run on a Ray cluster (HOST:PORT of its head; none: $RAY_ADDRESS, the cluster on this "
           "machine, or a new local one)")
    a("--ray-cpus-per-worker", type=int, metavar="N", help="CPUs per Ray worker without GPUs (default 4)")
    a("--ray-workers", type=int, metavar="N", help="Ray workers (default: one per GPU, else CPUs / N)")
    a("-hr", "--html_report", type=Path, default=None, metavar="DIR",
      help="at the end, write the cohort's gallery report (as totalseg_report -b OUT_DIR -o DIR)")
    a("-q", "--quiet", action="store_true", help="no progress bar; only errors and the failure summary")
    return p


def _case_options(args: argparse.Namespace) -> dict:
    """The keyword options of ``totalsegmentator`` each case gets: the table's per-case options."""
    from totalseg.run.options import from_command_line, per_case_names

    return from_command_line(args, per_case_names())


def _refuse_unhandled(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """An option of TotalSegmentator that this command does not pass on is refused, never ignored."""
    from totalseg.run.options import per_case_names, table

    passed = {o.dest for name, o in table().items() if name in per_case_names()}
    for action in parser._actions:
        dest = action.dest
        if dest in passed or dest in _OWN or getattr(args, dest, None) == action.default:
            continue
        flag = max(action.option_strings, key=len, default=dest)
        raise UserError(f"{flag} is an option of single runs, not available in totalseg_batch")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    return run(lambda: _main(parser, args), interrupted="interrupted; finished cases are kept: rerun the command to "
                                                "resume")


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    _refuse_unhandled(parser, args)
    from totalseg.batch import segment_cohort

    result = segment_cohort(
        args.inputs, args.output, retry_failed=args.retry_failed, quiet=args.quiet, device=args.device,
        engine=args.engine, in_flight=args.in_flight, ray=args.ray, ray_cpus_per_worker=args.ray_cpus_per_worker,
        ray_workers=args.ray_workers, **_case_options(args))
    if args.html_report is not None:  # failed cases too: the gallery shows them with their messages
        from totalseg.notice import notice_printer
        from totalseg.report.build import write_cohort_report

        say = notice_printer(args.quiet)
        say(f"Cohort report written to {write_cohort_report(args.output, args.html_report.absolute(), notice=say)}")
    failed = result.failed
    if failed:
        names = ", ".join(r.case_id for r in failed[:3]) + (", ..." if len(failed) > 3 else "")
        print(f"ERROR: {len(failed)} of {len(result.rows)} cases failed ({names}); their messages are in "
              f"{args.output / 'cases.csv'}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"{len(result.rows)} cases done in {args.output.absolute()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
