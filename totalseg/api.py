"""The Python API, with the official function's name and options."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from totalseg import config
from totalseg.assemble.postprocess import body_masks
from totalseg.device import select_device
from totalseg.errors import UserError
from totalseg.load.nifti import load_nifti
from totalseg.pipeline import Options, required_models, segment
from totalseg.registry import get_task
from totalseg.weights import model_folder
from totalseg.write.labelmap import with_label_table
from totalseg.write.nifti import label_image, save_multilabel, save_per_class
from totalseg.write.statistics import compute_statistics, write_statistics

_NOT_YET = {"preview": "--preview", "radiomics": "--radiomics", "v1_order": "--v1_order",
            "remove_small_blobs": "--remove_small_blobs", "save_probabilities": "--save_probabilities",
            "higher_order_resampling": "--higher_order_resampling", "save_lowres": "--save_lowres",
            "higher_order_resampling_LEGACY": "--higher_order_resampling_LEGACY"}


def _say(quiet: bool):
    def say(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)
    return say


def _output_types(output_type) -> list[str]:
    types = [output_type] if isinstance(output_type, str) else list(output_type or ["nifti"])
    types = [t.strip() for item in types for t in item.split(",") if t.strip()]
    types = ["dicom_rtstruct" if t == "dicom" else t for t in types]
    for t in types:
        if t not in ("nifti", "dicom_rtstruct", "dicom_seg"):
            raise UserError(f"unknown output type '{t}'; use nifti, dicom_rtstruct or dicom_seg")
    if any(t != "nifti" for t in types):
        raise UserError("DICOM output needs DICOM input, which this version does not read yet; use -ot nifti")
    return types


def _check_output(output: Path | None, ml: bool) -> None:
    if output is None:
        return
    if ml and not (output.name.endswith(".nii.gz") or output.name.endswith(".nii")):
        raise UserError(f"with --ml the output is one file: give -o a name ending in .nii.gz (got {output})")
    if ml and output.is_dir():
        raise UserError(f"with --ml the output is one file, but {output} is a folder")
    if not ml and output.exists() and not output.is_dir():
        raise UserError(f"the output {output} is a file; per-class masks need a folder (or use --ml)")


def totalsegmentator(input, output=None, ml: bool = False, nr_thr_resamp: int = 1, nr_thr_saving: int = 6,
                     fast: bool = False, nora_tag: str = "None", preview: bool = False, task: str = "total",
                     roi_subset: Sequence[str] | None = None, statistics=False, radiomics: bool = False,
                     crop_path=None, body_seg: bool = False, force_split: bool = False,
                     output_type="nifti", quiet: bool = False, verbose: bool = False, test: int = 0,
                     skip_saving: bool = False, device: str = "gpu", license_number: str | None = None,
                     statistics_exclude_masks_at_border: bool = True, no_derived_masks: bool = False,
                     v1_order: bool = False, fastest: bool = False, roi_subset_robust=None,
                     stats_aggregation: str = "mean", remove_small_blobs=False,
                     statistics_normalized_intensities: bool = False, robust_crop: bool = False,
                     higher_order_resampling_LEGACY: bool = False, higher_order_resampling: bool = False,
                     save_probabilities=None, debug: bool = False, report=None,
                     statistics_extra: bool = False, save_lowres: bool = False, resampling_order: int = 1,
                     plans: str = "nnUNetPlans", model_size: str = "big"):
    """Segment ``input`` (a NIfTI path or a nibabel image) with ``task``.

    Writes per-class masks into the folder ``output`` (or one multilabel file with ``ml``) and returns
    the label image (uint8, input geometry, label table attached); with ``statistics`` it returns
    ``(image, statistics)``.
    """
    say = _say(quiet)
    requested = {"preview": preview, "radiomics": radiomics, "v1_order": v1_order,
                 "remove_small_blobs": remove_small_blobs, "save_probabilities": save_probabilities,
                 "higher_order_resampling": higher_order_resampling, "save_lowres": save_lowres,
                 "higher_order_resampling_LEGACY": higher_order_resampling_LEGACY}
    for key, value in requested.items():
        if value:
            raise UserError(f"{_NOT_YET[key]} is not supported yet by totalseg; run without it")
    if roi_subset is not None and not isinstance(roi_subset, (list, tuple)):
        raise UserError("roi_subset must be a list of class names")
    if roi_subset_robust:
        roi_subset, robust_crop = roi_subset_robust, True
    if not 0 <= int(resampling_order) <= 5:
        raise UserError(f"--resampling_order must be 0..5 (got {resampling_order})")
    if stats_aggregation not in ("mean", "median"):
        raise UserError("--stats_aggregation must be mean or median")
    _output_types(output_type)
    task_info = get_task(task)
    output = None if output is None else Path(output)
    _check_output(None if skip_saving else output, ml)
    if license_number:
        config.check_license_format(license_number)
        config.update_config({"license_number": license_number})
    if task_info.licensed:
        config.require_license(task)
    options = Options(fast=fast, fastest=fastest, roi_subset=tuple(roi_subset) if roi_subset else None,
                      robust_crop=robust_crop, body_seg=body_seg, force_split=force_split,
                      resampling_order=int(resampling_order))
    for model in required_models(task_info, options):  # fail before any work if weights are missing
        model_folder(model)
    image = load_nifti(input, warn=lambda m: say(f"WARNING: {m}"))
    options = replace(options, device=select_device(device, say))

    say(f"Predicting {task}{' (fast)' if fast else ''}{' (fastest)' if fastest else ''}...")
    result = segment(image.volume, task_info, options, progress=say)

    stats = None
    if statistics:
        if (fast or fastest) and result.lowres is not None:
            lab, img = result.lowres.lowres_labels, result.lowres.lowres_image
            stats = compute_statistics(lab.data, img.data, img.zooms, result.class_map,
                                       statistics_exclude_masks_at_border, stats_aggregation, statistics_extra)
        else:
            stats = compute_statistics(result.labels, image.volume.data, image.header.get_zooms()[:3],
                                       result.class_map, statistics_exclude_masks_at_border,
                                       stats_aggregation, statistics_extra)

    affine, header = image.volume.affine, image.header
    if output is not None and not skip_saving:
        if ml:
            save_multilabel(result.labels, affine, header, result.class_map, output)
        else:
            extra = None
            if task_info.postprocess == "body" and not no_derived_masks:
                extra = body_masks(result.labels, task_info.classes, image.volume.data)
            save_per_class(result.labels, affine, header, result.class_map, output, extra)
    if stats is not None:
        if isinstance(statistics, (str, Path)) and not isinstance(statistics, bool):
            stats_path = Path(statistics)
        elif output is not None:
            stats_path = (output.parent if ml else output) / "statistics.json"
        else:
            stats_path = None
        if stats_path is not None:
            stats_path.parent.mkdir(parents=True, exist_ok=True)
            write_statistics(stats, stats_path)
    out_img = with_label_table(label_image(result.labels, affine, header), dict(result.class_map))
    return (out_img, stats) if statistics else out_img
