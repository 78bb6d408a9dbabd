"""The registry as the MCP server tells it: tasks, their classes, and which tasks output a class.

Everything is read from ``totalseg.registry`` (json only). The shapes are those of the official
server: a task is ``{"modality": "CT"|"MR", "license_required": bool, "classes": {"1": name, ...}}``,
tasks and classes are grouped by modality, and tasks keep the registry's order.
"""
from __future__ import annotations

from totalseg.errors import UserError
from totalseg.registry import get_task, task_names
from totalseg.registry.listing import task_entry

SPEEDS = ("standard", "fast", "fastest")


def tasks() -> dict[str, dict]:
    """Every task (built-in, then those of ``custom_tasks.json``), in registry order."""
    return {name: task_entry(name) for name in task_names()}


def _by_modality(entries: dict[str, dict]) -> dict[str, list[str]]:
    """Task names grouped by modality (sorted keys and names)."""
    return {m: sorted(n for n, t in entries.items() if t["modality"] == m)
            for m in sorted({t["modality"] for t in entries.values()})}


def list_all_tasks() -> dict:
    entries = tasks()
    return {"task_count": len(entries), "tasks": _by_modality(entries)}


def list_all_classes() -> dict:
    entries = tasks()
    classes = {m: sorted({c for n in names for c in entries[n]["classes"].values()})
               for m, names in _by_modality(entries).items()}
    return {"class_count": len({c for names in classes.values() for c in names}), "classes": classes}


def get_task_details(task_names: list[str]) -> dict:
    entries = tasks()
    unknown = sorted(set(task_names) - entries.keys())
    if unknown:
        raise UserError(f"unknown tasks: {unknown}; list_all_tasks gives the task names")
    return {name: entries[name] for name in task_names}


def get_class_options(class_names: list[str]) -> dict[str, list[str]]:
    entries = tasks()
    unknown = sorted(set(class_names) - {c for t in entries.values() for c in t["classes"].values()})
    if unknown:
        raise UserError(f"unknown classes: {unknown}; list_all_classes gives the class names")
    return {c: [n for n, t in entries.items() if c in t["classes"].values()] for c in class_names}


def speeds(task: str) -> list[str]:
    """The speeds a task has its own models for: standard always, fast / fastest where they exist."""
    modes = get_task(task).modes
    return [s for s in SPEEDS if s == "standard" or s in modes]


def check_segment_request(task: str, speed: str, roi_subset: list[str] | None) -> None:
    """Refuse, in one line, a task, ROI subset or speed the official server refuses."""
    entries = tasks()
    if task not in entries:
        raise UserError(f"unknown task '{task}'; list_all_tasks gives the task names")
    missing = sorted(set(roi_subset or []) - set(entries[task]["classes"].values()))
    if missing:
        raise UserError(f"task '{task}' does not output these classes: {missing}; "
                        f"get_class_options says which tasks do")
    if roi_subset and not task.startswith("total"):
        raise UserError("roi_subset works only with the tasks whose name begins with 'total'; leave it out")
    if speed not in speeds(task):
        raise UserError(f"task '{task}' has these speeds: {speeds(task)}; use one of them")
