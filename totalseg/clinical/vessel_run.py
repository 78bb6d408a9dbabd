"""Steps the aorta and pulmonary reports share around the measuring: patient details, input checks,
the work folder, the segmentation runs they may start, and cleaning up."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np

Log = Callable[[str], None]

DEFAULT_METADATA = {"PatientName": "Unknown", "PatientSex": "M", "PatientAge": "083Y",
                    "PatientBirthDate": "19000101", "PatientID": "Unknown", "StudyID": "Unknown",
                    "StudyDescription": "Unknown", "StudyDate": "19000101"}
OLD_KEYS = {"PatientsAge": "PatientAge", "PatientsSex": "PatientSex", "PatientsBirthDate": "PatientBirthDate"}


def metadata(nodeinfo: Path | None, version: str, log: Log) -> dict | None:
    """The patient details for the report (defaults without a nodeinfo file); None when the age is in weeks."""
    from totalseg.clinical.common import parse_age, read_nodeinfo

    meta = read_nodeinfo(nodeinfo)
    if meta is None:
        log("WARNING: Could not find nodeinfo.json. Using default metadata.")
        meta = dict(DEFAULT_METADATA)
    for old, new in OLD_KEYS.items():
        if old in meta:
            meta[new] = meta.pop(old)
    meta.setdefault("PatientAge", "099Y")
    if "W" in str(meta["PatientAge"]):
        log("WARNING: Patient age is in weeks. Patient too young. Stopping.")
        return None
    meta["PatientAge"] = parse_age(meta["PatientAge"])
    meta["version"] = version
    return meta


def usable_ct(path: Path, log: Log) -> bool:
    """Whether the CT's shape allows a report (3-D, sides 20..1500); warns about flips and rotations."""
    from totalseg.errors import UserError

    if not Path(path).exists():
        raise UserError(f"the CT {path} does not exist; check -i")
    img = nib.load(path)
    if len(img.shape) != 3:
        log("WARNING: Image shape is not 3D. Stopping.")
        return False
    if max(img.shape) > 1500:
        log("WARNING: Image shape is very large (>1500). Stopping.")
        return False
    if min(img.shape) < 20:
        log("WARNING: Image shape is very small (<20). Stopping.")
        return False
    linear = img.affine[:3, :3].copy()
    if linear.min() < 0:
        log("WARNING: Affine contains negative values!")
    np.fill_diagonal(linear, 0)
    if np.abs(linear).max() > 0.01:
        log("WARNING: Affine contains significant rotation!")
    return True


def work_folder(tmp_dir: Path | None, debug: bool) -> tuple[Path, bool, bool]:
    """(folder, delete it at the end, delete its pictures at the end)."""
    if debug:
        print("Running in DEBUG mode.")
    folder = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.mkdtemp())
    folder.mkdir(parents=True, exist_ok=True)
    return folder, tmp_dir is None and not debug, not debug


def clean_up(folder: Path, delete_folder: bool, delete_pictures: bool) -> None:
    """Remove the intermediate pictures (not cpr.png), or the whole work folder."""
    if delete_pictures:
        for path in list(folder.glob("*.png")) + list(folder.glob("*.html")):
            if path.name != "cpr.png":
                path.unlink()
    if delete_folder:
        shutil.rmtree(folder, ignore_errors=True)


def segment(ct: Path, out: Path, options: dict) -> None:
    """One segmentation run into the mask folder ``out`` (as ``TotalSegmentator -ns 1 ...``)."""
    from totalseg import totalsegmentator

    totalsegmentator(ct, out, nr_thr_saving=1, **options)


def require(folder: Path, names, what: str) -> None:
    """Stop with one line when a run did not leave the masks the report needs."""
    from totalseg.errors import UserError

    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        raise UserError(f"{what} did not create {', '.join(missing)} in {folder}; check the run's messages")


