"""The last step of a run: the label files, statistics, preview, radiomics and run report its setup asks for."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from totalseg.assemble.postprocess import body_masks, to_v1_order
from totalseg.errors import UserError
from totalseg.notice import Notice, timed
from totalseg.prepare.orient import from_canonical
from totalseg.registry import get_task
from totalseg.run.setup import Destination, RunSetup, StatisticsRequest
from totalseg.write.labelmap import with_label_table
from totalseg.write.nifti import label_image, save_multilabel, save_per_class
from totalseg.write.run_report import build_run_report, write_report
from totalseg.write.statistics import compute_statistics, write_statistics


def write_outputs(setup: RunSetup, image, result, ran_on: str, engine: str | None, started: float,
                  warned: list[str], say: Notice, tell: Notice):
    """Write every output of ``setup``; returns the label image (and the statistics when asked for)."""
    if setup.probabilities is not None and result.probabilities is not None:
        from totalseg.predict.probabilities import write_probabilities

        write_probabilities(result.probabilities, setup.probabilities)
    stats = None
    if setup.statistics is not None:
        with timed(tell, "statistics"):
            stats = _statistics(result, image, setup.statistics)
    grid = _lowres_grid(result, image) if setup.lowres_output else (result.labels, image.volume.affine, image.header)
    multilabel = _multilabel(grid[0], result.class_map, setup)
    dest = setup.destination
    if dest.output is not None and setup.save_labels:
        with timed(tell, "saved"):
            _save_labels(setup, grid, result.class_map, multilabel, image, say)
    if setup.preview_png is not None:
        from totalseg.write.preview import write_preview

        write_preview(result.labels, image.volume.affine, result.class_map, setup.preview_png)
    if setup.radiomics_folder is not None:
        _write_radiomics(setup.input, image, setup.radiomics_folder, say)
    if stats is not None and setup.statistics.path is not None:
        setup.statistics.path.parent.mkdir(parents=True, exist_ok=True)
        write_statistics(stats, setup.statistics.path)
    if setup.report_path is not None:
        _write_run_report(setup, result.class_map, ran_on, engine, time.time() - started, warned, say)
    labels, classes = multilabel
    out = with_label_table(label_image(labels, grid[1], grid[2]), dict(classes))
    return (out, stats) if setup.statistics is not None else out


def _write_run_report(setup: RunSetup, class_map: dict, ran_on: str, engine: str | None, seconds: float,
                      warned: list[str], say: Notice) -> None:
    manifest = build_run_report(setup.input, setup.report_output, setup.task.name, setup.task.modality, setup.task.licensed,
                                ran_on, setup.report_fields, class_map, seconds, engine=engine, warnings=warned,
                                written_to=setup.output_given)
    say(f"Run report written to {write_report(manifest, setup.report_path)}")


def _statistics(result, image, request: StatisticsRequest) -> dict:
    """Per-class statistics on the input grid, or on the model's grid (as the official tool does for --fast)."""
    how = (request.exclude_masks_at_border, request.aggregation, request.extra, request.normalized)
    if request.lowres and result.lowres is not None:
        labels, img = result.lowres.lowres_labels, result.lowres.lowres_image
        return compute_statistics(labels.data, img.data, img.zooms, result.class_map, *how)
    return compute_statistics(result.labels, image.volume.data, image.header.get_zooms()[:3], result.class_map, *how)


def _lowres_grid(result, image):
    """The model-resolution labels in the input's orientation, with their own header."""
    import nibabel as nib

    low = from_canonical(result.lowres.lowres_labels, image.volume.affine)
    header = nib.Nifti1Image(low.data, low.affine).header
    return low.data, low.affine, header


def _multilabel(labels, class_map: dict, setup: RunSetup):
    """The multilabel output's labels and classes: as segmented, or in the v1 order."""
    v1 = setup.multilabel_classes
    if v1 is None:
        return labels, class_map
    classes = {k: v for k, v in v1.items() if not setup.keep_roi or v in setup.keep_roi}
    return to_v1_order(labels, get_task("total").classes, v1), classes


def _save_labels(setup: RunSetup, grid, class_map: dict, multilabel, image, say: Notice) -> None:
    """DICOM files, one multilabel NIfTI, or a mask per class (with the body task's derived masks)."""
    dest: Destination = setup.destination
    labels, affine, header = grid
    if dest.dicom_paths:
        _save_dicom_outputs(labels, image, class_map, dest.dicom_paths, say)
    elif dest.ml:
        ml_labels, ml_classes = multilabel
        save_multilabel(ml_labels, affine, header, ml_classes, dest.output)
    else:
        extra = body_masks(labels, setup.task.classes, image.volume.data) if setup.derived_masks else None
        save_per_class(labels, affine, header, class_map, dest.output, extra, threads=setup.save_threads)


def _save_dicom_outputs(labels, image, class_map, paths: dict[str, Path], say: Notice) -> None:
    """Build every DICOM output first, then write them (and the NIfTI, if asked for) atomically."""
    from totalseg.write.dicom_common import save_dataset_atomic
    from totalseg.write.dicom_seg import build_dicom_seg
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
        if path.is_dir():  # a DICOM SEG into a folder (the RT structure set's path ends in .dcm)
            path = path / f"{ds.SeriesInstanceUID}.dcm"
        save_dataset_atomic(ds, path)


def _write_radiomics(source, image, folder: Path, say: Notice) -> None:
    """statistics_radiomics.json in the output folder, from the input file (or a temporary copy)."""
    import nibabel as nib

    from totalseg.write.radiomics import OUTPUT_NAME, write_radiomics

    warn = lambda m: say(f"WARNING: {m}")  # noqa: E731
    if isinstance(source, (str, Path)) and str(source).endswith((".nii", ".nii.gz")):
        write_radiomics(source, folder, folder / OUTPUT_NAME, warn)
        return
    with tempfile.TemporaryDirectory() as tmp:  # an in-memory input: pyradiomics reads files
        path = Path(tmp) / "image.nii.gz"
        nib.save(nib.Nifti1Image(image.volume.data, image.volume.affine), path)
        write_radiomics(path, folder, folder / OUTPUT_NAME, warn)
