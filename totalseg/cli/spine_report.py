"""``totalseg_spine_report``: vertebral body heights, volume and density of a CT, as JSON and a report page.

Flags, files and results as the official ``totalseg_spine_report`` 2.18.0. Masks already in the working
folder (``-tmp``, or the output's folder with ``--debug``) are used as they are: ``totalseg_vertebrae_pp_refined
.nii.gz`` (the model is not run) and ``contrast_phase.json`` (the phase is not predicted).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from totalseg.cli.common import progress, run
from totalseg.errors import UserError

VERSION = "0.1.0"  # the official spine report's own version (in the JSON metadata and on the page)
MASKS = "totalseg_vertebrae_pp_refined.nii.gz"
PHASE = "contrast_phase.json"
HEIGHTS = "spine_report_heights.json"
COMBINED = "spine_report_combined_preview.png"
PANELS = "spine_report_preview_DEBUG.png"
FRONTPAGE = "spine_report_frontpage.png"
DEFAULT_METADATA = {"PatientName": "Unknown", "PatientSex": "M", "PatientAge": "099Y",
                    "PatientBirthDate": "19010101", "PatientID": "Unknown", "StudyID": "Unknown",
                    "StudyDescription": "Unknown", "StudyDate": "20250101"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="totalseg_spine_report",
                                description="Measure the vertebral bodies of a CT (heights, volume, HU) and "
                                            "write a spine report (JSON, log and the page as RGB NIfTI).")
    p.add_argument("-i", "--ct_path", type=Path, required=True, help="CT image (.nii.gz / .nii)")
    p.add_argument("-n", "--nodeinfo", type=Path, help="JSON file with the patient details (PatientSex, "
                   "PatientAge, StudyDate, ...); default details when absent")
    p.add_argument("-o", "--output_nifti", type=Path, required=True, help="report page as RGB NIfTI")
    p.add_argument("-j", "--output_json", type=Path, required=True, help="measurements and details (JSON)")
    p.add_argument("-l", "--output_log", type=Path, required=True, help="log file")
    p.add_argument("-tmp", "--tmp_dir", type=Path, help="working folder, kept (masks and phase found there are "
                   "reused); default: a temporary folder, removed")
    p.add_argument("-t", "--test", type=str, default="None", help="accepted and ignored (as the official flag)")
    p.add_argument("-on", "--original_nifti_path", type=Path, default=None,
                   help="the series as first converted, next to <study>/DICOM/DICOMHEADER_s<NNN>.dcm: take the "
                        "contrast phase from that DICOM header instead of predicting it")
    p.add_argument("-sr", "--spine_range", choices=["all", "thoracic_lumbar", "lumbar", "l1_l4"], default="all",
                   help="vertebrae to measure (their neighbours only orient the end ones)")
    p.add_argument("-tp", "--totalseg_parallel", action="store_true",
                   help="the official's parallel model run: the model always runs, even when its masks exist")
    p.add_argument("-r", "--save_runtime", action="store_true",
                   help="add the run time to META/runtime.json beside the nodeinfo file")
    p.add_argument("--debug", action="store_true",
                   help="work in the output's folder and keep every intermediate file")
    p.add_argument("--version", action="version", version=VERSION)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _run(args))


def _workdir(args) -> tuple[Path, bool, bool]:
    """(working folder, remove it at the end, remove its pictures at the end), as the official flags choose."""
    if args.debug:
        print("Running in DEBUG mode.")
        return args.output_nifti.absolute().parent, False, False
    if args.tmp_dir:
        return args.tmp_dir.absolute(), False, True
    return Path(tempfile.mkdtemp(prefix="totalseg_spine_")), True, True


def _metadata(nodeinfo: Path | None, log) -> dict:
    """The patient details with the age in years and the report version."""
    from totalseg.clinical.common import age_from_dates, parse_age, read_nodeinfo

    metadata = read_nodeinfo(nodeinfo)
    if metadata is None:
        log.info("WARNING: Could not find nodeinfo.json. Using default metadata.")
        metadata = dict(DEFAULT_METADATA)
    if metadata.get("PatientAge") in ("", "Unknown", None):
        age = age_from_dates(metadata.get("PatientBirthDate"), metadata.get("StudyDate"))
        if age is None:
            metadata["PatientAge"] = 120
            log.info("Patient age or birth date missing. Using default age: 120 years")
        else:
            metadata["PatientAge"] = age
            log.info(f"Calculated age from dates: {age} years")
    else:
        metadata["PatientAge"] = parse_age(metadata["PatientAge"])
    log.info(f"age: {metadata['PatientAge']}")
    metadata["version"] = VERSION
    return metadata


def _stop_reason(shape: tuple) -> str | None:
    """The official refusals of an image shape (logged; the command then ends without a report)."""
    if max(shape) > 1500:
        return "WARNING: Image shape is very large. Stopping."
    if min(shape) < 20:
        return "WARNING: Image shape is very small. Stopping."
    if len(shape) != 3:
        return "WARNING: Image shape is not 3D. Stopping."
    return None


def _run(args) -> int:
    from totalseg.clinical.common import close_logger, read_nodeinfo, report_logger, save_runtime

    if not args.ct_path.is_file():
        raise UserError(f"the input file does not exist: {args.ct_path}")
    if args.nodeinfo is not None and args.nodeinfo.exists():
        read_nodeinfo(args.nodeinfo)  # a broken file fails before anything is written
    work, remove_work, remove_pictures = _workdir(args)
    work.mkdir(parents=True, exist_ok=True)
    log = report_logger(args.output_log, "spine_report")
    try:
        log.info("Getting metadata...")
        metadata = _metadata(args.nodeinfo, log)
        reason = _stop_reason(_shape(args.ct_path))
        if reason:
            log.info(reason)
            return 0
        log.info("Creating report...")
        started = time.time()
        _report(args, metadata, work, log)
        if args.save_runtime and args.nodeinfo is not None and args.nodeinfo.exists():
            save_runtime(started, "spine_report", args.nodeinfo)
    finally:
        close_logger(log)
        if remove_work:
            shutil.rmtree(work, ignore_errors=True)
        elif remove_pictures:
            for png in work.glob("*.png"):
                png.unlink()
    return 0


def _shape(path: Path) -> tuple:
    import nibabel as nib

    try:
        return nib.load(str(path)).shape
    except Exception as err:  # nibabel raises several kinds for a file that is not an image
        raise UserError(f"{path} is not a readable NIfTI image ({err})") from None


def _report(args, metadata: dict, work: Path, log) -> None:
    """Masks, phase, measurements, pictures and the two outputs."""
    import nibabel as nib
    import numpy as np

    from totalseg.clinical import spine, spine_page
    from totalseg.clinical.common import generated_now, pages_to_nifti, save_nifti
    from totalseg.write.labelmap import load_multilabel_nifti

    say = progress(False)
    say("progress: 5, status: Loading files")
    say("progress: 20, status: Running TotalSegmentator")
    _segment(args.ct_path, work, log, always=args.totalseg_parallel, say=say)
    say("progress: 40, status: Detecting contrast phase")
    phase = _phase(args.ct_path, work, log, args.original_nifti_path)
    say("progress: 50, status: Loading additional data")
    ct_img = nib.as_closest_canonical(nib.load(str(args.ct_path)))
    labels_img, label_map = load_multilabel_nifti(work / MASKS)
    labels_img = nib.as_closest_canonical(labels_img)
    if labels_img.shape != ct_img.shape:
        raise UserError(f"{work / MASKS} has shape {labels_img.shape}, the CT {ct_img.shape}; "
                        "give masks on the CT's grid or remove them to segment again")
    say("progress: 60, status: Measuring vertebral heights")
    ct = ct_img.get_fdata()
    labels = np.asanyarray(labels_img.dataobj)
    spacing = ct_img.header.get_zooms()
    vertebrae = spine.measure_vertebrae(ct, labels, label_map, spacing, args.spine_range, say=say)
    heights = spine.heights_json(vertebrae)
    _write_json(work / HEIGHTS, heights, indent=2)
    if vertebrae:
        spine_page.vertebra_panels(ct, labels, vertebrae, spacing, work / PANELS)
        spine_page.combined_picture(ct, labels, vertebrae, spacing, work / COMBINED, args.spine_range)
    else:
        spine_page.empty_picture(work / PANELS)
        spine_page.empty_picture(work / COMBINED)
    say("progress: 90, status: Generating report image")
    high, low = spine.findings(heights, phase)
    has_measurements = any(key.startswith("vertebrae_") for key in heights)
    page = spine_page.report_page(work / COMBINED, metadata, phase, has_measurements, high, low, generated_now())
    _save_png(page, work / FRONTPAGE)
    log.info(f"width: {page.shape[1] + 1}, height: {page.shape[0] + 1}")
    say("progress: 95, status: Combine masks for output")
    save_nifti(pages_to_nifti([page]), args.output_nifti)
    _write_json(args.output_json, {"results": heights, "metadata": metadata}, indent=4)
    say("progress: 100, status: Done")


def _segment(ct_path: Path, work: Path, log, always: bool, say) -> None:
    """``vertebrae_pp_refined`` masks in the working folder (kept when there, unless ``always``)."""
    target = work / MASKS
    if target.exists() and not always:
        log.info("  Skipping TotalSeg vertebrae_pp_refined (already exists)")
        return
    from totalseg import totalsegmentator

    started = time.time()
    totalsegmentator(str(ct_path), str(target), task="vertebrae_pp_refined", ml=True, nr_thr_saving=1,
                     resampling_order=1)
    say(f"TotalSegmentator done (took: {time.time() - started:.2f}s)")


def _phase(ct_path: Path, work: Path, log, original: Path | None) -> str:
    """The contrast phase: from ``contrast_phase.json`` in the working folder, the DICOM header or the model."""
    from totalseg.clinical.common import header_phase

    path = work / PHASE
    if path.exists():
        log.info("  Skipping totalseg_get_phase (already exists)")
        try:
            return str(json.loads(path.read_text(encoding="utf-8"))["phase"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{path} is not a phase JSON with a 'phase' entry ({err}); remove it") from None
    if original is not None:
        phase, pi_time = header_phase(original)
        _write_json(path, {"phase": phase, "pi_time": pi_time}, indent=4)
        return phase
    from totalseg.classify.phase import contrast_phase

    result = contrast_phase(str(ct_path), device="gpu", quiet=True)
    _write_json(path, result, indent=4)
    return str(result["phase"])


def _write_json(path: Path, data: dict, indent: int) -> None:
    from totalseg.write.atomic import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=indent)
    write_atomic(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _save_png(rgb, path: Path) -> None:
    from matplotlib.image import imsave

    imsave(str(path), rgb)


if __name__ == "__main__":
    raise SystemExit(main())
