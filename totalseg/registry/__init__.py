"""The task registry: which models each task runs, how, and what their labels mean.

All of it is data, in ``tasks.json`` and ``class_maps.json`` beside this file; this module only reads
it (json, no torch) and answers questions about it.

``tasks.json`` holds two tables:

``models``: one entry per nnU-Net dataset id (string key), as the official weights are laid out::

    {"folder": "Dataset291_TotalSegmentator_part1_organs_1559subj",
     "trainer": "nnUNetTrainerNoMirroring", "plans": "nnUNetPlans", "configuration": "3d_fullres",
     "release": "v2.0.0-weights",   # GitHub release tag of the open weights; null when licensed
     "licensed": false,
     "classes": "total_part1"}     # key into class_maps.json: the model's own output labels

``tasks``: one entry per task name::

    {"modality": "ct" | "mr", "licensed": false,
     "classes": "total",                     # key into class_maps.json: the task's output labels
     "auxiliary": null | "<class map key>",  # labels the model predicts but the task drops
     "modes": {"default": {"models": [291, 292], "resample": [1.5, 1.5, 1.5] | null},
               "fast": {...}, "fastest": {...}},   # fast/fastest only where they exist
     "step": 0.8 | 0.5,                      # sliding-window tile step
     "folds": [0] | null,                    # null: every fold_<k> found
     "crop": null | [class names of the crop model's output],
     "crop_addon": [3, 3, 3],                # mm
     "crop_model": null | "<task name>",
     "always_robust_crop": false,
     "remove_outside": null | [class names],
     "disallow_fast": false,
     "postprocess": null | "body" | ...,
     "download": [ids that `totalseg_download_weights -t <task>` fetches]}

Multi-model modes (several part models) map each model's local labels to the task's labels by
class name; later models win where parts overlap.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from totalseg.errors import UserError

# Crop models the official tool uses for -rs and task crops (dataset ids, class map key).
CROP_MODEL_CT = 298  # total, 6 mm
CROP_MODEL_CT_ROBUST = 297  # total, 3 mm
CROP_MODEL_MR = 852  # total_mr, 3 mm
CROP_MODEL_BODY = 300  # body, 6 mm


@dataclass(frozen=True)
class Model:
    id: int
    folder: str
    trainer: str
    plans: str
    configuration: str
    release: str | None
    licensed: bool
    classes: dict[int, str]

    @property
    def subfolder(self) -> str:
        return f"{self.trainer}__{self.plans}__{self.configuration}"


@dataclass(frozen=True)
class Mode:
    models: tuple[int, ...]
    resample: tuple[float, float, float] | None


@dataclass(frozen=True)
class Task:
    name: str
    modality: str
    licensed: bool
    classes: dict[int, str]
    auxiliary: dict[int, str]
    modes: dict[str, Mode]
    step: float
    folds: tuple[int, ...] | None
    crop: tuple[str, ...] | None
    crop_addon: tuple[float, float, float]
    crop_model: str | None
    always_robust_crop: bool  # crops with the 3 mm model, as with -rc
    remove_outside: tuple[str, ...] | None
    disallow_fast: bool
    postprocess: str | None
    download: tuple[int, ...]

    def mode(self, fast: bool = False, fastest: bool = False) -> Mode:
        """The sub-mode the official tool picks: --fastest falls back to --fast, --fast to default."""
        if (fast or fastest) and self.disallow_fast:
            raise UserError(f"task {self.name} does not work with option --fast/--fastest; run it without.")
        if fastest and "fastest" in self.modes:
            return self.modes["fastest"]
        if (fast or fastest) and "fast" in self.modes:
            return self.modes["fast"]
        return self.modes["default"]

    def class_id(self, name: str) -> int:
        for k, v in self.classes.items():
            if v == name:
                return k
        raise KeyError(name)


def _read(name: str) -> dict:
    return json.loads(resources.files(__package__).joinpath(name).read_text())


@lru_cache(maxsize=1)
def _tables() -> tuple[dict, dict]:
    return _read("tasks.json"), _read("class_maps.json")


def class_map(key: str | dict) -> dict[int, str]:
    """A class map of class_maps.json as {label id: class name} (a custom task's map is inline)."""
    if isinstance(key, dict):
        return {int(k): v for k, v in key.items()}
    maps = _tables()[1]
    return {int(k): v for k, v in maps[key].items()}


def standalone_class_maps() -> list[str]:
    """The class maps of class_maps.json that are neither a task's nor a model's (the official tool's extra
    maps: ``total_v1``, the ``*_auxiliary`` maps, ...)."""
    tables, maps = _tables()
    used = set(tables["tasks"]) | {m["classes"] for m in tables["models"].values() if isinstance(m["classes"], str)}
    return [name for name in maps if not name.startswith("_") and name not in used]


def is_builtin(task: str | None = None, model_id: int | None = None) -> bool:
    """Whether a task name or a dataset id belongs to the package's registry (not to custom_tasks.json)."""
    tables = _tables()[0]
    return (task is not None and task in tables["tasks"]) or (model_id is not None and str(model_id) in
                                                              tables["models"])


def _custom() -> dict:
    """The tasks of ``<home>/custom_tasks.json`` (re-read when the file changes)."""
    from totalseg import home
    from totalseg.registry.custom import read_custom

    tasks = _tables()[0]
    return read_custom(home.custom_tasks_path(), tasks["tasks"], tasks["models"])


def task_names() -> list[str]:
    return list(_tables()[0]["tasks"]) + list(_custom()["tasks"])


def get_model(model_id: int) -> Model:
    models = _tables()[0]["models"]
    if str(model_id) in models:
        return _get_model(int(model_id), models[str(model_id)])
    custom = _custom()["models"].get(str(model_id))
    if custom is None:
        raise KeyError(model_id)
    return _get_model(int(model_id), custom)


def _get_model(model_id: int, entry: dict) -> Model:
    return Model(
        id=int(model_id),
        folder=entry["folder"],
        trainer=entry["trainer"],
        plans=entry.get("plans", "nnUNetPlans"),
        configuration=entry.get("configuration", "3d_fullres"),
        release=entry.get("release"),
        licensed=bool(entry.get("licensed", False)),
        classes=class_map(entry["classes"]),
    )


def get_task(name: str) -> Task:
    """A built-in task, or one registered in ``<home>/custom_tasks.json``."""
    if name in _tables()[0]["tasks"]:
        return _builtin_task(name)
    custom = _custom()["tasks"]
    if name not in custom:
        raise UserError(f"unknown task '{name}'; `TotalSegmentator --list-tasks` lists the tasks.")
    return _make_task(name, custom[name])


@lru_cache(maxsize=None)
def _builtin_task(name: str) -> Task:
    return _make_task(name, _tables()[0]["tasks"][name])


def _make_task(name: str, t: dict) -> Task:
    modes = {
        k: Mode(models=tuple(int(i) for i in m["models"]),
                resample=None if m.get("resample") is None else tuple(float(x) for x in m["resample"]))
        for k, m in t["modes"].items()
    }
    folds = t.get("folds", [0])
    crop = t.get("crop")
    remove_outside = t.get("remove_outside")
    return Task(
        name=name,
        modality=t.get("modality", "ct"),
        licensed=bool(t.get("licensed", False)),
        classes=class_map(t["classes"]),
        auxiliary=class_map(t["auxiliary"]) if t.get("auxiliary") else {},
        modes=modes,
        step=float(t.get("step", 0.5)),
        folds=None if folds is None else tuple(folds),
        crop=None if crop is None else tuple(crop),
        crop_addon=tuple(float(x) for x in t.get("crop_addon", [3, 3, 3])),
        crop_model=t.get("crop_model"),
        always_robust_crop=bool(t.get("always_robust_crop", False)),
        remove_outside=None if remove_outside is None else tuple(remove_outside),
        disallow_fast=bool(t.get("disallow_fast", False)),
        postprocess=t.get("postprocess"),
        download=tuple(int(i) for i in t.get("download", [])),
    )
