"""A run's setup: the checked options resolved into what the run reads and writes (:class:`RunSetup`).

:func:`prepare` reads only the input's headers (a DICOM series' modality may change the task), decides every
output path, plans the models and installs missing weights: everything that can be refused is refused here,
before any image is read. The later steps read the setup, not the options.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from totalseg import config
from totalseg.errors import UserError
from totalseg.install import ensure_installed, missing_models, source_from_environment
from totalseg.load.dicom import is_dicom_input, scan_dicom
from totalseg.notice import Notice
from totalseg.registry import Task, get_task
from totalseg.run.options import RunOptions, check_save_lowres, check_v1_order, output_types, report_fields
from totalseg.run.plan import RunPlan, plan_options, plan_run
from totalseg.weights import model_folder


@dataclass(frozen=True)
class Destination:
    """Where a run's label outputs go."""

    output: Path | None  # the multilabel file (``ml``) or the per-class folder; None: no label files
    ml: bool
    dicom_paths: dict[str, Path] | None  # with a DICOM output type: each type's path

    @property
    def folder(self) -> Path | None:
        """The folder of the outputs, where the preview and statistics.json go."""
        return None if self.output is None else (self.output.parent if self.ml else self.output)


@dataclass(frozen=True)
class StatisticsRequest:
    """statistics.json: where, and how it is computed."""

    path: Path | None  # None: returned only
    exclude_masks_at_border: bool
    aggregation: str
    extra: bool
    lowres: bool  # on the model's grid (as the official tool does with --fast)
    normalized: bool  # intensities min-max normalised over the image first


@dataclass(frozen=True)
class RunSetup:
    """Everything a run needs to know, resolved before any work."""

    input: Any  # a path or a nibabel image
    task: Task
    series: Any  # the DICOM series' headers; None for other inputs
    plan: RunPlan
    destination: Destination
    save_labels: bool  # False with skip_saving
    multilabel_classes: dict[int, str] | None  # the v1 order's classes (-v1o), else None
    keep_roi: tuple[str, ...] | None  # the classes asked for (-rs), for the v1 relabelling
    statistics: StatisticsRequest | None
    preview_png: Path | None
    radiomics_folder: Path | None
    report_path: Path | None
    output_given: Path | None  # -o as given
    report_output: Path | None  # the output the run report names (-o as given; a cohort: in the case folder)
    report_fields: dict[str, Any]  # the run report's option fields
    derived_masks: bool  # the body task's body/skin masks
    lowres_output: bool  # labels at the model's resolution (-sl)
    blobs_mm3: float | None
    one_hot: bool  # labels upsampled one-hot (LEGACY higher-order resampling)
    resample_threads: int
    save_threads: int
    probabilities: Path | None = None  # where nnU-Net's probabilities go (-sp; the .pkl beside it)
    cropped_logits: bool = False  # nnU-Net resamples the main step itself, cropped-logits export (-ho)


def prepare(input, output, values: RunOptions, say: Notice) -> RunSetup:
    """Check what needs the input's headers, resolve the outputs, plan the models and install their weights."""
    if values.higher_order_resampling:  # the official tool drops -sl with -ho
        values = values.replace(save_lowres=False)
    types = output_types(values.output_type)
    task, series = _input_task(input, values.task, values.series_uid, types, say)
    dest = _destination(output, values.ml, types, values.skip_saving, task.name, say)
    _check_extras(dest.output, dest.ml, values.skip_saving, values.preview, values.radiomics)
    v1 = _v1_classes(values.v1_order, task.name, types, dest.ml, None if values.skip_saving else dest.output, say)
    check_v1_order(values, v1 is not None)
    plan = plan_run(task, plan_options(values))
    if values.higher_order_resampling:  # nnU-Net resamples to the model's grid and back itself
        plan = replace(plan, main=replace(plan.main, resample=None))
    check_save_lowres(values, plan, types, dest.ml)
    if values.crop_path is not None:
        say("NOTE: -cp/--crop_path has no effect (a legacy option of the official tool; crops are computed in "
            "memory)")
    _install_weights(plan, task, values.license_number, values.quiet, say)
    return RunSetup(
        input=input, task=task, series=series, plan=plan, destination=dest, save_labels=not values.skip_saving,
        multilabel_classes=v1, keep_roi=plan.only_classes,
        statistics=_statistics_request(values, dest), preview_png=_in_folder(dest, values.preview,
                                                                              f"preview_{task.name}.png"),
        radiomics_folder=dest.output if values.radiomics else None,
        report_path=None if values.report is None else Path(values.report),
        output_given=None if output is None else Path(output), report_output=None if output is None else Path(output),
        report_fields=report_fields(values, types),
        derived_masks=task.postprocess == "body" and not values.no_derived_masks,
        lowres_output=bool(values.save_lowres), blobs_mm3=values.remove_small_blobs,
        one_hot=bool(values.higher_order_resampling_LEGACY), resample_threads=int(values.nr_thr_resamp),
        save_threads=int(values.nr_thr_saving), probabilities=_probabilities_path(values.save_probabilities, dest),
        cropped_logits=bool(values.higher_order_resampling))


