"""The official ``totalsegmentator.map_to_binary`` names, computed on first use from totalseg's registry.

Nothing here is a hand-kept table: the registry (JSON data, no torch) holds every task's classes and the
class maps that belong to no task; the part tables follow from the part models of the multi-part tasks,
whose folder names say what each part holds (``..._part2_vertebrae_1532subj`` -> ``class_map_part_vertebrae``).
Each name is built when it is first read and then kept in the module.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

from totalseg import registry

_PART_FOLDER = re.compile(r"_part(?P<number>\d+)(?:_(?P<kind>[a-z]+))?_\d+subj$")


def _part_key(task: str, model_id: int) -> str:
    match = _PART_FOLDER.search(registry.get_model(model_id).folder)
    if match is None:
        raise ValueError(f"model {model_id} of {task} is not a numbered part")
    # Parts whose folder names no kind (headneck_muscles) take the task's last word and their number.
    what = match["kind"] or f"{task.rsplit('_', 1)[-1]}_{match['number']}"
    return "class_map_part_" + what


@lru_cache(maxsize=None)
def _parts_of(task: str) -> tuple[dict[int, str], dict[str, dict[int, str]]]:
    """For a multi-part task: model id -> part key, and part key -> that model's own labels (1..n)."""
    keys, labels = {}, {}
    for model_id in registry.get_task(task).modes["default"].models:
        key = _part_key(task, model_id)
        keys[model_id] = key
        labels[key] = dict(registry.get_model(model_id).classes)
    return keys, labels


def _every_class_map() -> dict[str, dict[int, str]]:
    maps = {name: dict(registry.get_task(name).classes) for name in registry.task_names()}
    for name in registry.standalone_class_maps():
        maps[name] = registry.class_map(name)
    return maps


_BUILDERS: dict[str, Callable[[], dict]] = {"class_map": _every_class_map}
for _suffix, _task, _labels_name in (("ct", "total", "class_map_5_parts"),
                                     ("mr", "total_mr", "class_map_parts_mr"),
                                     ("headneck_muscles", "headneck_muscles", "class_map_parts_headneck_muscles")):
    _BUILDERS[f"map_taskid_to_partname_{_suffix}"] = lambda task=_task: _parts_of(task)[0]
    _BUILDERS[_labels_name] = lambda task=_task: _parts_of(task)[1]

__all__ = list(_BUILDERS)


def __getattr__(name: str):
    if name not in _BUILDERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = _BUILDERS[name]()
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_BUILDERS))
