"""``totalsegmentator.registry`` of the official API: the tasks, their modality, licence and classes, served by
:mod:`totalseg.registry` (json only: importing this module loads neither torch nor numpy)."""
from __future__ import annotations

from totalseg import registry as _registry
from totalseg.errors import UserError
from totalseg.registry import listing as _listing

__all__ = ["TASKS", "format_classes_table", "format_tasks_table", "get_task_classes", "list_tasks",
           "package_version", "requires_license", "task_modality", "task_registry"]


def __getattr__(name: str):
    if name == "TASKS":  # read when asked: custom tasks registered meanwhile are listed too
        return _registry.task_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _task(task: str):
    try:
        return _registry.get_task(task)
    except UserError:
        raise KeyError(f"unknown task {task!r}; totalseg_info -lt lists the tasks") from None


def get_task_classes(task: str) -> dict[int, str]:
    """``{label: class name}`` of a task (KeyError for an unknown task)."""
    return dict(_task(task).classes)


def task_modality(task: str) -> str:
    """"CT" or "MR"."""
    return _task(task).modality.upper()


def requires_license(task: str) -> bool:
    return _task(task).licensed


def list_tasks() -> list[dict]:
    """One ``{name, modality, license_required, num_classes}`` per task."""
    return [_listing.task_summary(name) for name in _registry.task_names()]


def task_registry() -> dict:
    """Every task with its modality, licence and classes (``totalseg_info --json``)."""
    return {"totalsegmentator_version": package_version(),
            "tasks": {name: _listing.task_entry(name) for name in _registry.task_names()}}


def format_tasks_table() -> str:
    return _listing.format_task_list()


def format_classes_table(task: str) -> str:
    _task(task)
    return _listing.format_class_list(task)


def package_version() -> str:
    from totalseg.version import OFFICIAL_VERSION

    return OFFICIAL_VERSION
