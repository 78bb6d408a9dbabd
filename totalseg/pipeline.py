"""The segmentation pipeline: load → prepare → predict → assemble, as small composable steps.

``segment`` is what the command line and the Python API call; each step below it is a plain
function over :class:`~totalseg.volume.Volume` values.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from totalseg import weights
from totalseg.assemble import crop as cropping
from totalseg.assemble import postprocess, split
from totalseg.assemble.merge import label_lut, paste_part
from totalseg.errors import UserError
from totalseg.prepare import resample
from totalseg.prepare.orient import from_canonical, to_canonical
from totalseg.registry import Model, Task, get_model, get_task
from totalseg.volume import Volume


@dataclass(frozen=True)
class Options:
    """How to run a task (the official flags that change the masks)."""

    fast: bool = False
    fastest: bool = False
    roi_subset: tuple[str, ...] | None = None
    robust_crop: bool = False
    body_seg: bool = False
    force_split: bool = False
    resampling_order: int = 1
    device: str = "cpu"


@dataclass
class Prediction:
    """Labels on the input grid, plus the model-resolution labels and image (for fast statistics)."""

    labels: np.ndarray
    lowres_labels: Volume | None = None
    lowres_image: Volume | None = None


@dataclass
class Result:
    labels: np.ndarray  # uint8, input grid
    class_map: dict[int, str]  # the classes this run reports (roi_subset applied)
    lowres: Prediction | None = field(default=None)


Progress = Callable[[str], None]

# Labels of remove_outside tasks must lie within this distance of the named organs.
REMOVE_OUTSIDE_MM = 10.0
# vertebrae_pp_refined clips its labels to this task's vertebral bodies (label 1).
REFINE_BODIES_TASK = "vertebrae_body"


def _quiet(_: str) -> None:
    pass


def run_models(vol: Volume, task: Task, models: Sequence[Model], multi_model: bool, step: float,
               force_split: bool, device: str, progress: Progress = _quiet) -> np.ndarray:
    """Labels (task ids) of canonical ``vol`` from ``models``; parts merged, large images split."""
    from totalseg.predict import nnunet

    data = vol.data
    spacing = vol.zooms
    ranges = (split.chunks(data.shape[2]) if split.needs_split(data.shape, multi_model, force_split)
              else [slice(0, data.shape[2])])
    pieces = []
    for z in ranges:
        chunk = data[:, :, z]
        combined = np.zeros(chunk.shape, dtype=np.uint8)
        for model in models:
            progress(f"  running {model.folder}")
            loaded = weights.load(model, task.folds, device)
            part = nnunet.segment(chunk, spacing, loaded, step)
            if multi_model:
                paste_part(combined, part, label_lut(model.classes, task.classes))
            else:
                combined = part.astype(np.uint8, copy=False)
        pieces.append(combined)
    labels = pieces[0] if len(pieces) == 1 else split.join(pieces, data.shape[2])
    if task.auxiliary:
        labels[np.isin(labels, list(task.auxiliary))] = 0
    postprocess.apply(task.postprocess, labels, task.classes, spacing)
    return labels


def predict(image: Volume, task: Task, models: Sequence[Model], spacing, options: Options,
            multi_model: bool, progress: Progress = _quiet) -> Prediction:
    """Run ``models`` on ``image`` (any orientation) and return labels on its own grid."""
    canon = to_canonical(image)
    small = canon if spacing is None else resample.to_spacing(canon, spacing, options.resampling_order)
    labels = run_models(small, task, models, multi_model, task.step, options.force_split, options.device,
                        progress)
    low = Volume(labels, small.affine)
    back = low if spacing is None else resample.to_shape(low, canon.shape, canon.affine, order=0)
    out = from_canonical(back, image.affine).data
    return Prediction(np.ascontiguousarray(out), low, small)


# Crop models: (task, mode) whose output the official tool crops to.
_CROP_CT, _CROP_CT_ROBUST, _CROP_MR, _CROP_BODY = ("total", "fastest"), ("total", "fast"), \
    ("total_mr", "fast"), ("body", "fast")


def _robust_crop(task: Task, options: Options) -> bool:
    """Crop with the 3 mm model: asked for (-rc), set by the task (it wins over the flag, as in the
    official tool), or a roi_subset on MR."""
    return options.robust_crop or task.robust_crop or bool(options.roi_subset and task.modality == "mr")


def _crop_source(task: Task, classes: Sequence[str], robust: bool) -> tuple[Task, str]:
    if task.modality == "mr":
        name, mode = _CROP_MR
    elif any(c in ("body_trunc", "body_extremities") for c in classes):
        name, mode = _CROP_BODY
    else:
        name, mode = _CROP_CT_ROBUST if robust else _CROP_CT
    return get_task(name), mode


def _crop_labels(image: Volume, source: Task, mode_name: str, options: Options,
                 progress: Progress) -> np.ndarray:
    """Labels of the low-resolution model a crop is taken from, on the image's grid."""
    mode = source.modes[mode_name]
    models = [get_model(i) for i in mode.models]
    return predict(image, source, models, mode.resample, options, len(models) > 1, progress).labels


