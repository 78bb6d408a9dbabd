"""Retraining and fine-tuning: dataset conversion, nnU-Net v2 training, import into the weights home.

``dataset``    TotalSegmentator layout -> nnU-Net raw dataset with the paper's split
``train``      plan, preprocess and train through the ``nnunetv2`` package (optional extra ``train``)
``importing``  a result folder -> the weights home, plus a custom task in ``<home>/custom_tasks.json``
"""
from __future__ import annotations

from pathlib import Path

from totalseg.train.dataset import convert_dataset, read_meta, resolve_classes
from totalseg.train.importing import import_result
from totalseg.train.train import plan_and_preprocess, train

__all__ = ["convert_dataset", "import_result", "plan_and_preprocess", "pretrained_from", "read_meta",
           "resolve_classes", "train"]


def pretrained_from(spec: str | Path, configuration: str = "3d_fullres") -> tuple[Path, Path]:
    """(plans.json, checkpoint) to fine-tune from: a result folder, or an installed single-model task."""
    from totalseg.errors import UserError
    from totalseg.registry import get_model, get_task
    from totalseg.train.importing import find_result
    from totalseg.weights import model_folder

    if Path(spec).is_dir():
        folder = find_result(Path(spec))
    else:
        models = get_task(str(spec)).modes["default"].models
        if len(models) != 1:
            raise UserError(f"task {spec} runs {len(models)} models; fine-tune from one of their result folders")
        folder = model_folder(get_model(models[0]))
        if not folder.name.endswith(f"__{configuration}"):
            raise UserError(f"{folder.name} is not a {configuration} model; pass -c {folder.name.split('__')[-1]}")
    checkpoints = sorted(folder.glob("fold_*/checkpoint_final.pth"))
    if not checkpoints:
        raise UserError(f"{folder} has no fold_*/checkpoint_final.pth to start from")
    return folder / "plans.json", checkpoints[0]
