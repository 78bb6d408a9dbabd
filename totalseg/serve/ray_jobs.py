"""Jobs on a Ray cluster (``totalseg_serve --ray [ADDRESS]``): each job is a one-case run of ``totalseg_batch
--ray``, the cohort runner's Ray path, whose outputs are then put where the worker publishes them.

The cluster's workers keep their own models; the service's worker only waits for the run and moves files.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

from totalseg.errors import UserError

# totalsegmentator() keyword -> totalseg_batch flag, where they differ (the official command line's names)
INVERTED = {"statistics_exclude_masks_at_border": "--stats_include_incomplete"}


def batch_flags(options: dict) -> list[str]:
    """The ``totalseg_batch`` flags of ``totalsegmentator()`` keyword options."""
    flags: list[str] = []
    for key, value in options.items():
        if key in INVERTED:
            flags += [] if value else [INVERTED[key]]
        elif value is True:
            flags.append(f"--{key}")
        elif value is False or value is None:
            continue
        elif isinstance(value, (list, tuple)):
            flags += [f"--{key}", *map(str, value)]
        else:
            flags += [f"--{key}", str(value)]
    return flags


def ray_segment(address: str, device: str) -> Callable:
    """A ``segment(input, output, **options)`` that runs the job on the Ray cluster at ``address``
    ("auto": ``$RAY_ADDRESS``, the cluster on this machine, or a new local one)."""
    def segment(input, output, **options):
        output = Path(output)
        run_dir = output if output.is_dir() else output.parent  # a folder: DICOM outputs
        work = run_dir / ".ray"
        ray = ["--ray"] if address == "auto" else ["--ray", address]
        report = options.pop("report", None)
        command = [_batch_command(), "-i", str(input), "-o", str(work),
                   *batch_flags(options), "-d", device, *ray, "-q"]
        from totalseg.serve.lifetime import die_with_parent

        # killed with the worker (a cancelled job): no orphan driver goes on writing into the job's folder
        done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(),
                              preexec_fn=die_with_parent)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            raise UserError((lines[-1] if lines else "totalseg_batch --ray failed").removeprefix("ERROR: "))
        _place(work, output, run_dir, bool(options.get("ml")), report)
        shutil.rmtree(work, ignore_errors=True)
    return segment


def _batch_command() -> str:
    """``totalseg_batch`` of this installation (beside this Python), else the one on PATH."""
    beside = Path(sys.executable).parent / "totalseg_batch"
    return str(beside) if beside.is_file() else "totalseg_batch"


def _place(work: Path, output: Path, run_dir: Path, ml: bool, report) -> None:
    """Move the case folder's files where ``TotalSegmentator -o output`` would have put them."""
    cases = [p for p in work.iterdir() if p.is_dir()]
    if len(cases) != 1:
        raise UserError("totalseg_batch --ray wrote no case folder; see the service's worker.log")
    for item in cases[0].iterdir():
        if item.name == "run_report.json" and not report:
            continue
        target = output if ml and item.name == "segmentations.nii.gz" else run_dir / item.name
        if item.name == "segmentations" and not ml:
            target = output
        os.replace(item, target)