def _probabilities_path(given, dest: Destination) -> Path | None:
    """``-sp``: the npz path as given; True (a cohort's flag, or the API's) puts probabilities.npz beside the
    outputs."""
    if given is None or given is False:
        return None
    if given is True:
        if dest.folder is None:
            raise UserError("save_probabilities=True writes probabilities.npz beside the outputs: give an output, "
                            "or a file path to save_probabilities")
        return dest.folder / "probabilities.npz"
    path = Path(given)
    if path.is_dir():
        raise UserError(f"--save_probabilities takes a file path (e.g. probs.npz; the .pkl goes beside it), "
                        f"but {path} is a folder")
    return path.absolute()


def _in_folder(dest: Destination, wanted: bool, name: str) -> Path | None:
    return dest.folder / name if wanted else None


def _statistics_request(values: RunOptions, dest: Destination) -> StatisticsRequest | None:
    """statistics.json beside the outputs, or at the path given as ``statistics``."""
    if not values.statistics:
        return None
    if isinstance(values.statistics, (str, Path)):
        path = Path(values.statistics)
    else:
        path = None if dest.folder is None else dest.folder / "statistics.json"
    return StatisticsRequest(path, values.statistics_exclude_masks_at_border, values.stats_aggregation,
                             bool(values.statistics_extra), bool(values.fast or values.save_lowres),
                             bool(values.statistics_normalized_intensities))


def masks_on_input_grid(values: RunOptions) -> bool:
    """Whether a run writes NIfTI masks on the input's grid (not with -ss, -sl or DICOM output)."""
    return not (values.skip_saving or values.save_lowres) and output_types(values.output_type) == ["nifti"]


def case_output(staging: Path, values: RunOptions) -> Path:
    """The ``-o`` a cohort's case gets so that it writes into ``staging``: the folder itself for per-class masks,
    ``segmentations.nii.gz`` with --ml, ``segmentations_seg.dcm`` / ``segmentations_rtstruct.dcm`` for a DICOM
    output (several types: the folder, names from ``segmentations``). statistics.json lands in the folder."""
    types = set(output_types(values.output_type))
    if types <= {"nifti"}:
        return staging / "segmentations.nii.gz" if values.ml else staging
    if len(types) == 1:
        return staging / ("segmentations_seg.dcm" if "dicom_seg" in types else "segmentations_rtstruct.dcm")
    return staging / "segmentations"


def dicom_output_paths(types: list[str], output: Path, task: str) -> dict[str, Path]:
    """Where each output type goes when a DICOM type is asked for, named as the official tool names them.

    One type: DICOM SEG goes to ``-o`` (a folder: ``<SeriesInstanceUID>.dcm`` inside it), the RT structure set
    to ``-o`` with ``.dcm`` added unless it ends so. Several: into ``-o`` if it is a folder, else beside it, as
    ``<base>.nii.gz``, ``<base>_rtstruct.dcm`` and ``<base>_seg.dcm``, where base is the name of ``-o`` up to its
    first dot (``<task>_segmentation`` for a folder).
    """
    if len(types) == 1:
        if types[0] == "dicom_rtstruct" and not output.name.endswith(".dcm"):
            return {"dicom_rtstruct": output.with_name(output.name + ".dcm")}
        return {types[0]: output}
    folder = output if output.is_dir() else output.parent
    base = f"{task}_segmentation" if output.is_dir() else (output.name.split(".")[0] or f"{task}_segmentation")
    names = {"nifti": f"{base}.nii.gz", "dicom_rtstruct": f"{base}_rtstruct.dcm", "dicom_seg": f"{base}_seg.dcm"}
    return {t: folder / names[t] for t in types}


def _multilabel_file(output: Path, say: Notice) -> Path:
    """With --ml, an ``-o`` without any suffix gets ``.nii``, as the official tool's writer (nibabel) adds it."""
    if "." in output.name or output.is_dir():
        return output
    named = output.with_name(output.name + ".nii")
    say(f"NOTE: with --ml the output is one NIfTI file: writing {named} (as the official tool does)")
    return named


