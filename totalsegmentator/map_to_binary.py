"""``totalsegmentator.map_to_binary`` of the official API: ``{label id: class name}`` maps read from
totalseg's registry (JSON data; importing it loads no torch).

``class_map`` has one entry per task (and the official maps that are no task of their own, where the registry
has them); the ``*_parts*`` maps hold each part model's own labels (1..n) under the official part names.
"""
from __future__ import annotations

from totalseg import registry

# The part models of the multi-part tasks, by model id, and the official suffix of each part's name.
_PARTS = {
    "ct": {291: "organs", 292: "vertebrae", 293: "cardiac", 294: "muscles", 295: "ribs"},
    "mr": {850: "organs", 851: "muscles"},
    "headneck_muscles": {778: "muscles_1", 779: "muscles_2"},
}
_NOT_TASKS = ("total_v1", "total_highres_test", "covid", "test", "appendicular_bones_auxiliary",
              "face_mr_auxiliary", "kidney_cysts_auxiliary", "renal_arteries_auxiliary")


def _part_names(family: str) -> dict[int, str]:
    return {model_id: f"class_map_part_{suffix}" for model_id, suffix in _PARTS[family].items()}


def _part_labels(family: str) -> dict[str, dict[int, str]]:
    return {name: dict(registry.get_model(model_id).classes) for model_id, name in _part_names(family).items()}


def _all_maps() -> dict[str, dict[int, str]]:
    maps = {task: dict(registry.get_task(task).classes) for task in registry.task_names()}
    for key in _NOT_TASKS:
        if key not in maps:
            try:
                maps[key] = registry.class_map(key)
            except KeyError:  # a map our registry does not carry
                continue
    return maps


class_map = _all_maps()
map_taskid_to_partname_ct = _part_names("ct")
map_taskid_to_partname_mr = _part_names("mr")
map_taskid_to_partname_headneck_muscles = _part_names("headneck_muscles")
class_map_5_parts = _part_labels("ct")
class_map_parts_mr = _part_labels("mr")
class_map_parts_headneck_muscles = _part_labels("headneck_muscles")
