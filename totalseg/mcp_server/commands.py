"""Our console scripts run for the MCP server: their argument lists and a subprocess runner.

The arguments are those the official server passes to its commands, except where our command line
refuses or lacks a flag (said at each such place). A command runs in its own session (process group)
so that a timeout or a cancelled request stops it and every worker it started.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path

from totalseg.errors import UserError

SEGMENT_TIMEOUT = 3600  # s, as the official server
MODALITY_TIMEOUT = 300
_STOP_GRACE = 10  # s between SIGTERM and SIGKILL


def executable(name: str) -> str:
    """The console script ``name``: the one installed beside this interpreter first (so that another
    TotalSegmentator earlier on PATH is not picked up), else the one on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise UserError(f"the command {name} is not installed; install totalseg (pip install totalseg)")
    return found


def segmentation_arguments(input_path: Path, output_path: Path, task: str, device: str, speed: str,
                           roi_subset: list[str] | None, statistics: bool) -> list[str]:
    """``TotalSegmentator`` arguments for ``run_segmentation``."""
    args = ["-i", str(input_path), "-o", str(output_path), "--task", task, "--device", device,
            "--quiet", "--report", str(output_path / "run_report.json")]
    if speed == "fast":
        args += ["--fast", "--higher_order_resampling"]  # as the official server asks for it
    elif speed == "fastest":
        args.append("--fastest")
    if roi_subset:
        args += ["--roi_subset", *roi_subset]
    if statistics:
        args += ["--statistics", str(output_path / "statistics.json"), "--stats_include_incomplete"]
    return args


def modality_arguments(input_path: Path, result: Path) -> list[str]:
    return ["-i", str(input_path), "-o", str(result), "-q"]


def phase_arguments(input_path: Path, result: Path, device: str) -> list[str]:
    # The official adds --call_via_subprocess (its model run in a child process); our
    # totalseg_get_phase runs the model in its own process and has no such flag.
    return ["-i", str(input_path), "-o", str(result), "-d", device, "-q"]


def body_stats_arguments(input_path: Path, result: Path, modality: str, device: str) -> list[str]:
    return ["-i", str(input_path), "-o", str(result), "-m", modality, "-d", device, "-q",
            "--call_via_subprocess"]


def error_line(name: str, returncode: int, stdout: str, stderr: str) -> str:
    """One line for a failed command: its ``ERROR:`` line, else the last line it printed."""
    lines = [ln.strip() for ln in (stderr + "\n" + stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    said = (errors or lines or ["no output"])[-1].removeprefix("ERROR:").strip()
    return f"{name} failed (exit status {returncode}): {said}"


async def _stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM to the command's process group, SIGKILL after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.returncode is not None:
            return
        try:
            if os.name == "posix":
                os.killpg(process.pid, sig)
            else:
                process.kill()
        except ProcessLookupError:
            break
        try:
            await asyncio.wait_for(process.wait(), _STOP_GRACE)
            return
        except asyncio.TimeoutError:
            continue
    await process.wait()


async def run_command(name: str, arguments: list[str], timeout: float = SEGMENT_TIMEOUT) -> str:
    """Run console script ``name``; its stdout, or a :class:`UserError` with one line on failure."""
    process = await asyncio.create_subprocess_exec(
        executable(name), *arguments, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=os.name == "posix")
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        await _stop(process)
        raise UserError(f"{name} ran longer than {timeout:.0f} s and was stopped") from None
    except asyncio.CancelledError:
        await _stop(process)
        raise
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    if process.returncode != 0:
        raise UserError(error_line(name, process.returncode, stdout, stderr))
    return stdout
