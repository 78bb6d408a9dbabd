"""The API's options checked before any work: one-line refusals of what totalseg cannot honour or
what is malformed, and the values the run then uses."""
from __future__ import annotations

from pathlib import Path

from totalseg.device import check_device
from totalseg.errors import UserError
from totalseg.run.predictor import check_engine, chosen_engine

# Official options that totalseg refuses (one line, before any work), and why.
_REFUSED = {
    "save_probabilities": "--save_probabilities is not supported by totalseg: it copies nnU-Net's softmax "
                          "arrays (s01.npz/.pkl), which this engine never keeps; run without it (the labels are "
                          "in the output)",
    "higher_order_resampling": "--higher_order_resampling is not supported by totalseg (nnU-Net's own resampling "
                               "with cropped-logits export); run without it (nearest-neighbour upsampling, the "
                               "official default) or with --higher_order_resampling_LEGACY for smoother masks",
    "test": "--test is internal to the official test suite (it copies the suite's reference segmentation "
            "instead of predicting); run without it",
    "nora_tag": "--nora_tag calls a local NORA installation (/opt/nora/src/node/nora), which totalseg does not "
                "do; run without it",
    "statistics_normalized_intensities": "statistics_normalized_intensities is not supported by totalseg; run "
                                         "without it (statistics use the image's intensities)",
}


def output_types(output_type) -> list[str]:
    """``-ot``: the output types asked for (a name, a comma-separated list or a list; "dicom" is the RT
    structure set), each once."""
    types = [output_type] if isinstance(output_type, str) else list(output_type or ["nifti"])
    types = [t.strip() for item in types for t in item.split(",") if t.strip()]
    types = ["dicom_rtstruct" if t == "dicom" else t for t in types]
    for t in types:
        if t not in ("nifti", "dicom_rtstruct", "dicom_seg"):
            raise UserError(f"unknown output type '{t}'; use nifti, dicom_rtstruct or dicom_seg")
    return list(dict.fromkeys(types))


def check_output(output: Path | None, ml: bool) -> None:
    """``-o`` must be a .nii/.nii.gz file name with ``ml``, else a folder (or a path not there yet)."""
    if output is None:
        return
    if ml and not (output.name.endswith(".nii.gz") or output.name.endswith(".nii")):
        raise UserError(f"with --ml the output is one file: give -o a name ending in .nii.gz (got {output})")
    if ml and output.is_dir():
        raise UserError(f"with --ml the output is one file, but {output} is a folder")
    if not ml and output.exists() and not output.is_dir():
        raise UserError(f"the output {output} is a file; per-class masks need a folder (or use --ml)")


def check_extras(output: Path | None, ml: bool, skip_saving: bool, preview: bool, radiomics: bool) -> None:
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


def check_predictor(predictor, device: str | None, engine: str | None) -> None:
    """A device or engine asked for beside a predictor must be the predictor's own."""
    if engine is not None and engine != predictor.engine:
        raise UserError(f"engine '{engine}' asked for, but the predictor runs '{predictor.engine}'")
    if device is not None:
        wanted = {"cpu": "cpu", "mps": "mps"}.get(device, "cuda")
        if not predictor.device.startswith(wanted) and predictor.device != "meta":
            raise UserError(f"device '{device}' asked for, but the predictor runs on {predictor.device}")


def refuse_unsupported(task: str, **options) -> None:
    """One-line errors, before any work, for official options that totalseg cannot honour."""
    for name, value in options.items():
        if name in _REFUSED and value and not (name == "nora_tag" and value == "None"):
            raise UserError(_REFUSED[name])
    if options["model_size"] not in ("big", "small"):
        raise UserError("model_size must be 'big' or 'small'.")
    if options["model_size"] == "small" and task != "total_v3":
        raise UserError("model_size='small' is currently only supported for task 'total_v3'.")
    if options["plans"] != "nnUNetPlans":
        raise UserError(f"plans '{options['plans']}' is not supported by totalseg: every model runs with the plans "
                        "of its weights folder (nnUNetPlans); run without it")
    if int(options["nr_thr_saving"]) < 1:
        raise UserError(f"--nr_thr_saving must be at least 1 (got {options['nr_thr_saving']})")


def blob_size(remove_small_blobs):
    """``--remove_small_blobs``: None (off), 200 mm³ for True (the official default) or the size given."""
    if remove_small_blobs is None or remove_small_blobs is False or remove_small_blobs == 0:
        return None  # the official tool tests the value's truth: 0 means off
    if remove_small_blobs is True:
        return 200
    if isinstance(remove_small_blobs, str) or not remove_small_blobs > 0:
        raise UserError(f"--remove_small_blobs takes a size in mm3 greater than 0 (got {remove_small_blobs!r})")
    return remove_small_blobs


def check_save_lowres(plan, fast: bool, fastest: bool, types: list[str], ml: bool, no_derived_masks: bool,
                       radiomics: bool) -> None:
    """``--save_lowres``: the official tool's refusals, plus those whose outputs it cannot make."""
    if not (fast or fastest):
        raise UserError("save_lowres only works together with fast or fastest mode.")
    if types != ["nifti"]:
        raise UserError("save_lowres only supports nifti output.")
    if plan.crop is not None or plan.roi_subset or plan.refine is not None:
        raise UserError("save_lowres is not supported together with cropping, roi_subset, body_seg, or cascade.")
    if radiomics:
        raise UserError("--radiomics needs masks on the input grid; run it without --save_lowres")
    if plan.task.postprocess == "body" and not ml and not no_derived_masks:
        raise UserError("--save_lowres: the body task's derived masks (body, skin) need the input grid; "
                        "add -ndm (or use --ml)")


def v1_classes(v1_order: bool, task: str, types: list[str], ml: bool, output, say) -> dict[int, str] | None:
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


def say_inert_options(say, crop_path) -> None:
    """Official options accepted without effect here: said, never silently ignored."""
    if crop_path is not None:
        say("NOTE: -cp/--crop_path has no effect (a legacy option of the official tool; crops are computed in "
            "memory)")


def resample_threads(nr_thr_resamp: int | None) -> int:
    """Threads for resampling: ``nr_thr_resamp``, or every core this process may use (same values either way)."""
    from totalseg.run.predictor import default_threads

    if nr_thr_resamp is None:
        return default_threads()
    if int(nr_thr_resamp) < 1:
        raise UserError(f"--nr_thr_resamp must be 1 or more (got {nr_thr_resamp})")
    return int(nr_thr_resamp)


def check_run_options(roi_subset, device: str | None, engine: str | None, predictor, resampling_order,
                       stats_aggregation: str) -> str | None:
    """Refuse malformed options before any work; returns the engine (a predictor brings its own)."""
    if roi_subset is not None and not isinstance(roi_subset, (list, tuple)):
        raise UserError("roi_subset must be a list of class names")
    if device is not None:
        check_device(device)
    if predictor is None:
        engine = chosen_engine(engine)
    elif engine is not None:  # then it must also be the predictor's (check_predictor)
        check_engine(engine)
    if not 0 <= int(resampling_order) <= 5:
        raise UserError(f"--resampling_order must be 0..5 (got {resampling_order})")
    if stats_aggregation not in ("mean", "median"):
        raise UserError("--stats_aggregation must be mean or median")
    return engine
