"""Command-line parts the two vessel reports share (``totalseg_aorta_report``, ``totalseg_pulmonary_report``).

Both official commands take the same inputs, outputs and run flags; each adds a few of its own between
:func:`report_parser` (the head) and :func:`add_run_flags` (the tail).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def resolved(value: str) -> Path:
    """A path argument made absolute (the reports change into their work folder)."""
    return Path(value).resolve()


def report_parser(prog: str, description: str, rois_help: tuple[str, str], pages_help: str) -> argparse.ArgumentParser:
    """A parser with the flags both reports take first: the CT, two mask folders, the patient's details, the
    three outputs and the work folder."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("-i", "--ct_path", type=resolved, required=True, help="CT image (NIfTI).")
    p.add_argument("-rt", "--rois_totalseg", type=resolved, help=rois_help[0])
    p.add_argument("-rd", "--rois_details", type=resolved, help=rois_help[1])
    p.add_argument("-n", "--nodeinfo", type=resolved, help="Patient details (nodeinfo JSON), optional.")
    p.add_argument("-o", "--output_nifti", type=resolved, required=True, help=pages_help)
    p.add_argument("-j", "--output_json", type=resolved, required=True, help="Measurements as JSON.")
    p.add_argument("-l", "--output_log", type=resolved, required=True, help="Log file.")
    p.add_argument("-tmp", "--tmp_dir", type=resolved, help="Work folder (a temporary one if omitted).")
    return p


def add_run_flags(p: argparse.ArgumentParser, version: str) -> None:
    """The flags both reports take last: running the models, the test resolution, debugging, the runtime."""
    p.add_argument("-rm", "--run_models", action="store_true", help="Run the segmentation models first.")
    p.add_argument("-mp", "--models_parallel", action="store_true",
                   help="Official: run the models in parallel (here they run one after the other; same masks).")
    p.add_argument("-t", "--test", default="None",
                   help="'basic': resample the CT to 1.5 mm instead of 0.8 mm with -rm.")
    p.add_argument("-d", "--debug", action="store_true", help="Keep the work folder and intermediate files.")
    p.add_argument("-r", "--save_runtime", action="store_true", help="Add the runtime to META/runtime.json beside -n.")
    p.add_argument("--version", action="version", version=version)


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The arguments, with the mask folders required unless the models run first."""
    args = parser.parse_args(argv)
    if not args.run_models and (args.rois_totalseg is None or args.rois_details is None):
        parser.error("--rois_totalseg and --rois_details are required without --run_models")
    return args


def progress(value: int, status: str) -> None:
    """The official reports' progress line on stdout (read by the services that run them)."""
    print(f"progress: {value}, status: {status}", flush=True)


def resample_spacing(args: argparse.Namespace) -> float:
    """The spacing in mm the CT is zoomed to before the report's models run (``-t basic``: coarser, quicker)."""
    return 1.5 if args.test == "basic" else 0.8
