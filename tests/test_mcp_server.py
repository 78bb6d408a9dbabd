"""``totalseg_mcp``: the MCP server driven by the MCP SDK's own client, over stdio and over HTTP.

One segmentation (``example_ct_sm``, task total, speed fast, random weights, CPU) goes through
``run_segmentation``; its report, statistics and masks are read back. Where the official 2.18.0 venv is
there, its server answers the same registry questions and its tool list is compared with ours.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import nibabel as nib
import numpy as np
import pytest

from conftest import REF, _copy_home
from totalseg.registry import get_task, task_names

CT = REF / "example_ct_sm.nii.gz"
TOOLS = {"list_all_classes", "get_class_options", "list_all_tasks", "get_task_details", "get_modality",
         "detect_contrast_phase", "estimate_body_statistics", "run_segmentation"}
CLASSIFIERS = REF / "classifiers"


def _server_command() -> list[str]:
    script = Path(sys.executable).parent / "totalseg_mcp"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "totalseg.mcp_server.server"]


@pytest.fixture(scope="module")
def server_env(tmp_path_factory) -> dict[str, str]:
    """The server's environment: a random-weights home with the modality classifier, no network."""
    from weights_server import closed_port_url

    home = _copy_home(tmp_path_factory.mktemp("mcp") / "home")
    (home / "classifiers").mkdir()
    for f in CLASSIFIERS.glob("modality_classifiers_2025_02_24.json.*"):
        shutil.copy(f, home / "classifiers" / f.name)
    return {"TOTALSEG_HOME_DIR": str(home), "TOTALSEG_WEIGHTS_URL": closed_port_url(),
            "PATH": os.environ["PATH"]}


def payload(result) -> dict:
    """A tool's answer as the client sees it (JSON text; the structured copy, where there is one, agrees)."""
    assert not result.is_error, result.content[0].text
    data = json.loads(result.content[0].text)
    if result.structured_content is not None:
        assert result.structured_content == data
    return data


def error_text(result) -> str:
    assert result.is_error
    text = result.content[0].text
    assert "\n" not in text and "Traceback" not in text, text
    return text