def _class_mask(labels: np.ndarray, source: Task, classes: Sequence[str] | None) -> np.ndarray:
    if classes is None:
        return labels > 0
    ids = [source.class_id(c) for c in classes if c in source.classes.values()]
    return np.isin(labels, ids)


def check_roi_subset(task: Task, roi_subset: Sequence[str]) -> None:
    unknown = [c for c in roi_subset if c not in task.classes.values()]
    if unknown:
        raise UserError(f"unknown class in --roi_subset for task {task.name}: {', '.join(unknown)}; "
                        f"`TotalSegmentator --list-classes {task.name}` lists the classes")


def required_models(task: Task, options: Options) -> list[Model]:
    """Every model a run of ``task`` with ``options`` will load (crop models included)."""
    mode = task.mode(options.fast, options.fastest)
    models = [get_model(i) for i in mode.models]
    roi = options.roi_subset
    if roi:
        check_roi_subset(task, roi)
        if len(models) > 1:
            models = [m for m in models if set(m.classes.values()) & set(roi)]
    crop_classes = list(roi) if roi else (list(task.crop) if task.crop else None)
    if crop_classes and task.crop_model is not None:
        models += required_models(get_task(task.crop_model), Options())
    elif crop_classes:
        source, mode_name = _crop_source(task, crop_classes, _robust_crop(task, options))
        models += [get_model(i) for i in source.modes[mode_name].models]
    elif options.body_seg and task.modality != "mr":
        models += [get_model(i) for i in get_task("body").modes["fast"].models]
    if task.postprocess == "vertebrae_pp_refined":
        models += [get_model(i) for i in get_task(REFINE_BODIES_TASK).modes["default"].models]
    return models


def _refine_vertebrae(image: Volume, labels: np.ndarray, task: Task, options: Options,
                      progress: Progress) -> np.ndarray:
    """vertebrae_pp_refined: clip ``labels`` (image grid) to vertebrae_body run on the whole image."""
    progress("  refining with the vertebral bodies")
    source = get_task(REFINE_BODIES_TASK)
    mode = source.modes["default"]
    # The official tool runs it uncropped and never split, whatever -bs / -fs say.
    bodies = predict(image, source, [get_model(i) for i in mode.models], mode.resample,
                     replace(options, force_split=False), False, progress).labels
    return postprocess.refine_vertebrae(labels, bodies, task.classes, image.zooms)


def segment(image: Volume, task: Task, options: Options, progress: Progress = _quiet) -> Result:
    """Segment ``image`` with ``task``; labels come back on the image's own grid."""
    mode = task.mode(options.fast, options.fastest)
    models = [get_model(i) for i in mode.models]
    multi_model = len(models) > 1
    class_map = dict(task.classes)
    roi = options.roi_subset
    if roi:
        if not task.name.startswith("total"):
            raise UserError("--roi_subset works only with the tasks total and total_mr")
        check_roi_subset(task, roi)
        class_map = {k: v for k, v in task.classes.items() if v in roi}
        if multi_model:
            models = [m for m in models if set(m.classes.values()) & set(roi)]

    box, keep_mask = None, None
    crop_classes = list(roi) if roi else (list(task.crop) if task.crop else None)
    if crop_classes:
        progress("  finding the region to crop to")
        if task.crop_model is not None:  # the crop comes from a full run of another task (teeth)
            source = get_task(task.crop_model)
            organs = segment(image, source, replace(options, fast=False, fastest=False, roi_subset=None,
                                                    body_seg=False), progress).labels
            addon = task.crop_addon
        else:
            source, mode_name = _crop_source(task, crop_classes, _robust_crop(task, options))
            organs = _crop_labels(image, source, mode_name, options, progress)
            addon = (20.0, 20.0, 20.0)
        box = cropping.mask_box(_class_mask(organs, source, crop_classes), image.zooms, addon)
        if box is None:
            return Result(np.zeros(image.shape, dtype=np.uint8), class_map)
        if task.remove_outside:
            keep_mask = _class_mask(organs, source, task.remove_outside)
        del organs
    elif options.body_seg and task.modality != "mr":
        progress("  finding the body to crop to")
        body = get_task("body")
        mask = _crop_labels(image, body, "fast", options, progress) > 0
        box = cropping.mask_box(mask, image.zooms, task.crop_addon)
        if box is None:
            return Result(np.zeros(image.shape, dtype=np.uint8), class_map)

    work = image if box is None else cropping.crop(image, box)
    pred = predict(work, task, models, mode.resample, options, multi_model, progress)
    labels = pred.labels if box is None else cropping.uncrop(pred.labels, box, image.shape)
    if task.postprocess == "vertebrae_pp_refined":
        labels = _refine_vertebrae(image, labels, task, options, progress)
    if roi:
        labels[~np.isin(labels, list(class_map))] = 0
    if keep_mask is not None:
        postprocess.remove_outside(labels, keep_mask, REMOVE_OUTSIDE_MM / float(np.mean(image.zooms)))
    return Result(labels.astype(np.uint8, copy=False), class_map, pred if box is None else None)
