"""The Python API, with the official function's name and options."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from totalseg import config
from totalseg.run import options as option_checks
from totalseg.assemble.postprocess import body_masks, to_v1_order
from totalseg.load.image_checks import cut_off_warning, image_warnings
from totalseg.errors import UserError
from totalseg.notice import notice_printer, timed
from totalseg.install import ensure_installed, missing_models, source_from_environment
from totalseg.load.dicom import is_dicom_input, load_dicom, scan_dicom
from totalseg.load.nifti import load_nifti
from totalseg.run.pipeline import segment
from totalseg.run.plan import Options, plan_run
from totalseg.prepare.orient import from_canonical
from totalseg.registry import get_task
from totalseg.weights import model_folder
from totalseg.write.labelmap import with_label_table
from totalseg.write.nifti import label_image, save_multilabel, save_per_class
from totalseg.write.run_report import build_run_report, write_report
from totalseg.write.statistics import compute_statistics, write_statistics


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


def _warn(say, lines: list[str], kept: list[str]) -> None:
    """Say each warning (one line, none with -q) and keep it for the run report."""
    for line in lines:
        say(f"WARNING: {line}")
    kept.extend(lines)


def _lowres_output(result, image):
    """``--save_lowres``: the model-resolution labels in the input's orientation, with their own header."""
    import nibabel as nib

    low = from_canonical(result.lowres.lowres_labels, image.volume.affine)
    header = nib.Nifti1Image(low.data, low.affine).header
    return low.data, low.affine, header


def _run_segment(image, plan, say, predictor, device, engine, quiet, debug, input, task, **options):
    """``segment`` with the run's own predictor (or the one given); ``--debug`` names the input and task
    when it fails unexpectedly. Returns the result and the device the networks ran on."""
    from totalseg.run.predictor import Predictor

    try:
        if predictor is None:
            with Predictor(device or "gpu", engine, notice=say, progress_bars=False if quiet else None) as own:
                return segment(image.volume, plan, own, progress=say, **options), own.device
        option_checks.check_predictor(predictor, device, engine)
        return segment(image.volume, plan, predictor, progress=say, **options), predictor.device
    except UserError:
        raise
    except Exception:
        if debug:
            print(f"Error during prediction for input: {input}, task: {task}", file=sys.stderr, flush=True)
        raise


@dataclass(frozen=True)
class _Destination:
    """Where a run's label outputs go, resolved before any work."""

    output: Path | None  # the multilabel file (``ml``) or the per-class folder; None: nothing is written
    ml: bool
    dicom_paths: dict[str, Path] | None  # with a DICOM output type: each type's path (see _dicom_output_paths)

    @property
    def folder(self) -> Path | None:
        """The folder of the outputs, where the preview and statistics.json go."""
        return None if self.output is None else (self.output.parent if self.ml else self.output)


def _destination(output, ml: bool, types: list[str], skip_saving: bool, task: str) -> _Destination:
    output = None if output is None else Path(output)
    dicom_paths = None
    if output is not None and types != ["nifti"]:
        dicom_paths = _dicom_output_paths(types, output, task)
        ml = True  # DICOM outputs are multilabel; -o now names files
        output = dicom_paths.get("nifti", next(iter(dicom_paths.values())))
    option_checks.check_output(None if skip_saving or (dicom_paths and "nifti" not in dicom_paths) else output, ml)
    return _Destination(output, ml, dicom_paths)


def _input_task(input, task: str, series_uid: str | None, types: list[str], say):
    """``(task, series)``: the DICOM series' headers (None for other inputs) and the task to run, which
    the series' modality may change (read before any weights are checked)."""
    if isinstance(input, (str, Path)) and is_dicom_input(input):
        series = scan_dicom(input, series_uid, warn=lambda m: say(f"WARNING: {m}"))
        return _task_for_modality(task, series.modality, say), series
    if series_uid:
        raise UserError("--series_uid selects a series of a DICOM input; the input is not DICOM")
    if types != ["nifti"]:
        raise UserError("DICOM output (-ot dicom_seg/dicom_rtstruct) needs a DICOM input (a folder, zip or "
                        "DICOM file); use -ot nifti for a NIfTI input")
    return task, None


def _install_weights(plan, task_info, license_number: str | None, quiet: bool, say) -> None:
    """The licence for a licensed task, then every planned model installed and present: fails before any work."""
    if license_number:
        config.check_license_format(license_number)
        config.update_config({"license_number": license_number})
    if task_info.licensed:
        config.require_license(task_info.name)
    models = plan.models()
    if missing_models(models):  # installed first (verified, atomic); without network this fails here
        ensure_installed(models, source_from_environment(), quiet=quiet, say=say)
    for model in models:
        model_folder(model)


def _load_image(input, series, task_info, say, warned: list[str]):
    """The input image; the reader's warnings, then the input checks', are said and kept in ``warned``."""
    warn = lambda m: _warn(say, [m], warned)  # noqa: E731
    image = load_dicom(input, warn=warn, series=series) if series is not None else load_nifti(input, warn=warn)
    _warn(say, image_warnings(image.volume, task_info.modality, task_info.name), warned)  # never change outputs
    return image


