"""Is a model in the home installed, missing or incomplete, and how much disk does it take.

A model counts as installed only when its result folder has plans.json, dataset.json and a
``fold_<k>/checkpoint_final.pth`` for every fold its tasks use (any one fold where a task takes all found).
"""
from __future__ import annotations

import json
from pathlib import Path

from totalseg.errors import WeightsError
from totalseg.registry import Model, get_model, get_task, task_names
from totalseg.registry.custom import follows_custom_tasks

CHECKPOINT = "checkpoint_final.pth"
INSTALLED, MISSING, INCOMPLETE = "installed", "missing", "incomplete"


@follows_custom_tasks  # an edited custom task may take other folds
def needed_folds(model_id: int) -> tuple[int, ...] | None:
    """Folds the tasks running ``model_id`` load; None when one takes every fold found (then any one will do)."""
    folds: set[int] = set()
    for name in task_names():
        task = get_task(name)
        if not any(model_id in mode.models for mode in task.modes.values()):
            continue
        if task.folds is None:
            return None
        folds.update(task.folds)
    return tuple(sorted(folds or {0}))


def required_files(model: Model) -> list[str]:
    """Paths, relative to the Dataset folder, that an installed ``model`` has for sure.

    Where a task takes every fold found, no particular fold is required here; :func:`missing_files` and
    :func:`check_loadable` then ask for at least one.
    """
    sub = model.subfolder
    folds = needed_folds(model.id) or ()
    return [f"{sub}/plans.json", f"{sub}/dataset.json"] + [f"{sub}/fold_{k}/{CHECKPOINT}" for k in folds]


def missing_files(model: Model, weights: Path) -> list[str]:
    """The required files ``model`` lacks under ``weights`` (empty files count as missing)."""
    missing = [f for f in required_files(model) if not _nonempty(weights / model.folder / f)]
    if needed_folds(model.id) is None:
        folds = (weights / model.folder / model.subfolder).glob("fold_*")
        if not any(_nonempty(p / CHECKPOINT) for p in folds):
            missing.append(f"{model.subfolder}/fold_*/{CHECKPOINT}")
    return missing


def all_models() -> list[Model]:
    """Every model a task runs or downloads, by dataset id."""
    ids: set[int] = set()
    for name in task_names():
        task = get_task(name)
        ids.update(task.download)
        for mode in task.modes.values():
            ids.update(mode.models)
    return [get_model(i) for i in sorted(ids)]


def _nonempty(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def model_state(model: Model, weights: Path) -> str:
    """``installed``, ``missing`` (no result folder) or ``incomplete`` (a folder lacking required files)."""
    if not (weights / model.folder / model.subfolder).exists():
        return MISSING
    return INCOMPLETE if missing_files(model, weights) else INSTALLED


def check_loadable(model: Model, dataset_folder: Path) -> None:
    """Open every file a run reads: the two json files parse, each checkpoint loads with weights_only."""
    import torch

    result_folder = dataset_folder / model.subfolder
    for name in ("plans.json", "dataset.json"):
        try:
            json.loads((result_folder / name).read_text())
        except (OSError, ValueError) as e:
            raise WeightsError(f"{model.folder}/{model.subfolder}/{name} is unreadable ({type(e).__name__})") from None
    folds = needed_folds(model.id)
    paths = (sorted(result_folder.glob(f"fold_*/{CHECKPOINT}")) if folds is None
             else [result_folder / f"fold_{k}" / CHECKPOINT for k in folds])
    if not paths:
        raise WeightsError(f"{model.folder}/{model.subfolder} has no fold_*/{CHECKPOINT}")
    for path in paths:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure to unpickle means the file is unusable
            raise WeightsError(f"{model.folder}/{path.relative_to(dataset_folder)} does not load "
                               f"({type(e).__name__})") from None
        if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
            raise WeightsError(f"{model.folder}/{path.relative_to(dataset_folder)} is not an nnU-Net checkpoint "
                               "(no network_weights)")


def size_on_disk(path: Path) -> int:
    """Bytes of all files under ``path`` (0 when it does not exist)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            pass
    return total
