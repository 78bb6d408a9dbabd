"""A trained nnU-Net result folder -> the weights home, and a custom task that runs it.

The result folder (``.../Dataset<ID>_<name>/<Trainer>__<Plans>__<configuration>``) is copied in the official
layout (plans.json, dataset.json, ``fold_<k>/checkpoint_final.pth``; logs and validation outputs stay
behind), load-tested, and renamed into place under the install lock; then the task is written to
``<home>/custom_tasks.json`` so that ``TotalSegmentator -ta <task>`` runs it.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from totalseg import home
from totalseg.errors import UserError
from totalseg.filelock import file_lock
from totalseg.registry import Model
from totalseg.registry.custom import FOLDER, check_entry
from totalseg.write.atomic import write_atomic

Say = Callable[[str], None]
CHECKPOINT = "checkpoint_final.pth"


def find_result(path: Path) -> Path:
    """The ``<Trainer>__<Plans>__<configuration>`` folder: ``path`` itself or its only such subfolder."""
    path = Path(path)
    if (path / "plans.json").is_file():
        return path
    subs = [p for p in path.glob("*__*__*") if (p / "plans.json").is_file()] if path.is_dir() else []
    if len(subs) != 1:
        raise UserError(f"{path} is not an nnU-Net result folder (<Trainer>__<Plans>__<configuration> with "
                        f"plans.json){'; it holds several, give one' if subs else ''}")
    return subs[0]


def _labels(result: Path) -> dict[int, str]:
    """The model's classes from its dataset.json (background and nnU-Net's ignore label left out)."""
    try:
        labels = json.loads((result / "dataset.json").read_text())["labels"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"{result}/dataset.json is missing or has no labels") from None
    out = {}
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise UserError(f"{result} is a region-based model; only label maps can become a task")
        if int(value) > 0 and name != "ignore":
            out[int(value)] = name
    return out


def _stage(result: Path, folds: list[int], staging: Path) -> None:
    """Copy what a run reads into ``staging`` (the result folder's name kept)."""
    staging.mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copyfile(result / name, staging / name)
    for k in folds:
        (staging / f"fold_{k}").mkdir()
        clean_checkpoint(result / f"fold_{k}" / CHECKPOINT, staging / f"fold_{k}" / CHECKPOINT)


def _plain(value):
    """NumPy scalars, also inside dicts and lists, as Python values."""
    import numpy as np

    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value.item() if isinstance(value, np.generic) else value


def clean_checkpoint(src: Path, dst: Path) -> None:
    """Keep what inference and fine-tuning read, as tensors and Python values.

    nnU-Net 2.8 logs NumPy scalars into its checkpoints, which a ``weights_only`` load (ours) refuses; only
    those two NumPy types are allowed while reading, and the optimizer state is left behind.
    """
    import numpy as np
    import torch

    core = np._core if hasattr(np, "_core") else np.core  # NumPy 2 renamed it
    allowed = [np.dtype, core.multiarray.scalar] + [getattr(np.dtypes, n) for n in dir(np.dtypes)
                                                    if n.endswith("DType")]
    try:
        with torch.serialization.safe_globals(allowed):
            ckpt = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise UserError(f"{src} does not load as an nnU-Net checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "network_weights" not in ckpt:
        raise UserError(f"{src} is not an nnU-Net checkpoint (no network_weights)")
    keep = ("network_weights", "init_args", "trainer_name", "inference_allowed_mirroring_axes", "current_epoch",
            "logging", "_best_ema")
    out = {k: ckpt[k] if k == "network_weights" else _plain(ckpt[k]) for k in keep if k in ckpt}
    torch.save(out, dst)


def _check_id_free(data: dict, name: str, model_id: int) -> None:
    """Refuse a dataset id that another custom task runs (one model, one task)."""
    for other, e in data.get("tasks", {}).items():
        same = FOLDER.match(str(e.get("folder", "")))
        if other != name and same and int(same.group(1)) == model_id:
            raise UserError(f"dataset id {model_id} is task '{other}' already; import it as --task {other}, "
                            "or train under another dataset id")


def register_task(name: str, entry: dict, path: Path | None = None) -> None:
    """Add or replace ``name`` in ``<home>/custom_tasks.json`` (locked, atomic)."""
    from totalseg.registry import is_builtin

    path = home.custom_tasks_path() if path is None else Path(path)
    check_entry(name, entry, where="the new task")
    if is_builtin(task=name):
        raise UserError(f"'{name}' is a built-in task; choose another task name")
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(".custom_tasks.json.lock")):
        data = json.loads(path.read_text()) if path.is_file() else {"tasks": {}}
        _check_id_free(data, name, int(FOLDER.match(entry["folder"]).group(1)))
        data.setdefault("tasks", {})[name] = entry
        write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n"))


def import_result(result: Path, task: str, *, modality: str = "ct", weights: Path | None = None,
                  say: Say = lambda m: None) -> Model:
    """Install a trained result folder into the weights home and register it as task ``task``."""
    from totalseg.install.installer import _in_weights_folder
    from totalseg.install.status import check_loadable
    from totalseg.registry import is_builtin

    if is_builtin(task=task):
        raise UserError(f"'{task}' is a built-in task; choose another task name")
    result = find_result(result)
    dataset = result.parent.name
    if not FOLDER.match(dataset):
        raise UserError(f"the result folder should sit in a Dataset<ID>_<name> folder (it is in {dataset})")
    trainer, plans, configuration = result.name.split("__")
    folds = sorted(int(p.name[5:]) for p in result.glob("fold_*")
                   if p.name[5:].isdigit() and (p / CHECKPOINT).is_file())
    if not folds:
        raise UserError(f"{result} has no fold_<k>/{CHECKPOINT}: the training has not finished")
    entry = {"folder": dataset, "trainer": trainer, "plans": plans, "configuration": configuration,
             "classes": {str(k): v for k, v in sorted(_labels(result).items())}, "modality": modality,
             "folds": folds}
    model_id = check_entry(task, entry, where="the new task")[0]
    if is_builtin(model_id=model_id):
        raise UserError(f"dataset id {model_id} ({dataset}) is an official model's id; convert and train under "
                        "another id (e.g. 900-999)")
    custom = home.custom_tasks_path()
    if custom.is_file():  # before any copying; register_task checks again under the lock
        _check_id_free(json.loads(custom.read_text()), task, model_id)
    model = Model(id=model_id, folder=dataset, trainer=trainer, plans=plans, configuration=configuration,
                  release=None, licensed=False, classes={int(k): v for k, v in entry["classes"].items()})
    weights = home.weights_dir() if weights is None else Path(weights)
    with _in_weights_folder(weights, dataset, say):
        staging = Path(tempfile.mkdtemp(prefix=f".{dataset}.", suffix=".tmp", dir=weights))
        try:
            _stage(result, folds, staging / dataset / result.name)
            check_loadable(model, staging / dataset)
            target = weights / dataset / result.name
            target.parent.mkdir(exist_ok=True)
            if target.exists():
                target.rename(staging / "replaced")
            (staging / dataset / result.name).rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    register_task(task, entry)
    say(f"Imported {dataset}/{result.name} into {weights}; run it with: TotalSegmentator -ta {task} -i IN -o OUT")
    return model

