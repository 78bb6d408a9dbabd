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
from totalseg.install import ensure_installed, missing_models, source_from_environment
from totalseg.load.dicom import is_dicom_input, load_dicom, scan_dicom
from totalseg.load.nifti import load_nifti
from totalseg.pipeline import Options, required_models, segment
from totalseg.registry import get_task
from totalseg.weights import model_folder
from totalseg.write.labelmap import with_label_table
from totalseg.write.nifti import label_image, save_multilabel, save_per_class
from totalseg.write.statistics import compute_statistics, write_statistics

_NOT_YET = {"v1_order": "--v1_order",
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
    return list(dict.fromkeys(types))


def _dicom_output_paths(types: list[str], output: Path, task: str) -> dict[str, Path]:
    """Where each output type goes when a DICOM type is asked for (as the official tool names them).

    One type: ``-o`` is the file (a folder: the writer picks the name inside it).  Several: they go to ``-o``
    if it is a folder, else to its parent, as ``<task>_segmentation.nii.gz``, ``<base>_rtstruct.dcm`` and
    ``<base>_seg.dcm`` (base: the name of ``-o`` without suffix, or ``<task>_segmentation`` for a folder).
    """
    if len(types) == 1:
        return {types[0]: output}
    folder = output if output.is_dir() else output.parent
    base = f"{task}_segmentation" if output.is_dir() else output.name
    for suffix in (".nii.gz", ".nii", ".dcm"):
        if base.endswith(suffix) and len(base) > len(suffix):
            base = base[: -len(suffix)]
            break
    names = {"nifti": f"{task}_segmentation.nii.gz", "dicom_rtstruct": f"{base}_rtstruct.dcm",
             "dicom_seg": f"{base}_seg.dcm"}
    return {t: folder / names[t] for t in types}


def _task_for_modality(task: str, modality: str, say) -> str:
    """The official switch for DICOM input: CT with total_mr runs total, MR with total runs total_mr."""
    new = {("CT", "total_mr"): "total", ("MR", "total"): "total_mr"}.get((modality, task), task)
    if new != task:
        say(f"WARNING: the DICOM series is {modality}; running task {new} instead of {task}")
    return new


def _save_dicom_outputs(labels, image, class_map, paths: dict[str, Path], say) -> None:
    """Build every DICOM output first, then write them (and the NIfTI, if asked for) atomically."""
    from totalseg.write.dicom_seg import build_dicom_seg
    from totalseg.write.dicom_common import save_dataset_atomic
    from totalseg.write.rtstruct import build_rtstruct

    warn = lambda m: say(f"WARNING: {m}")  # noqa: E731
    built = {}
    for kind, build in (("dicom_seg", build_dicom_seg), ("dicom_rtstruct", build_rtstruct)):
        if kind in paths:
            try:
                built[kind] = build(labels, image.source, class_map, warn)
            except (ValueError, TypeError, AttributeError, KeyError) as e:  # unusable source headers
                raise UserError(f"cannot build the {kind} output from this DICOM series: "
                                f"{' '.join(str(e).split()) or type(e).__name__}; use -ot nifti") from e
            if built[kind] is None:
                warn(f"no class was found in the image; no {kind} file written")
    if "nifti" in paths:
        save_multilabel(labels, image.volume.affine, image.header, class_map, paths["nifti"])
    for kind, ds in built.items():
        if ds is None:
            continue
        path = paths[kind]
        if path.is_dir():
            path = path / (f"{ds.SeriesInstanceUID}.dcm" if kind == "dicom_seg" else "segmentations.dcm")
        save_dataset_atomic(ds, path)


def _check_output(output: Path | None, ml: bool) -> None:
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


def _write_radiomics(source, image, output: Path, say) -> None:
    """statistics_radiomics.json in the output folder, from the input file (or a temporary copy)."""
    import tempfile

    import nibabel as nib

    from totalseg.write.radiomics import OUTPUT_NAME, write_radiomics

    warn = lambda m: say(f"WARNING: {m}")  # noqa: E731
    if isinstance(source, (str, Path)) and str(source).endswith((".nii", ".nii.gz")):
        write_radiomics(source, output, output / OUTPUT_NAME, warn)
        return
    with tempfile.TemporaryDirectory() as tmp:  # an in-memory input: pyradiomics reads files
        path = Path(tmp) / "image.nii.gz"
        nib.save(nib.Nifti1Image(image.volume.data, image.volume.affine), path)
        write_radiomics(path, output, output / OUTPUT_NAME, warn)


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
                     plans: str = "nnUNetPlans", model_size: str = "big", series_uid: str | None = None):
    """Segment ``input`` (a NIfTI path or a nibabel image, a DICOM folder, zip or file) with ``task``.

    Writes per-class masks into the folder ``output`` (or one multilabel file with ``ml``) and returns
    the label image (uint8, input geometry, label table attached); with ``statistics`` it returns
    ``(image, statistics)``.
    """
    say = _say(quiet)
    requested = {"v1_order": v1_order,
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
    types = _output_types(output_type)
    dicom_in = isinstance(input, (str, Path)) and is_dicom_input(input)
    series = None
    if dicom_in:  # headers only: the modality may change the task before weights are checked
        series = scan_dicom(input, series_uid, warn=lambda m: say(f"WARNING: {m}"))
        task = _task_for_modality(task, series.modality, say)
    elif series_uid:
        raise UserError("--series_uid selects a series of a DICOM input; the input is not DICOM")
    elif types != ["nifti"]:
        raise UserError("DICOM output (-ot dicom_seg/dicom_rtstruct) needs a DICOM input (a folder, zip or "
                        "DICOM file); use -ot nifti for a NIfTI input")
    task_info = get_task(task)
    output = None if output is None else Path(output)
    dicom_paths = None
    if output is not None and types != ["nifti"]:
        dicom_paths = _dicom_output_paths(types, output, task)
        ml = True  # DICOM outputs are multilabel; -o now names files
        output = dicom_paths.get("nifti", next(iter(dicom_paths.values())))
    _check_output(None if skip_saving or (dicom_paths and "nifti" not in dicom_paths) else output, ml)
    _check_extras(output, ml, skip_saving, preview, radiomics)
    if license_number:
        config.check_license_format(license_number)
        config.update_config({"license_number": license_number})
    if task_info.licensed:
        config.require_license(task)
    options = Options(fast=fast, fastest=fastest, roi_subset=tuple(roi_subset) if roi_subset else None,
                      robust_crop=robust_crop, body_seg=body_seg, force_split=force_split,
                      resampling_order=int(resampling_order))
    models = required_models(task_info, options)
    if missing_models(models):  # installed first (verified, atomic); without network this fails here
        ensure_installed(models, source_from_environment(), quiet=quiet, say=say)
    for model in models:  # fail before any work if weights are missing
        model_folder(model)
    if dicom_in:
        image = load_dicom(input, warn=lambda m: say(f"WARNING: {m}"), series=series)
    else:
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
        if dicom_paths:
            _save_dicom_outputs(result.labels, image, result.class_map, dicom_paths, say)
        elif ml:
            save_multilabel(result.labels, affine, header, result.class_map, output)
        else:
            extra = None
            if task_info.postprocess == "body" and not no_derived_masks:
                extra = body_masks(result.labels, task_info.classes, image.volume.data)
            save_per_class(result.labels, affine, header, result.class_map, output, extra)
    if output is not None and preview:
        from totalseg.write.preview import write_preview

        out_dir = output.parent if ml else output
        write_preview(result.labels, affine, result.class_map, out_dir / f"preview_{task}.png")
    if radiomics:
        _write_radiomics(input, image, output, say)
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
