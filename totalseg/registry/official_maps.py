"""The class tables the official package exposes in ``totalsegmentator.map_to_binary``, derived from the registry.

Nothing is kept by hand: task classes and the task-less class maps come from the registry's JSON; a multi-part
task's tables come from its part models, whose folder names say what each part holds
(``Dataset292_..._part2_vertebrae_1532subj`` is ``class_map_part_vertebrae``).
"""
from __future__ import annotations

import re

from totalseg import registry
from totalseg.registry.custom import follows_custom_tasks

# Official table names of the multi-part tasks: (task, name of "model id -> part", name of "part -> labels").
MULTI_PART = (("total", "map_taskid_to_partname_ct", "class_map_5_parts"),
              ("total_mr", "map_taskid_to_partname_mr", "class_map_parts_mr"),
              ("headneck_muscles", "map_taskid_to_partname_headneck_muscles", "class_map_parts_headneck_muscles"))
NAMES = ("class_map", *(name for _, *names in MULTI_PART for name in names))
_PART_IN_FOLDER = re.compile(r"_part(\d+)(?:_([a-z]+))?_\d+subj$")


def part_name(task: str, model_id: int) -> str:
    """``class_map_part_<kind>``; a folder without a kind (headneck_muscles) gives the task's last word + number."""
    found = _PART_IN_FOLDER.search(registry.get_model(model_id).folder)
    if found is None:
        raise ValueError(f"model {model_id} of {task} is not a numbered part")
    number, kind = found.groups()
    return f"class_map_part_{kind or task.split('_')[-1] + '_' + number}"


def all_class_maps() -> dict[str, dict[int, str]]:
    """Every task's classes, then the class maps that belong to no task."""
    tables = {task: dict(registry.get_task(task).classes) for task in registry.task_names()}
    tables.update((key, registry.class_map(key)) for key in registry.standalone_class_maps())
    return tables


@follows_custom_tasks  # class_map lists the custom tasks too
def table(name: str) -> dict:
    """The official table called ``name`` (KeyError for other names); built once per version of
    ``<home>/custom_tasks.json``."""
    if name == "class_map":
        return all_class_maps()
    for task, ids_name, labels_name in MULTI_PART:
        if name in (ids_name, labels_name):
            models = registry.get_task(task).modes["default"].models
            if name == ids_name:
                return {m: part_name(task, m) for m in models}
            return {part_name(task, m): dict(registry.get_model(m).classes) for m in models}
    raise KeyError(name)