def _statistics(result, image, lowres: bool, exclude_masks_at_border: bool, aggregation: str, extra: bool):
    """Per-class statistics on the input grid, or with ``lowres`` on the model's grid (as the official
    tool does for --fast; here also for --save_lowres)."""
    if lowres and result.lowres is not None:
        labels, img = result.lowres.lowres_labels, result.lowres.lowres_image
        return compute_statistics(labels.data, img.data, img.zooms, result.class_map, exclude_masks_at_border,
                                  aggregation, extra)
    return compute_statistics(result.labels, image.volume.data, image.header.get_zooms()[:3], result.class_map,
                              exclude_masks_at_border, aggregation, extra)


def _statistics_path(statistics, dest: _Destination) -> Path | None:
    """statistics.json beside the outputs, or the path given as ``statistics``."""
    if isinstance(statistics, (str, Path)):
        return Path(statistics)
    return None if dest.folder is None else dest.folder / "statistics.json"


def _v1_relabelled(labels, class_map: dict, v1_classes, roi_subset):
    """The multilabel output's labels and classes: as segmented, or in the v1 order (``--v1_order``)."""
    if v1_classes is None:
        return labels, class_map
    classes = {k: v for k, v in v1_classes.items() if not roi_subset or v in roi_subset}
    return to_v1_order(labels, get_task("total").classes, v1_classes), classes


def _save_labels(dest: _Destination, grid, class_map: dict, multilabel, image, body_classes: dict | None,
                 threads: int, say) -> None:
    """The label outputs: DICOM files, one multilabel NIfTI, or a mask per class (with the body task's
    derived masks, given its ``body_classes``). ``grid``: (labels, affine, header); ``multilabel``: (labels,
    classes)."""
    labels, affine, header = grid
    if dest.dicom_paths:
        _save_dicom_outputs(labels, image, class_map, dest.dicom_paths, say)
    elif dest.ml:
        ml_labels, ml_classes = multilabel
        save_multilabel(ml_labels, affine, header, ml_classes, dest.output)
    else:
        extra = None if body_classes is None else body_masks(labels, body_classes, image.volume.data)
        save_per_class(labels, affine, header, class_map, dest.output, extra, threads=threads)