async def stdio_session(command: list[str], env: dict[str, str], body):
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=command[0], args=command[1:], env=env)
    with open(os.devnull, "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await body(session)


# ------------------------------------------------------------------------------------------------ stdio
def test_registry_tools_over_stdio(server_env):
    async def body(s):
        tools = {t.name: t for t in (await s.list_tools()).tools}
        tasks = payload(await s.call_tool("list_all_tasks", {}))
        details = payload(await s.call_tool("get_task_details", {"task_names": ["total_mr", "total", "body"]}))
        classes = payload(await s.call_tool("list_all_classes", {}))
        options = payload(await s.call_tool("get_class_options", {"class_names": ["liver", "body_trunc"]}))
        bad_task = error_text(await s.call_tool("get_task_details", {"task_names": ["total", "livers"]}))
        bad_class = error_text(await s.call_tool("get_class_options", {"class_names": ["livers"]}))
        return tools, tasks, details, classes, options, bad_task, bad_class

    tools, tasks, details, classes, options, bad_task, bad_class = anyio.run(
        stdio_session, _server_command(), server_env, body)
    assert set(tools) == TOOLS
    assert set(tools["run_segmentation"].input_schema["required"]) == {"input_path", "output_path", "task",
                                                                       "device", "speed"}
    assert tools["run_segmentation"].input_schema["properties"]["speed"]["enum"] == ["standard", "fast", "fastest"]

    names = task_names()
    assert tasks["task_count"] == len(names)
    assert sorted(n for group in tasks["tasks"].values() for n in group) == sorted(names)
    assert "total" in tasks["tasks"]["CT"] and "total_mr" in tasks["tasks"]["MR"]

    assert list(details) == ["total_mr", "total", "body"]  # the order asked for
    for name, entry in details.items():
        task = get_task(name)
        assert entry == {"modality": task.modality.upper(), "license_required": task.licensed,
                         "classes": {str(k): v for k, v in task.classes.items()}}
    assert len(details["total"]["classes"]) == 117

    every = {c for n in names for c in get_task(n).classes.values()}
    assert classes["class_count"] == len(every) == len(set().union(*map(set, classes["classes"].values())))
    assert "liver" in classes["classes"]["CT"] and "liver" in classes["classes"]["MR"]
    assert options["liver"] == [n for n in names if "liver" in get_task(n).classes.values()]
    assert {"total", "total_mr"} <= set(options["liver"]) and "body" in options["body_trunc"]

    assert "livers" in bad_task and "list_all_tasks" in bad_task
    assert "livers" in bad_class


def test_segmentation_over_stdio(server_env, tmp_path):
    out = tmp_path / "segmentations"

    async def body(s):
        seg = {"input_path": str(CT), "output_path": str(out), "device": "cpu"}
        refusals = [error_text(await s.call_tool("run_segmentation", {**seg, "task": "no_such_task",
                                                                      "speed": "fast"})),
                    error_text(await s.call_tool("run_segmentation", {**seg, "task": "total", "speed": "fast",
                                                                      "roi_subset": ["livers"]})),
                    error_text(await s.call_tool("run_segmentation", {**seg, "task": "body_mr",
                                                                      "speed": "fast", "roi_subset": ["body_trunc"]})),
                    error_text(await s.call_tool("run_segmentation", {**seg, "task": "lung_vessels",
                                                                      "speed": "fast"})),
                    error_text(await s.call_tool("run_segmentation", {**seg, "task": "total", "speed": "slow"})),
                    error_text(await s.call_tool("run_segmentation", {**seg, "task": "total", "speed": "fast",
                                                                      "input_path": str(tmp_path / "no.nii.gz")}))]
        assert not out.exists()  # nothing ran
        done = payload(await s.call_tool("run_segmentation", {**seg, "task": "total", "speed": "fast"}))
        modality = payload(await s.call_tool("get_modality", {"input_path": str(CT)}))
        body_stats = await s.call_tool("estimate_body_statistics", {"input_path": str(tmp_path / "no.nii.gz"),
                                                                    "modality": "ct", "device": "cpu"})
        return refusals, done, modality, body_stats

    refusals, done, modality, body_stats = anyio.run(stdio_session, _server_command(), server_env, body)
    assert "no_such_task" in refusals[0]
    assert "livers" in refusals[1]
    assert "roi_subset" in refusals[2]
    assert "lung_vessels" in refusals[3] and "standard" in refusals[3]
    assert "speed" in refusals[4]
    assert "TotalSegmentator failed (exit status 1)" in refusals[5] and "no.nii.gz" in refusals[5]

    # The run: the official result shape (status, the run report, where the statistics are).
    assert done["status"] == "completed"
    assert done["task"] == "total" and done["fast"] is True and done["fastest"] is False
    assert done["num_classes"] == 117 and done["device"] == "cpu"
    assert done == {"status": "completed", **json.loads((out / "run_report.json").read_text()),
                    "statistics_path": str(out / "statistics.json"),
                    "statistics_warning": done["statistics_warning"]}
    stats = json.loads(Path(done["statistics_path"]).read_text())
    assert set(stats) == set(get_task("total").classes.values())
    ct = np.asanyarray(nib.load(CT).dataobj)
    voxel = float(np.prod(nib.load(CT).header.get_zooms()))
    for name in ("liver", "spleen", "aorta"):
        mask = np.asanyarray(nib.load(out / f"{name}.nii.gz").dataobj) > 0
        assert stats[name]["volume"] == pytest.approx(mask.sum() * voxel)
        if mask.any():  # --stats_include_incomplete: masks touching the border are measured too
            assert stats[name]["intensity"] == pytest.approx(ct[mask].mean(), abs=0.01)

    assert modality == {"modality": "ct"}
    error_text(body_stats)  # a tool error: no such input (or, before totalseg_get_body_stats exists, no command)


# ------------------------------------------------------------------------------------------------- http
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert process.poll() is None, process.stderr.read().decode(errors="replace")[-2000:]
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"the server did not listen on port {port} within {timeout} s")


