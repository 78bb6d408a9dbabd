"""Plain-text listings of the registry for ``TotalSegmentator --list-tasks`` and ``--list-classes TASK``.

The layout is what the official TotalSegmentator 2.18.0 prints for these options (tasks in its registry order,
``tasks.json`` keeps that order); our registry has 50 of its 53 tasks (no total_v3, total_highres_test, test).
Only the registry (json) is read here: importing this module loads neither torch nor numpy.
"""
from __future__ import annotations

from totalseg.registry import get_task, task_names

MODE_ORDER = ("default", "fast", "fastest")
LICENSE_URL = "https://backend.totalsegmentator.com/license-academic/"


def mode_names(task: str) -> list[str]:
    """The sub-modes of a task: default, then fast / fastest where they exist."""
    modes = get_task(task).modes
    return [m for m in MODE_ORDER if m in modes] + sorted(m for m in modes if m not in MODE_ORDER)


def format_task_list(show_modes: bool = False) -> str:
    """The task table of ``--list-tasks``: a header, a rule, one row per task, then a blank line and a footer.

    Row columns: task name, modality (CT/MR), licence required (yes/no), number of output classes; with
    ``show_modes`` a MODES column (e.g. ``default, fast, fastest``) is appended (not in the official output).
    """
    names = task_names()
    width = max(len(n) for n in names) + 2

    def row(name: str, modality: str, licence: str, n_classes: str, modes: str) -> str:
        line = f"{name:<{width}}{modality:<10}{licence:<9}"
        if show_modes:
            return f"{line}{n_classes:<9}{modes}".rstrip()
        return f"{line}{n_classes}".rstrip()

    header = row("TASK", "MODALITY", "LICENSE", "CLASSES", "MODES")
    lines = [header, "-" * len(header)]
    for name in names:
        task = get_task(name)
        lines.append(row(name, task.modality.upper(), "yes" if task.licensed else "no", str(len(task.classes)),
                         ", ".join(mode_names(name))))
    lines += ["", f"{len(names)} tasks. Licensed tasks need a (free for non-commercial) license: {LICENSE_URL}"]
    return "\n".join(lines)


def format_class_list(task: str = "total") -> str:
    """The class list of ``--list-classes TASK``: a title line, a blank line, then ``index  name`` per class.

    e.g. ``Task 'total'  [CT, open license, 117 classes]`` ... ``   5  liver``.
    Raises :class:`totalseg.errors.UserError` for an unknown task.
    """
    t = get_task(task)
    licence = "license required" if t.licensed else "open license"
    lines = [f"Task '{task}'  [{t.modality.upper()}, {licence}, {len(t.classes)} classes]", ""]
    lines += [f"{idx:>4}  {name}" for idx, name in sorted(t.classes.items())]
    return "\n".join(lines)


def task_entry(name: str) -> dict:
    """One task as the official registry describes it (``totalseg_info --json``, the MCP server):
    ``{"modality": "CT"|"MR", "license_required": bool, "classes": {"1": name, ...}}``."""
    task = get_task(name)
    return {"modality": task.modality.upper(), "license_required": task.licensed,
            "classes": {str(k): v for k, v in sorted(task.classes.items())}}


def task_summary(name: str) -> dict:
    """One row of the official ``totalseg_info -lt --json``: name, modality, licence, number of classes."""
    task = get_task(name)
    return {"name": name, "modality": task.modality.upper(), "license_required": task.licensed,
            "num_classes": len(task.classes)}