def totalsegmentator(input, output=None, ml: bool = False, nr_thr_resamp: int | None = None, nr_thr_saving: int = 6,
                     fast: bool = False, nora_tag: str = "None", preview: bool = False, task: str = "total",
                     roi_subset: Sequence[str] | None = None, statistics=False, radiomics: bool = False,
                     crop_path=None, body_seg: bool = False, force_split: bool = False,
                     output_type="nifti", quiet: bool = False, verbose: bool = False, test: int = 0,
                     skip_saving: bool = False, device: str | None = None, license_number: str | None = None,
                     statistics_exclude_masks_at_border: bool = True, no_derived_masks: bool = False,
                     v1_order: bool = False, fastest: bool = False, roi_subset_robust=None,
                     stats_aggregation: str = "mean", remove_small_blobs=False,
                     statistics_normalized_intensities: bool = False, robust_crop: bool = False,
                     higher_order_resampling_LEGACY: bool = False, higher_order_resampling: bool = False,
                     save_probabilities=None, debug: bool = False, report=None,
                     statistics_extra: bool = False, save_lowres: bool = False, resampling_order: int = 1,
                     plans: str = "nnUNetPlans", model_size: str = "big", series_uid: str | None = None,
                     engine: str | None = None, predictor=None):
    """Segment ``input`` (a NIfTI path or a nibabel image, a DICOM folder, zip or file) with ``task``.

    Writes per-class masks into the folder ``output`` (or one multilabel file with ``ml``) and returns
    the label image (uint8, input geometry, label table attached); with ``statistics`` it returns
    ``(image, statistics)``. ``device`` (default gpu) and ``engine`` (default exact, or
    ``$TOTALSEG_ENGINE``) choose where and how the networks run; a :class:`totalseg.Predictor` passed
    as ``predictor`` brings its own (and keeps its models loaded for the next call).
    """
    started = time.time()
    say = notice_printer(quiet)
    tell = notice_printer(not verbose)  # -v: steps and timings
    # Everything that can be refused is refused before any weights are installed or any image is read.
    option_checks.refuse_unsupported(
        task, save_probabilities=save_probabilities, test=test, nora_tag=nora_tag,
        higher_order_resampling=higher_order_resampling, plans=plans, model_size=model_size,
        statistics_normalized_intensities=statistics_normalized_intensities, nr_thr_saving=nr_thr_saving)
    blobs_mm3 = option_checks.blob_size(remove_small_blobs)
    engine = option_checks.check_run_options(roi_subset, device, engine, predictor, resampling_order,
                                             stats_aggregation)
    if roi_subset_robust:
        roi_subset, robust_crop = roi_subset_robust, True
    resample_threads = option_checks.resample_threads(nr_thr_resamp)
    types = option_checks.output_types(output_type)
    if save_lowres and not (fast or fastest):
        raise UserError("save_lowres only works together with fast or fastest mode.")
    task, series = _input_task(input, task, series_uid, types, say)
    task_info = get_task(task)
    dest = _destination(output, ml, types, skip_saving, task)
    option_checks.check_extras(dest.output, dest.ml, skip_saving, preview, radiomics)
    v1_classes = option_checks.v1_classes(v1_order, task, types, dest.ml, None if skip_saving else dest.output, say)
    if v1_classes is not None and roi_subset and higher_order_resampling_LEGACY:
        raise UserError("--higher_order_resampling_LEGACY with --v1_order and --roi_subset is not supported (the "
                        "official tool filters v2 labels by v1 ids there); drop one of them")
    options = Options(fast=fast, fastest=fastest, roi_subset=tuple(roi_subset) if roi_subset else None,
                      robust_crop=robust_crop, body_seg=body_seg, force_split=force_split,
                      resampling_order=int(resampling_order))
    plan = plan_run(task_info, options)
    if save_lowres:
        option_checks.check_save_lowres(plan, fast, fastest, types, dest.ml, no_derived_masks, radiomics)
    option_checks.say_inert_options(say, crop_path)
    _install_weights(plan, task_info, license_number, quiet, say)

    warned: list[str] = []  # for the run report
    image = _load_image(input, series, task_info, say, warned)
    say(f"Predicting {task}{' (fast)' if fast else ''}{' (fastest)' if fastest else ''}...")
    step = time.time()
    result, ran_on = _run_segment(image, plan, say, predictor, device, engine, quiet, debug, input, task,
                                  blobs_mm3=blobs_mm3, one_hot=bool(higher_order_resampling_LEGACY),
                                  header_zooms=image.header.get_zooms()[:3], resample_threads=resample_threads)
    tell(f"  predicted on {ran_on} in {time.time() - step:.2f}s")
    cut_off = cut_off_warning(result.labels, result.class_map)  # said where it matters: the statistics
    if statistics:
        _warn(say, cut_off, warned)
    else:
        warned.extend(cut_off)

    stats = None
    if statistics:
        with timed(tell, "statistics"):
            stats = _statistics(result, image, bool(fast or save_lowres), statistics_exclude_masks_at_border,
                                stats_aggregation, statistics_extra)
    grid = _lowres_output(result, image) if save_lowres else (result.labels, image.volume.affine, image.header)
    multilabel = _v1_relabelled(grid[0], result.class_map, v1_classes, roi_subset)
    if dest.output is not None and not skip_saving:
        with timed(tell, "saved"):
            derived = task_info.postprocess == "body" and not no_derived_masks
            _save_labels(dest, grid, result.class_map, multilabel, image, task_info.classes if derived else None,
                         int(nr_thr_saving), say)
    if preview:  # check_extras made sure there is an output folder
        from totalseg.write.preview import write_preview

        write_preview(result.labels, image.volume.affine, result.class_map, dest.folder / f"preview_{task}.png")
    if radiomics:
        _write_radiomics(input, image, dest.output, say)
    stats_path = None if stats is None else _statistics_path(statistics, dest)
    if stats_path is not None:
        stats_path.parent.mkdir(parents=True, exist_ok=True)
        write_statistics(stats, stats_path)
    if report is not None:
        manifest = build_run_report(
            input, None if output is None else Path(output), task, task_info.modality, task_info.licensed, ran_on,
            fast, fastest, ml, types[0] if len(types) == 1 else types, roi_subset, result.class_map,
            time.time() - started, save_lowres=bool(save_lowres), engine=engine or getattr(predictor, "engine", None),
            warnings=warned)
        say(f"Run report written to {write_report(manifest, report)}")
    out_labels, out_classes = multilabel
    out_img = with_label_table(label_image(out_labels, grid[1], grid[2]), dict(out_classes))
    return (out_img, stats) if statistics else out_img


def check_options(options: dict) -> None:
    """The checks of :func:`totalsegmentator` that need no input, for options given as a mapping."""
    import inspect

    known = set(inspect.signature(totalsegmentator).parameters) - {"input", "output", "predictor"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r}; the options are those of totalsegmentator()")
    opts = {name: p.default for name, p in inspect.signature(totalsegmentator).parameters.items()
            if name in known} | dict(options)
    option_checks.refuse_unsupported(
        opts["task"], save_probabilities=opts["save_probabilities"], test=opts["test"], nora_tag=opts["nora_tag"],
        higher_order_resampling=opts["higher_order_resampling"], plans=opts["plans"], model_size=opts["model_size"],
        statistics_normalized_intensities=opts["statistics_normalized_intensities"],
        nr_thr_saving=opts["nr_thr_saving"])
    option_checks.blob_size(opts["remove_small_blobs"])
    option_checks.check_run_options(opts["roi_subset"], opts["device"], opts["engine"], None,
                                    opts["resampling_order"], opts["stats_aggregation"])
    option_checks.output_types(opts["output_type"])
    get_task(opts["task"])