def test_http_transport(server_env):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    port = _free_port()
    process = subprocess.Popen([*_server_command(), "--transport", "http", "--host", "127.0.0.1",
                                "--port", str(port)], env={**os.environ, **server_env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    async def body():
        async with streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write):
            async with ClientSession(read, write) as s:
                await s.initialize()
                tools = {t.name for t in (await s.list_tools()).tools}
                details = payload(await s.call_tool("get_task_details", {"task_names": ["total_mr"]}))
                bad = error_text(await s.call_tool("run_segmentation", {
                    "input_path": str(CT), "output_path": "/nonexistent/out", "task": "total_mr",
                    "device": "cpu", "speed": "standard", "roi_subset": ["not_a_class"]}))
                return tools, details, bad

    try:
        _wait_for_port(port, process)
        tools, details, bad = anyio.run(body)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert tools == TOOLS
    assert details["total_mr"]["classes"] == {str(k): v for k, v in get_task("total_mr").classes.items()}
    assert details["total_mr"]["modality"] == "MR"
    assert "not_a_class" in bad


def test_a_command_past_its_time_is_stopped_with_its_children(tmp_path):
    """A timeout ends the command's whole process group (the official's workers too) and is one line."""
    from totalseg.errors import UserError
    from totalseg.mcp_server.commands import run_command

    pids = tmp_path / "pids"
    script = f"sleep 60 & echo $! > {pids}; echo $$ >> {pids}; wait"
    with pytest.raises(UserError, match=r"^bash ran longer than 1 s and was stopped$"):
        anyio.run(lambda: run_command("bash", ["-c", script], timeout=1))
    for pid in map(int, pids.read_text().split()):
        time.sleep(0.2)
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
            assert state == "Z", f"process {pid} still runs"
        except ProcessLookupError:
            pass


def test_help_does_not_import_torch():
    code = ("import sys; from totalseg.mcp_server.server import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules and 'mcp' not in sys.modules, 'heavy import'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "--transport" in run.stdout and "{stdio,http}" in run.stdout


# --------------------------------------------------------------------------------------------- official
@pytest.mark.official
def test_same_answers_as_the_official_server(server_env):
    """The official server (its venv, its registry) and ours: same tools and arguments, same registry
    answers, except for the three official tasks that are not in our registry."""
    from test_official_live import _clean_env, _venv

    official = _venv() / "bin" / "totalseg_mcp"
    if not official.is_file():
        pytest.skip(f"the official 2.18.0 venv with its MCP server is not at {official.parent}")

    async def ask(s):
        tools = {t.name: (t.input_schema, t.output_schema) for t in (await s.list_tools()).tools}
        tasks = payload(await s.call_tool("list_all_tasks", {}))
        all_tasks = [n for group in tasks["tasks"].values() for n in group]
        details = payload(await s.call_tool("get_task_details", {"task_names": all_tasks}))
        classes = payload(await s.call_tool("list_all_classes", {}))
        options = payload(await s.call_tool("get_class_options", {"class_names": ["liver", "body_trunc", "brain"]}))
        refused = [(await s.call_tool("get_task_details", {"task_names": ["x"]})).is_error,
                   (await s.call_tool("run_segmentation", {"input_path": "a", "output_path": "b", "task": "body",
                                                           "device": "cpu", "speed": "fastest"})).is_error]
        return tools, tasks, details, classes, options, refused

    env = {k: v for k, v in _clean_env(**server_env).items() if k != "PATH"} | {"PATH": os.environ["PATH"]}
    theirs = anyio.run(stdio_session, [str(official)], env, ask)
    ours = anyio.run(stdio_session, _server_command(), server_env, ask)
    t_tools, t_tasks, t_details, t_classes, t_options, t_refused = theirs
    o_tools, o_tasks, o_details, o_classes, o_options, o_refused = ours

    assert o_tools == t_tools  # names, argument schemas and result schemas
    missing = set(t_details) - set(o_details)
    assert missing == {"total_v3", "total_highres_test", "test"}
    assert o_details == {n: e for n, e in t_details.items() if n not in missing}
    assert list(o_details) == [n for n in t_details if n not in missing]
    assert o_tasks["task_count"] == t_tasks["task_count"] - len(missing)
    assert o_tasks["tasks"] == {m: [n for n in names if n not in missing] for m, names in t_tasks["tasks"].items()}
    only_missing = {c for n in missing for c in t_details[n]["classes"].values()} - \
        {c for e in o_details.values() for c in e["classes"].values()}
    assert o_classes["classes"] == {m: [c for c in names if c not in only_missing]
                                    for m, names in t_classes["classes"].items()}
    assert o_options == {c: [n for n in ts if n not in missing] for c, ts in t_options.items()}
    assert o_refused == t_refused == [True, True]


@pytest.mark.slow
@pytest.mark.official
def test_same_segmentation_as_the_official_server(server_env, tmp_path):
    """run_segmentation (speed fastest: no flag that we refuse) through both servers: the same report
    fields, statistics and masks."""
    from test_official_live import _clean_env, _venv

    official = _venv() / "bin" / "totalseg_mcp"
    if not official.is_file():
        pytest.skip(f"the official 2.18.0 venv with its MCP server is not at {official.parent}")

    def run(command, env, out):
        async def body(s):
            return payload(await s.call_tool("run_segmentation", {
                "input_path": str(CT), "output_path": str(out), "task": "total", "device": "cpu",
                "speed": "fastest", "roi_subset": ["liver", "spleen", "aorta", "vertebrae_L1"]}))
        return anyio.run(stdio_session, command, env, body)

    # The official server runs the TotalSegmentator first on PATH: its own.
    env = _clean_env(**server_env) | {"PATH": f"{official.parent}{os.pathsep}{os.environ['PATH']}"}
    theirs = run([str(official)], env, tmp_path / "official")
    ours = run(_server_command(), server_env, tmp_path / "ours")
    assert set(theirs) <= set(ours)
    differ = {"totalsegmentator_version", "nnunetv2_version", "torch_version", "runtime_seconds", "input", "output",
              "statistics_path", "statistics_warning"}  # the warning: same meaning, our wording
    assert {k: v for k, v in ours.items() if k in theirs and k not in differ} == \
        {k: v for k, v in theirs.items() if k not in differ}
    t_stats = json.loads(Path(theirs["statistics_path"]).read_text())
    o_stats = json.loads(Path(ours["statistics_path"]).read_text())
    assert set(o_stats) == set(t_stats)
    for name, values in t_stats.items():
        assert o_stats[name] == pytest.approx(values, rel=1e-6, abs=1e-4), name
    for name in theirs["output_files"]:
        t_mask = np.asanyarray(nib.load(tmp_path / "official" / name).dataobj)
        assert np.array_equal(np.asanyarray(nib.load(tmp_path / "ours" / name).dataobj), t_mask), name
