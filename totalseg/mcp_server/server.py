"""``totalseg_mcp``: serve TotalSegmentator's tools over the Model Context Protocol (stdio or HTTP).

Eight tools, named and shaped as the official 2.18.0 server's. A refused request or a failed command is a
tool error (``isError`` with one line), never a crash of the server.
"""
from __future__ import annotations

import argparse
import functools
import inspect
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Literal

from totalseg.cli.common import run
from totalseg.errors import UserError
from totalseg.mcp_server import catalogue
from totalseg.mcp_server.commands import (MODALITY_TIMEOUT, body_stats_arguments, modality_arguments,
                                          phase_arguments, run_command, segmentation_arguments)

STATISTICS_WARNING = ("Masks cut by the edge of the scan are included in these statistics, so their volume and "
                      "intensity describe only the part in view: read them with care.")


def preferred_device() -> str:
    """gpu with an NVIDIA driver, mps on Apple silicon, else cpu: a guess made without importing torch."""
    if Path("/proc/driver/nvidia/gpus").is_dir() or shutil.which("nvidia-smi"):
        return "gpu"
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "mps"
    return "cpu"


def instructions(device: str) -> str:
    return f"""Tools for medical images (CT and MR, NIfTI or DICOM): which modality an image is, segmentation
of anatomical structures with TotalSegmentator's tasks, volumes and mean intensities of the structures,
the contrast phase of a CT and body measures estimated by models.

Use them instead of writing image-processing code or running shell commands. This machine's device
appears to be '{device}': pass it unless the user asks for another.

Do the least work that answers the question; a segmentation may be the answer or only a step to one.
To find the task that outputs a structure: list_all_classes, then get_class_options with the exact class
names, then get_task_details. Use only task and class names these tools return; never guess one.

Before run_segmentation, decide the task, modality, device, speed, ROI subset and statistics, and say
them to the user in a line or two; ask only where a choice that matters is still open."""


def _path(p: str) -> Path:
    return Path(p).expanduser().resolve()


def _read_json(path: Path, command: str) -> dict:
    if not path.is_file():
        raise UserError(f"{command} wrote no result at {path}")
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------- tools
def list_all_classes() -> dict[str, object]:
    """Every class any task outputs, grouped by modality (CT, MR), and how many distinct ones there are."""
    return catalogue.list_all_classes()


def get_class_options(class_names: list[str]) -> dict[str, list[str]]:
    """For each exact class name (as list_all_classes gives it), the tasks that output it."""
    return catalogue.get_class_options(class_names)


def list_all_tasks():
    """The names of all tasks, grouped by modality (CT, MR), and their number.

    Pass these exact names to get_task_details and run_segmentation.
    """
    return catalogue.list_all_tasks()


def get_task_details(task_names: list[str]) -> dict:
    """Per task (exact names from list_all_tasks): its modality, whether it needs a licence, and its
    output classes by label value."""
    return catalogue.get_task_details(task_names)


async def get_modality(input_path: str) -> dict[str, str]:
    """Whether a NIfTI image is a CT or an MR (a classifier's answer: ct or mr).

    Use it when the modality is not known and the next step depends on it.
    """
    with tempfile.TemporaryDirectory(prefix="totalseg_mcp_modality_") as tmp:
        result = Path(tmp) / "modality.json"
        await run_command("totalseg_get_modality", modality_arguments(_path(input_path), result),
                          timeout=MODALITY_TIMEOUT)
        return {"modality": _read_json(result, "totalseg_get_modality")["modality"]}


async def detect_contrast_phase(input_path: str, device: Literal["gpu", "cpu", "mps"]) -> dict[str, object]:
    """The contrast phase of a CT (native, arterial, portal venous, delayed), from a NIfTI file or a zip
    of DICOM files.

    It segments the CT first, so it can take minutes. CT only; the result is a model's estimate.
    """
    with tempfile.TemporaryDirectory(prefix="totalseg_mcp_phase_") as tmp:
        result = Path(tmp) / "phase.json"
        await run_command("totalseg_get_phase", phase_arguments(_path(input_path), result, device))
        return _read_json(result, "totalseg_get_phase")


