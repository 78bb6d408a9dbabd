"""Tasks a user adds without touching the package: ``<home>/custom_tasks.json``.

One entry per task, each running one model that lives in the weights home like the official ones::

    {"tasks": {"my_organs": {"folder": "Dataset901_MyOrgans",
                             "trainer": "nnUNetTrainer", "plans": "nnUNetPlans", "configuration": "3d_fullres",
                             "classes": {"1": "liver", "2": "spleen"},
                             "modality": "ct", "folds": [0], "step": 0.5}}}

``modality``, ``folds`` and ``step`` are optional. ``totalseg_import_weights -i RESULT_FOLDER --task NAME``
writes an entry; editing the file by hand works too. Built-in task names and dataset ids cannot be reused.
The entries come back in the schema of tasks.json, with the class map inline.
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Callable, TypeVar

from totalseg.errors import UserError

FOLDER = re.compile(r"^Dataset(\d{3,})_[A-Za-z0-9_.\-]+$")
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")
_cache: dict[tuple, dict] = {}
T = TypeVar("T")


def file_stamp(path: Path) -> tuple | None:
    """What tells one version of ``path`` from another without reading it: (path, mtime in ns, size);
    None when it does not exist. Every cache of what custom_tasks.json says is keyed on it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path), st.st_mtime_ns, st.st_size)


def read_custom(path: Path, builtin_tasks: dict, builtin_models: dict) -> dict:
    """``{"models": {...}, "tasks": {...}}`` from ``path`` (empty when it does not exist); checked."""
    key = file_stamp(path)
    if key is None:
        return {"models": {}, "tasks": {}}
    if key not in _cache:
        _cache.clear()
        _cache[key] = _parse(path, builtin_tasks, builtin_models)
    return _cache[key]


def follows_custom_tasks(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` (of hashable arguments, derived from the registry) remembered until ``<home>/custom_tasks.json``
    changes: results are keyed on the file's :func:`file_stamp` as well, and those of an older stamp are
    dropped when a new one is seen, so the cache holds one version of the file at most."""
    memo: dict[tuple, T] = {}
    last: list = [None]  # the stamp the entries were made under

    @functools.wraps(fn)
    def cached(*args):
        from totalseg import home

        stamp = file_stamp(home.custom_tasks_path())
        if stamp != last[0]:
            memo.clear()
            last[0] = stamp
        key = (stamp, args)  # with the stamp: an entry made while another thread saw the old file never serves
        if key not in memo:
            memo[key] = fn(*args)
        return memo[key]

    cached.cache_clear = memo.clear  # as functools' caches have
    return cached


def _parse(path: Path, builtin_tasks: dict, builtin_models: dict) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({e}); fix or delete it") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks", {}), dict):
        raise UserError(f'{path} should hold {{"tasks": {{name: entry}}}}')
    models, tasks = {}, {}
    for name, entry in data.get("tasks", {}).items():
        model_id, model, task = check_entry(name, entry, where=str(path))
        if name in builtin_tasks:
            raise UserError(f"{path}: task '{name}' is a built-in task; choose another name")
        if str(model_id) in builtin_models or str(model_id) in models:
            raise UserError(f"{path}: task '{name}' uses dataset id {model_id}, which another model has; "
                            "give the dataset another id")
        models[str(model_id)], tasks[name] = model, task
    return {"models": models, "tasks": tasks}


def check_entry(name: str, entry, where: str) -> tuple[int, dict, dict]:
    """One task entry, checked: (dataset id, model entry, task entry) in tasks.json's schema."""
    bad = f"{where}: task '{name}'"
    if not isinstance(name, str) or not NAME.match(name):
        raise UserError(f"{bad}: a task name is letters, digits, '_' or '-', starting with a letter")
    if not isinstance(entry, dict):
        raise UserError(f"{bad} should be an object")
    match = FOLDER.match(str(entry.get("folder", "")))
    if not match:
        raise UserError(f"{bad}: 'folder' should be a weights folder name like Dataset901_MyOrgans")
    for k in ("trainer", "plans", "configuration"):
        if not isinstance(entry.get(k), str) or not entry[k] or "__" in entry[k]:
            raise UserError(f"{bad}: '{k}' should be a name as in <trainer>__<plans>__<configuration>")
    classes = entry.get("classes")
    try:
        labels = {int(k): str(v) for k, v in classes.items()}
    except (AttributeError, TypeError, ValueError):
        raise UserError(f"{bad}: 'classes' should map label numbers to class names") from None
    if not labels or min(labels) < 1 or len(set(labels.values())) != len(labels):
        raise UserError(f"{bad}: 'classes' needs labels >= 1 with distinct names")
    modality = entry.get("modality", "ct")
    if modality not in ("ct", "mr"):
        raise UserError(f"{bad}: 'modality' is ct or mr")
    folds = entry.get("folds", [0])
    if not (isinstance(folds, list) and folds and all(isinstance(f, int) and f >= 0 for f in folds)):
        raise UserError(f"{bad}: 'folds' should be a list of fold numbers, e.g. [0]")
    step = entry.get("step", 0.5)
    if not isinstance(step, (int, float)) or not 0 < step <= 1:
        raise UserError(f"{bad}: 'step' (sliding-window step) should be in (0, 1]")
    model_id = int(match.group(1))
    model = {"folder": entry["folder"], "trainer": entry["trainer"], "plans": entry["plans"],
             "configuration": entry["configuration"], "release": None, "licensed": False,
             "classes": {str(k): v for k, v in sorted(labels.items())}}
    task = {"modality": modality, "licensed": False, "classes": model["classes"], "auxiliary": None,
            "modes": {"default": {"models": [model_id], "resample": None}}, "step": float(step),
            "folds": folds, "crop": None, "download": []}
    return model_id, model, task