def run_models(ct: Path, folder: Path, runs, log: Log) -> None:
    """The report's segmentation runs, skipping those whose masks are already in ``folder``."""
    started = time.time()
    pending = []
    for status, skip, outputs, options in runs:  # the official reports all skips first
        if all((folder / n).exists() for n in outputs):
            log(skip)
        else:
            pending.append(status)
    for k, (status, _, outputs, options) in enumerate(runs):
        print(f"progress: {10 + 2 * k}, status: {status}", flush=True)
        if status in pending:
            segment(ct, folder, options)
            require(folder, outputs, status)
    print(f"Models done (took: {time.time() - started:.2f}s)")
    print(f"progress: {10 + 2 * len(runs)}, status: Models done", flush=True)


def segment_first(ct: Path, folder: Path, rois: list[str], label: str, spacing: float, runs, log: Log) -> Path:
    """``-rm``: a fast total run for ``rois``, the CT cut around them and zoomed to ``spacing``, then the
    report's own runs; returns the zoomed CT."""
    masks = [f"{roi}.nii.gz" for roi in rois]
    if (folder / masks[0]).exists():
        log(f"  Skipping TotalSeg {label} fast (already exists)")
    else:
        segment(ct, folder, dict(task="total", roi_subset=rois, fast=True))
        require(folder, masks, f"TotalSegmentator {label} fast")
    ct = crop_and_resample(ct, folder, masks, spacing, log)
    run_models(ct, folder, runs, log)
    return ct


def crop_and_resample(ct: Path, folder: Path, masks, spacing: float, log: Log) -> Path:
    """The CT cut to ``masks`` (+ 20 mm) as ``ct_cropped.nii.gz`` in ``folder``, zoomed to ``spacing`` (int16)."""
    from totalseg.clinical.common import save_nifti
    from totalseg.clinical.grid import crop_to_masks, to_spacing

    out = folder / "ct_cropped.nii.gz"
    if out.exists():
        log("  already cropped (skipping)")
    else:
        img = nib.load(ct)
        print(f"Cropping...\n  shape Before: {img.shape}")
        img = crop_to_masks(img, [nib.load(folder / m) for m in masks], [20, 20, 20], dtype=np.int16)
        print(f"  shape After: {img.shape}")
        save_nifti(img, out)
    img = to_spacing(nib.load(out), spacing, order=3)
    img = nib.Nifti1Image(np.asanyarray(img.dataobj).astype(np.int16), img.affine)
    save_nifti(img, out)
    print(f"Resampled CT to {spacing}mm: {img.shape}")
    return out


def run_report(args, name: str, version: str, outputs, report) -> int:
    """A vessel report's frame, as the official commands run it: the log, the patient's details and the CT
    checked (each may stop the report with a log line and status 0), the work folder, ``report(args, meta,
    work, log)``, clean-up, and the runtime file with ``-r``."""
    import time

    from totalseg.clinical.common import close_logger, report_logger, save_runtime

    for out in outputs:
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
    logger = report_logger(args.output_log, name)
    try:
        started = time.time()
        logger.info("Getting metadata...")
        meta = metadata(args.nodeinfo, version, logger.info)
        if meta is None:
            return 0
        if meta["PatientAge"] < 5 or meta["PatientAge"] > 150:
            logger.info("WARNING: Patient age is not in range [5, 150]. Stopping.")
            return 0
        if not usable_ct(args.ct_path, logger.info):
            return 0
        work, delete_work, delete_pictures = work_folder(args.tmp_dir, args.debug)
        logger.info("Creating report...")
        try:
            report(args, meta, work, logger.info)
        except BaseException:
            if delete_work:
                clean_up(work, True, False)
            raise
        clean_up(work, delete_work, delete_pictures)
        if args.save_runtime and args.nodeinfo is not None and args.nodeinfo.exists():
            save_runtime(started, name, args.nodeinfo)
        return 0
    finally:
        close_logger(logger)
