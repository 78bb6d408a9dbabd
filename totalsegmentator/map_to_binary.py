"""``totalsegmentator.map_to_binary`` of the official API, derived from totalseg's registry (JSON data;
importing it loads no torch).

``class_map``: every task's classes, plus the registry's class maps that belong to no task or model. The part
tables (``map_taskid_to_partname_*``, ``class_map_*parts*``) come from the part models of the three multi-part
tasks, named after their folders: ``Dataset291_TotalSegmentator_part1_organs_...`` is ``class_map_part_organs``.
"""
from __future__ import annotations

import re

from totalseg import registry


def _part_name(task: str, model_id: int) -> str:
    """``class_map_part_<what>`` of a part model; parts whose folder names no kind (``..._part1_492subj`` of
    headneck_muscles) are numbered after the task's last word (``muscles_1``)."""
    found = re.search(r"_part(\d+)(?:_([a-z]+))?_\d+subj$", registry.get_model(model_id).folder)
    if found is None:
        raise ValueError(f"model {model_id} of {task} is not a numbered part")
    number, kind = found.groups()
    return f"class_map_part_{kind or task.rsplit('_', 1)[-1] + '_' + number}"


def _part_tables(task: str) -> tuple[dict[int, str], dict[str, dict[int, str]]]:
    """(model id -> part name, part name -> the part model's own labels) for a multi-part task."""
    ids = registry.get_task(task).modes["default"].models
    names = {model_id: _part_name(task, model_id) for model_id in ids}
    return names, {names[model_id]: dict(registry.get_model(model_id).classes) for model_id in ids}


class_map = {name: dict(registry.get_task(name).classes) for name in registry.task_names()}
class_map.update({name: registry.class_map(name) for name in registry.standalone_class_maps()})
map_taskid_to_partname_ct, class_map_5_parts = _part_tables("total")
map_taskid_to_partname_mr, class_map_parts_mr = _part_tables("total_mr")
map_taskid_to_partname_headneck_muscles, class_map_parts_headneck_muscles = _part_tables("headneck_muscles")
