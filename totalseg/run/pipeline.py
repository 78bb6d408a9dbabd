"""The segmentation pipeline: prepare → predict → assemble, following a :class:`~totalseg.run.plan.RunPlan`.

``segment`` carries out a plan on one image; every model is run through a ``Labeller`` (the
predictor, which owns the device, the engine and the loaded models). Each step is a plain function
over :class:`~totalseg.volume.Volume` values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from totalseg.assemble import crop as cropping
from totalseg.assemble import postprocess, split
from totalseg.assemble.merge import label_lut, paste_part
from totalseg.notice import timed
from totalseg.predict.cropped_export import labeller_cropped_labels
from totalseg.run.plan import REMOVE_OUTSIDE_MM, ModelStep, RunPlan
from totalseg.prepare import resample
from totalseg.prepare.orient import from_canonical, to_canonical
from totalseg.registry import Model, Task
from totalseg.volume import Volume


@dataclass
class Prediction:
    """Labels on the input grid, plus the model-resolution labels and image (for fast statistics)."""

    labels: np.ndarray
    lowres_labels: Volume | None = None
    lowres_image: Volume | None = None


@dataclass
class Result:
    labels: np.ndarray  # uint8, input grid
    class_map: dict[int, str]  # the classes this run reports (-rs applied)
    lowres: Prediction | None = field(default=None)
    probabilities: Any = None  # nnU-Net's probabilities of the main step's last model (predict.probabilities)


Progress = Callable[[str], None]


class Labeller(Protocol):
    """What the pipeline needs of a predictor: labels of one model on one canonical image."""

    def model_labels(self, model: Model, folds: tuple[int, ...] | None, data: np.ndarray, spacing,
                     step: float, progress: Progress) -> np.ndarray: ...


def _quiet(_: str) -> None:
    pass


def run_models(vol: Volume, step: ModelStep, labeller: Labeller, progress: Progress = _quiet,
               blobs_mm3: float | None = None, probabilities: list | None = None,
               cropped_logits: bool = False) -> np.ndarray:
    """Labels (task ids) of canonical ``vol`` from the models of ``step``; parts merged, large images split.

    ``blobs_mm3`` (``-rmb``): after the task's postprocessing, components of at most
    this many mm³ go, for every class of the task. ``probabilities``: a list that gets the nnU-Net
    probabilities of the last model on the first chunk (the file the official tool copies: each part
    overwrites it, and a split image's first third is its ``s01``). ``cropped_logits`` (``-ho``): where nnU-Net
    resamples to the model's grid itself, labels come from its cropped-logits export."""
    task, data = step.task, vol.data
    ranges = (split.chunks(data.shape[2]) if split.needs_split(data.shape, step.multi_model, step.split_z)
              else [slice(0, data.shape[2])])
    pieces = []
    for z in ranges:
        chunk = data[:, :, z]
        combined = np.zeros(chunk.shape, dtype=np.uint8)
        for model in step.models:
            if probabilities is not None and model is step.models[-1] and z is ranges[0]:
                part = _labels_keeping_probabilities(labeller, model, task, chunk, vol.affine, probabilities,
                                                     progress)
            elif cropped_logits:
                part = labeller_cropped_labels(labeller, model, task.folds, chunk, vol.zooms, task.step, progress)
            else:
                part = labeller.model_labels(model, task.folds, chunk, vol.zooms, task.step, progress)
            if step.multi_model:
                paste_part(combined, part, label_lut(model.classes, task.classes))
            else:
                combined = part.astype(np.uint8, copy=False)
        pieces.append(combined)
    labels = pieces[0] if len(pieces) == 1 else split.join(pieces, data.shape[2])
    if task.auxiliary:
        labels[np.isin(labels, list(task.auxiliary))] = 0
    postprocess.apply(task.postprocess, labels, task.classes, vol.zooms)
    if blobs_mm3:
        progress("  removing small blobs")
        postprocess.remove_small_components(labels, task.classes, vol.zooms, blobs_mm3)
    return labels


def _labels_keeping_probabilities(labeller: Labeller, model: Model, task: Task, chunk: np.ndarray, affine,
                                  kept: list, progress: Progress) -> np.ndarray:
    """The model's labels, from the same pass that gives its probabilities (appended to ``kept``)."""
    from totalseg.predict.probabilities import labeller_probabilities

    with timed(progress, f"predicted {model.folder} with probabilities"):
        labels, probs = labeller_probabilities(labeller, model, task.folds, chunk, affine, task.step)
    kept.append(probs)
    return labels


def predict(image: Volume, step: ModelStep, labeller: Labeller, progress: Progress = _quiet,
            blobs_mm3: float | None = None, one_hot: Sequence[int] | None = None,
            resample_threads: int = 1, probabilities: list | None = None,
            cropped_logits: bool = False) -> Prediction:
    """Run ``step`` on ``image`` (any orientation) and return labels on its own grid.

    ``one_hot`` (the LEGACY higher-order resampling): upsample these labels one-hot with order 1 (other
    labels are dropped first) instead of nearest-neighbour. ``resample_threads``: threads for the
    resampling to the model's grid and back (same values with any number)."""
    canon = to_canonical(image)
    spacing = step.resample
    if spacing is None:
        small = canon
    else:
        with timed(progress, f"resampled to {_mm(spacing)} mm"):
            small = resample.to_spacing(canon, spacing, step.image_order, threads=resample_threads)
    labels = run_models(small, step, labeller, progress, blobs_mm3, probabilities, cropped_logits)
    low = Volume(labels, small.affine)
    if spacing is None:
        back = low
    else:
        with timed(progress, "resampled back to the input grid"):
            if one_hot is not None:
                kept = np.where(np.isin(labels, list(one_hot)), labels, 0).astype(np.uint8)
                back = Volume(postprocess.upsample_one_hot(kept, canon.shape), canon.affine)
            else:
                back = resample.to_shape(low, canon.shape, canon.affine, order=0, threads=resample_threads)
    out = from_canonical(back, image.affine).data
    return Prediction(np.ascontiguousarray(out), low, small)


def _mm(spacing) -> str:
    values = sorted({float(v) for v in spacing})
    return "/".join(f"{v:g}" for v in values)


def class_mask(labels: np.ndarray, source: Task, classes: Sequence[str] | None) -> np.ndarray:
    """Voxels of ``labels`` (ids of ``source``) that belong to ``classes`` (None: any label)."""
    if classes is None:
        return labels > 0
    ids = [source.class_id(c) for c in classes if c in source.classes.values()]
    return np.isin(labels, ids)


def _crop_box(image: Volume, plan: RunPlan, labeller: Labeller, progress: Progress, header_zooms,
              resample_threads: int):
    """The crop box of ``plan`` on ``image`` (None: nothing to crop to) and the remove_outside mask."""
    crop = plan.crop
    progress("  finding the region to crop to")
    if isinstance(crop.source, RunPlan):
        organs = segment(image, crop.source, labeller, progress, header_zooms=header_zooms,
                         resample_threads=resample_threads).labels
    else:
        organs = predict(image, crop.source, labeller, progress, resample_threads=resample_threads).labels
    box = cropping.mask_box(class_mask(organs, crop.source_task, crop.classes), image.zooms, crop.addon)
    keep = None if crop.keep is None or box is None else class_mask(organs, crop.source_task, crop.keep)
    return box, keep


def _usable_zooms(header_zooms, zooms: np.ndarray) -> np.ndarray:
    """The header's pixdim, or the column lengths where those are missing, zero or negative (the official
    tool would divide by them and fail)."""
    if header_zooms is None:
        return zooms
    given = np.asarray(header_zooms)
    return given if given.shape == (3,) and np.all(np.isfinite(given)) and np.all(given > 0) else zooms


def segment(image: Volume, plan: RunPlan, labeller: Labeller, progress: Progress = _quiet,
            blobs_mm3: float | None = None, one_hot: bool = False, header_zooms=None,
            resample_threads: int = 1, probabilities: bool = False, cropped_logits: bool = False) -> Result:
    """Carry out ``plan`` on ``image``; labels come back on the image's own grid.

    ``blobs_mm3`` (``-rmb``) and ``one_hot`` (the LEGACY higher-order resampling: the
    reported classes upsampled one-hot, order 1) apply to the main step only, as in the official tool.
    ``header_zooms``: the input header's pixdim (default: ``image.zooms``); the official tool sizes the
    vertebrae refinement and remove_outside on the input grid with them, everything else with the affine's
    column lengths -- the two differ when a header's pixdim disagree with its sform (e.g. a sheared one).
    ``resample_threads``: threads for resampling (the labels do not depend on it).
    ``probabilities``: keep nnU-Net's probabilities of the main step (``Result.probabilities``).
    ``cropped_logits``: the main step's and the refinement's models export with cropped-logits resampling
    where nnU-Net resamples itself (as the official tool passes it to those two)."""
    header_zooms = _usable_zooms(header_zooms, image.zooms)
    box, keep_mask = None, None
    if plan.crop is not None:
        box, keep_mask = _crop_box(image, plan, labeller, progress, header_zooms, resample_threads)
        if box is None:
            return Result(np.zeros(image.shape, dtype=np.uint8), plan.class_map)
    work = image if box is None else cropping.crop(image, box)
    kept: list | None = [] if probabilities else None
    pred = predict(work, plan.main, labeller, progress, blobs_mm3, list(plan.class_map) if one_hot else None,
                   resample_threads, kept, cropped_logits and not probabilities)  # nnU-Net's full export with -sp
    labels = pred.labels if box is None else cropping.uncrop(pred.labels, box, image.shape)
    if plan.refine is not None:
        progress("  refining with the vertebral bodies")
        bodies = predict(image, plan.refine, labeller, progress, resample_threads=resample_threads,
                         cropped_logits=cropped_logits).labels
        labels = postprocess.refine_vertebrae(labels, bodies, plan.task.classes, header_zooms)
    if plan.only_classes:
        labels[~np.isin(labels, list(plan.class_map))] = 0
    if keep_mask is not None:
        postprocess.remove_outside(labels, keep_mask, REMOVE_OUTSIDE_MM / float(np.mean(header_zooms)))
    return Result(labels.astype(np.uint8, copy=False), plan.class_map, pred if box is None else None,
                  kept[-1] if kept else None)
