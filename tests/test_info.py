"""totalseg_info: the official listings and JSON (tests/data/official_info), and our installed-weights report."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from totalseg.cli.info import main

OFFICIAL = Path(__file__).parent / "data" / "official_info"
NOT_HERE = ("total_v3", "test", "total_highres_test")  # official tasks without released weights


def _out(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_registry_json_is_the_official(capsys):
    official = json.loads((OFFICIAL / "registry.json").read_text())
    for name in NOT_HERE:
        del official["tasks"][name]
    ours = json.loads(_out(capsys, "--json"))
    assert ours == official and list(ours["tasks"]) == list(official["tasks"])


def test_task_list_json_and_table_are_the_official(capsys):
    official = [row for row in json.loads((OFFICIAL / "list_tasks.json").read_text()) if row["name"] not in NOT_HERE]
    assert json.loads(_out(capsys, "-lt", "--json")) == official
    lines = [line for line in (OFFICIAL / "list_tasks.txt").read_text().splitlines()
             if line.split(" ")[0] not in NOT_HERE]
    table = "\n".join(lines).replace("53 tasks.", "50 tasks.") + "\n"
    assert _out(capsys, "-lt") == table
    assert _out(capsys).startswith(table)  # no option: the table, then a hint


def test_classes_are_the_official(capsys):
    assert _out(capsys, "-cl", "-ta", "total") == (OFFICIAL / "classes_total.txt").read_text()
    official = json.loads((OFFICIAL / "registry.json").read_text())["tasks"]
    assert json.loads(_out(capsys, "-cl", "-ta", "liver_vessels", "--json")) == official["liver_vessels"]["classes"]
    both = json.loads(_out(capsys, "-cl", "-ta", "body", "-ta", "face", "--json"))  # ours: -ta repeated
    assert both == {"body": official["body"]["classes"], "face": official["face"]["classes"]}


def test_classes_need_a_task_and_a_known_one(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["-cl"])
    assert exit_.value.code == 2 and "-ta TASK" in capsys.readouterr().err
    assert main(["-cl", "-ta", "livr"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR: unknown task 'livr'") and "\n" not in err


def test_weights_report_says_what_is_installed(use_home, tmp_path, monkeypatch, capsys):
    """-w: every model of a task with its state and size; an empty home has them all missing."""
    from totalseg.registry import get_task

    report = json.loads(_out(capsys, "-w", "-ta", "total", "--json"))
    rows = report["tasks"]["total"]
    assert [r["id"] for r in rows] == list(get_task("total").download)
    assert all(r["state"] == "installed" and r["bytes"] > 0 for r in rows)
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "empty"))
    text = _out(capsys, "-w", "-ta", "total")
    assert f"0 installed (0 B on disk), 0 incomplete, {len(rows)} missing." in text


def test_registry_module_of_the_official_api():
    """totalsegmentator.registry answers as the official module for the tasks both have."""
    from totalsegmentator import registry

    official = json.loads((OFFICIAL / "registry.json").read_text())
    for name in NOT_HERE:
        del official["tasks"][name]
    assert registry.task_registry() == official and registry.TASKS == list(official["tasks"])
    assert registry.get_task_classes("total")[5] == "liver" and registry.task_modality("total_mr") == "MR"
    assert registry.requires_license("tissue_types") and not registry.requires_license("total")
    with pytest.raises(KeyError):
        registry.get_task_classes("livr")
    assert registry.format_classes_table("total") + "\n" == (OFFICIAL / "classes_total.txt").read_text()
    assert [row["name"] for row in registry.list_tasks()] == registry.TASKS