def _destination(output, ml: bool, types: list[str], skip_saving: bool, task: str, say: Notice) -> Destination:
    output = None if output is None else Path(output)
    if output is not None and ml and types == ["nifti"] and not skip_saving:
        output = _multilabel_file(output, say)
    dicom_paths = None
    if output is not None and types != ["nifti"]:
        dicom_paths = dicom_output_paths(types, output, task)
        ml = True  # DICOM outputs are multilabel; -o now names files
        output = dicom_paths.get("nifti", next(iter(dicom_paths.values())))
    _check_output(None if skip_saving or (dicom_paths and "nifti" not in dicom_paths) else output, ml)
    return Destination(output, ml, dicom_paths)


def _check_output(output: Path | None, ml: bool) -> None:
    """``-o`` must be a .nii/.nii.gz file name with ``ml``, else a folder (or a path not there yet)."""
    if output is None:
        return
    if ml and not (output.name.endswith(".nii.gz") or output.name.endswith(".nii")):
        raise UserError(f"with --ml the output is one file: give -o a name ending in .nii.gz (got {output})")
    if ml and output.is_dir():
        raise UserError(f"with --ml the output is one file, but {output} is a folder")
    if not ml and output.exists() and not output.is_dir():
        raise UserError(f"the output {output} is a file; per-class masks need a folder (or use --ml)")


def _check_extras(output: Path | None, ml: bool, skip_saving: bool, preview: bool, radiomics: bool) -> None:
    """Fail before any work when --preview / --radiomics cannot be honoured."""
    if preview:
        if output is None:
            raise UserError("--preview writes preview_<task>.png into the output folder: give an output")
        from totalseg.write.preview import _vtk

        _vtk()
    if radiomics:
        if output is None or ml or skip_saving:
            raise UserError("--radiomics works on the per-class mask files: give an output folder, "
                            "without --ml and --skip_saving")
        from totalseg.write.radiomics import _radiomics

        _radiomics()


def _v1_classes(v1_order: bool, task: str, types: list[str], ml: bool, output, say: Notice) -> dict[int, str] | None:
    """``--v1_order``: the v1 (104-class) map when it applies (task total only, as in the official tool)."""
    if not v1_order:
        return None
    if task != "total":
        say(f"NOTE: --v1_order applies to task total only; the {task} output keeps its own order")
        return None
    if types != ["nifti"]:
        raise UserError("--v1_order cannot be combined with DICOM output (the official tool writes v1 labels "
                        "under v2 class names there); use -ot nifti")
    if output is not None and not ml:
        say("NOTE: --v1_order reorders the multilabel output (--ml and the returned image); per-class files "
            "are written as usual")
    from totalseg.registry import class_map

    return class_map("total_v1")


def _task_for_modality(task: str, modality: str, say: Notice) -> str:
    """The official switch for DICOM input: CT with total_mr runs total, MR with total runs total_mr."""
    new = {("CT", "total_mr"): "total", ("MR", "total"): "total_mr"}.get((modality, task), task)
    if new != task:
        say(f"WARNING: the DICOM series is {modality}; running task {new} instead of {task}")
    return new


def _input_task(input, task: str, series_uid: str | None, types: list[str], say: Notice):
    """``(task, series)``: the task to run, which a DICOM series' modality may change, and the series' headers
    (None for other inputs), read before any weights are checked."""
    if isinstance(input, (str, Path)) and is_dicom_input(input):
        series = scan_dicom(input, series_uid, warn=lambda m: say(f"WARNING: {m}"))
        return get_task(_task_for_modality(task, series.modality, say)), series
    if series_uid:
        raise UserError("--series_uid selects a series of a DICOM input; the input is not DICOM")
    if types != ["nifti"]:
        raise UserError("DICOM output (-ot dicom_seg/dicom_rtstruct) needs a DICOM input (a folder, zip or "
                        "DICOM file); use -ot nifti for a NIfTI input")
    return get_task(task), None


def _install_weights(plan: RunPlan, task: Task, license_number: str | None, quiet: bool, say: Notice) -> None:
    """The licence for a licensed task, then every planned model installed and present: fails before any work."""
    if license_number:
        config.check_license_format(license_number)
        config.update_config({"license_number": license_number})
    if task.licensed:
        config.require_license(task.name)
    models = plan.models()
    if missing_models(models):  # installed first (verified, atomic); without network this fails here
        ensure_installed(models, source_from_environment(), quiet=quiet, say=say)
    for model in models:
        model_folder(model)
