"""The plan of a run: which models run, in which order, for what (crop, main, refinement).

One function, :func:`plan_run`, turns a task and the options into a :class:`RunPlan`. The up-front
weights check (what to install) and the run itself (``pipeline.segment``) both read the plan, so
what is installed is exactly what runs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence, Union

from totalseg.errors import UserError
from totalseg.registry import Model, Task, get_model, get_task

# Labels of remove_outside tasks must lie within this distance of the named organs.
REMOVE_OUTSIDE_MM = 10.0
# vertebrae_pp_refined clips its labels to this task's vertebral bodies (label 1).
REFINE_BODIES_TASK = "vertebrae_body"
# Rough-model crops get this margin whatever the task says (the official tool overrides it).
ROUGH_CROP_ADDON_MM = (20.0, 20.0, 20.0)

# Crop models: (task, mode) whose output the official tool crops to.
_CROP_CT, _CROP_CT_ROBUST, _CROP_MR, _CROP_BODY = ("total", "fastest"), ("total", "fast"), \
    ("total_mr", "fast"), ("body", "fast")


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


def plan_options(values) -> Options:
    """The plan's options from a run's checked options (:class:`totalseg.run.options.RunOptions`)."""
    roi = values.roi_subset
    return Options(fast=bool(values.fast), fastest=bool(values.fastest), roi_subset=tuple(roi) if roi else None,
                   robust_crop=bool(values.robust_crop), body_seg=bool(values.body_seg),
                   force_split=bool(values.force_split), resampling_order=int(values.resampling_order))


@dataclass(frozen=True)
class ModelStep:
    """The models of one task mode applied to an image; several part models are merged."""

    task: Task
    models: tuple[Model, ...]
    resample: tuple[float, float, float] | None
    split_z: bool  # in three chunks along z (-fs)
    image_order: int  # spline order of the image's resampling to the model's grid (-ro)

    @property
    def multi_model(self) -> bool:
        return len(self.models) > 1


@dataclass(frozen=True)
class Crop:
    """Where the image is cropped before the main step: the labels of ``source`` (a model step or
    the full run of another task), the voxels of ``classes`` (None: any label) plus ``addon`` mm."""

    source: Union[ModelStep, "RunPlan"]
    classes: tuple[str, ...] | None
    addon: tuple[float, float, float]
    keep: tuple[str, ...] | None = None  # remove_outside: labels must lie near these classes

    @property
    def source_task(self) -> Task:
        return self.source.task


@dataclass(frozen=True)
class RunPlan:
    task: Task
    main: ModelStep
    class_map: dict[int, str]  # the classes this run reports (-rs applied)
    only_classes: tuple[str, ...] | None = None  # -rs: the classes asked for
    crop: Crop | None = None
    refine: ModelStep | None = None  # vertebrae_pp_refined: the vertebral bodies, whole image

    def steps(self) -> list[ModelStep]:
        """Every model step, in the order the run takes them."""
        before = [] if self.crop is None else (
            self.crop.source.steps() if isinstance(self.crop.source, RunPlan) else [self.crop.source])
        return before + [self.main] + ([] if self.refine is None else [self.refine])

    def models(self) -> list[Model]:
        """Every model the run loads, in order, each once."""
        seen: dict[int, Model] = {}
        for step in self.steps():
            for m in step.models:
                seen.setdefault(m.id, m)
        return list(seen.values())


def _step(task: Task, mode_name: str | None, options: Options, models: Sequence[Model] | None = None,
          split_z: bool | None = None) -> ModelStep:
    mode = task.modes[mode_name] if mode_name else task.mode(options.fast, options.fastest)
    chosen = tuple(models) if models is not None else tuple(get_model(i) for i in mode.models)
    return ModelStep(task, chosen, mode.resample,
                     options.force_split if split_z is None else split_z, options.resampling_order)


def check_roi_subset(task: Task, roi_subset: Sequence[str]) -> None:
    if not task.name.startswith("total"):
        raise UserError("--roi_subset works only with the tasks total and total_mr")
    unknown = [c for c in roi_subset if c not in task.classes.values()]
    if unknown:
        raise UserError(f"unknown class in --roi_subset for task {task.name}: {', '.join(unknown)}; "
                        f"`TotalSegmentator --list-classes {task.name}` lists the classes")


def _robust_crop(task: Task, options: Options) -> bool:
    """Crop with the 3 mm model: asked for (-rc), set by the task (it wins over the flag, as in the
    official tool), or a roi_subset on MR."""
    return options.robust_crop or task.always_robust_crop or bool(options.roi_subset and task.modality == "mr")


def crop_source(task: Task, classes: Sequence[str], robust: bool) -> tuple[Task, str]:
    """The rough model (task, mode) whose labels a crop to ``classes`` is taken from."""
    if task.modality == "mr":
        name, mode = _CROP_MR
    elif any(c in ("body_trunc", "body_extremities") for c in classes):
        name, mode = _CROP_BODY
    else:
        name, mode = _CROP_CT_ROBUST if robust else _CROP_CT
    return get_task(name), mode


def _crop(task: Task, options: Options) -> Crop | None:
    roi = options.roi_subset
    classes = tuple(roi) if roi else task.crop
    if classes and task.crop_model is not None:  # the crop comes from a full run of another task (teeth)
        source = plan_run(get_task(task.crop_model),
                          replace(options, fast=False, fastest=False, roi_subset=None, body_seg=False))
        return Crop(source, classes, task.crop_addon, task.remove_outside)
    if classes:
        source, mode = crop_source(task, classes, _robust_crop(task, options))
        return Crop(_step(source, mode, options), classes, ROUGH_CROP_ADDON_MM, task.remove_outside)
    if options.body_seg and task.modality != "mr":
        return Crop(_step(get_task("body"), "fast", options), None, task.crop_addon)
    return None


def plan_run(task: Task | str, options: Options) -> RunPlan:
    """The steps of a run of ``task`` with ``options`` (one-line errors for impossible requests)."""
    task = get_task(task) if isinstance(task, str) else task
    main = _step(task, None, options)
    class_map = dict(task.classes)
    roi = options.roi_subset
    if roi:
        check_roi_subset(task, roi)
        class_map = {k: v for k, v in task.classes.items() if v in roi}
        if main.multi_model:  # only the parts that hold a requested class
            main = replace(main, models=tuple(m for m in main.models if set(m.classes.values()) & set(roi)))
    refine = None
    if task.postprocess == "vertebrae_pp_refined":
        # The official tool runs it on the whole image, never split, whatever -bs / -fs say.
        refine = _step(get_task(REFINE_BODIES_TASK), "default", options, split_z=False)
    return RunPlan(task, main, class_map, tuple(roi) if roi else None, _crop(task, options), refine)
