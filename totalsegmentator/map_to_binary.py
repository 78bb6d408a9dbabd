"""``totalsegmentator.map_to_binary``: class maps ``{label id: class name}``, from totalseg's registry.

Built at import from the registry's JSON data (no torch). The ``*_parts*`` maps are the part
models' own labels (ids 1..n), keyed by the official part names.
"""
from __future__ import annotations

from totalseg import registry

__all__ = ["class_map", "class_map_5_parts", "class_map_parts_mr", "class_map_parts_headneck_muscles",
           "map_taskid_to_partname_ct", "map_taskid_to_partname_mr",
           "map_taskid_to_partname_headneck_muscles"]

# Class maps of the official map_to_binary that are not tasks of their own (when our data has them).
_EXTRA_MAPS = ("total_v1", "total_highres_test", "covid", "test", "appendicular_bones_auxiliary",
               "face_mr_auxiliary", "kidney_cysts_auxiliary", "renal_arteries_auxiliary")

map_taskid_to_partname_ct: dict[int, str] = {
    291: "class_map_part_organs", 292: "class_map_part_vertebrae", 293: "class_map_part_cardiac",
    294: "class_map_part_muscles", 295: "class_map_part_ribs"}
map_taskid_to_partname_mr: dict[int, str] = {850: "class_map_part_organs", 851: "class_map_part_muscles"}
map_taskid_to_partname_headneck_muscles: dict[int, str] = {
    778: "class_map_part_muscles_1", 779: "class_map_part_muscles_2"}


def _task_maps() -> dict[str, dict[int, str]]:
    maps = {name: dict(registry.get_task(name).classes) for name in registry.task_names()}
    for key in _EXTRA_MAPS:
        try:
            maps.setdefault(key, registry.class_map(key))
        except KeyError:
            pass
    return maps


def _part_maps(partnames: dict[int, str]) -> dict[str, dict[int, str]]:
    return {name: dict(registry.get_model(model_id).classes) for model_id, name in partnames.items()}


class_map: dict[str, dict[int, str]] = _task_maps()
class_map_5_parts = _part_maps(map_taskid_to_partname_ct)
class_map_parts_mr = _part_maps(map_taskid_to_partname_mr)
class_map_parts_headneck_muscles = _part_maps(map_taskid_to_partname_headneck_muscles)