async def estimate_body_statistics(input_path: str, modality: Literal["ct", "mr"],
                                   device: Literal["gpu", "cpu", "mps"]) -> dict[str, object]:
    """Weight, height, age, sex, BMI and body surface area estimated from a CT or MR (NIfTI or a zip of
    DICOM files).

    These are model estimates, not the patient's records; they are better when the scan covers much of
    the body.
    """
    with tempfile.TemporaryDirectory(prefix="totalseg_mcp_body_stats_") as tmp:
        result = Path(tmp) / "body_statistics.json"
        await run_command("totalseg_get_body_stats",
                          body_stats_arguments(_path(input_path), result, modality, device))
        return _read_json(result, "totalseg_get_body_stats")


async def run_segmentation(input_path: str, output_path: str, task: str, device: Literal["gpu", "cpu", "mps"],
                           speed: Literal["standard", "fast", "fastest"], roi_subset: list[str] | None = None,
                           statistics: bool = True) -> dict[str, object]:
    """Segment an image with a task, in a separate process; masks and run_report.json go to output_path.

    Pick the task for the anatomy asked about and the image's modality. With a task whose name begins
    with 'total', roi_subset (exact class names) limits the work to the structures asked about.

    statistics (on by default) writes statistics.json: volume and mean intensity per structure. Keep it
    for measurements; for a task with many classes and no ROI subset, ask first whether they are wanted,
    unless measurements were asked for. Structures cut by the edge of the scan are not flagged.

    speed: standard (full-resolution models) when shapes, small structures or exact measurements matter;
    fast (lower-resolution models, smoothly upsampled labels); fastest (lowest resolution, quickest).
    Tell the user the task, modality, device, speed, ROI subset and statistics setting before calling.
    """
    catalogue.check_segment_request(task, speed, roi_subset)
    output = _path(output_path)
    await run_command("TotalSegmentator", segmentation_arguments(_path(input_path), output, task, device, speed,
                                                                 roi_subset, statistics))
    result = {"status": "completed", **_read_json(output / "run_report.json", "TotalSegmentator")}
    if statistics:
        result["statistics_path"] = str(output / "statistics.json")
        result["statistics_warning"] = STATISTICS_WARNING
    return result


TOOLS = (list_all_classes, get_class_options, list_all_tasks, get_task_details, get_modality,
         detect_contrast_phase, estimate_body_statistics, run_segmentation)


# ------------------------------------------------------------------------------------------ server
def _tool_errors(fn):
    """``fn`` with a :class:`UserError` turned into the SDK's ToolError (an isError result, one line)."""
    from mcp.server.mcpserver.exceptions import ToolError

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def wrapped(*args, **kwargs):
            try:
                return await fn(*args, **kwargs)
            except UserError as e:
                raise ToolError(str(e)) from None
    else:
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except UserError as e:
                raise ToolError(str(e)) from None
    return wrapped


def _server_class():
    """The SDK's MCPServer, with arguments that fail the input schema refused in one line (the SDK's
    message is pydantic's multi-line report)."""
    try:
        from mcp.server import MCPServer
        from mcp.server.mcpserver.exceptions import ToolError
    except ImportError:
        raise UserError("totalseg_mcp needs the MCP SDK (mcp >= 2): pip install 'totalseg[mcp]'") from None
    from pydantic import ValidationError

    class Server(MCPServer):
        async def call_tool(self, name, arguments, context=None):
            try:
                return await super().call_tool(name, arguments, context)
            except ToolError as e:
                if not isinstance(e.__cause__, ValidationError):
                    raise
                wrong = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.__cause__.errors())
                raise ToolError(f"invalid arguments for {name}: {wrong}") from e.__cause__

    return Server


def build_server(device: str | None = None):
    """The MCP server with the eight tools; ``device`` is the one its instructions recommend."""
    server = _server_class()("TotalSegmentator", instructions=instructions(device or preferred_device()))
    for fn in TOOLS:
        server.add_tool(_tool_errors(fn))
    return server


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="totalseg_mcp", description="TotalSegmentator's tools as an MCP server.")
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio",
                   help="stdio (the client starts the server) or http (streamable HTTP at /mcp)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on with --transport http")
    p.add_argument("--port", type=int, default=8000, help="port to listen on with --transport http")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _serve(args), interrupted="stopped")


def _serve(args) -> int:
    server = build_server()
    if args.transport == "stdio":
        server.run()
    else:
        import uvicorn

        uvicorn.run(server.streamable_http_app(host=args.host), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
