"""``totalseg_get_body_stats``: body weight, size, age and sex (plus BMI, BSA) from a CT or MR scan.

The xgboost backend (``-mt xgboost``) is the official feature model. The CNN backend (the official
default) needs licensed network weights and their network code, which this package does not have: it is
refused with a one-line message. As the official tool, every run needs a licence (the tissue types
model is licensed), checked before anything else.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from totalseg.cli.common import progress, run
from totalseg.errors import UserError

CNN_MODELS = {"ct": "ct_all_ext_splitOrig_noise_can1_huber", "mr": "mr_all_ext_splitOrig_noise_can1_huber"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="totalseg_get_body_stats", description="Get body stats.")
    p.add_argument("-i", metavar="filepath", dest="input_file", type=Path, required=True,
                   help="CT/MR file (.nii.gz, .nii, or .zip for DICOM)")
    p.add_argument("-o", metavar="filepath", dest="output_file", type=Path, help="output JSON file")
    p.add_argument("-mf", metavar="filepath", dest="model_file", type=Path,
                   help="xgboost: base path of the fold files (<name>.json for <name>_fold0.json ...), used "
                        "for every target; cnn: experiment directory")
    p.add_argument("-m", metavar="modality", dest="modality", choices=["ct", "mr"], required=True,
                   help="imaging modality: 'ct' or 'mr'")
    p.add_argument("-mt", "--model_type", choices=["xgboost", "cnn"], default="cnn",
                   help="prediction backend (default cnn, which needs licensed weights; this package runs xgboost)")
    p.add_argument("--only_weight", action="store_true", help="predict only the body weight")
    p.add_argument("-sc", "--skip_canonical", action="store_true",
                   help="do not reorient the image to the closest canonical orientation")
    p.add_argument("-tta", "--test_time_augmentation", action="store_true",
                   help="CNN only: ensemble flipped and reoriented inputs")
    p.add_argument("--debug", action="store_true", help="CNN only: print the network input's shape")
    p.add_argument("-d", "--device", default="cpu", help="gpu, gpu:N, cpu or mps (default cpu)")
    p.add_argument("-f", "--fold", default="all", help="fold 0-4, or 'all' to ensemble the five (default)")
    p.add_argument("-q", dest="quiet", action="store_true", help="print no output to stdout")
    p.add_argument("-l", "--license_number", help="licence number (the tissue types model is licensed)")
    p.add_argument("--call_via_subprocess", action="store_true",
                   help="accepted for compatibility; the models run in this process")
    return p


def check_license(license_number: str | None) -> None:
    """A given licence is checked and stored; then one must be stored (offline check, as the official)."""
    from totalseg import config

    if license_number:
        config.check_license_format(license_number)
        config.update_config({"license_number": license_number})
    config.require_license("totalseg_get_body_stats")


def refuse_cnn(modality: str, model_dir: Path | None) -> None:
    """The CNN backend cannot run here: say why in one line (missing weights, or no network code)."""
    from totalseg.home import weights_dir

    folder = model_dir or weights_dir() / "lightning_models" / CNN_MODELS[modality]
    if not Path(folder).is_dir():
        raise UserError(f"the CNN body stats model ({folder}) is not installed and is only served to licence "
                        "holders; use -mt xgboost")
    raise UserError(f"the CNN body stats backend is not available in this package (weights in {folder} "
                    "cannot be run); use -mt xgboost")


def format_result(result: dict) -> list[str]:
    """``key:  value unit`` lines, the keys padded to one width (the official printout)."""
    width = max(len(key) for key in result) + 1
    lines = []
    for key, entry in result.items():
        unit = entry.get("unit")
        lines.append(f"{key + ':':<{width}}  {entry['value']}{' ' + unit if unit else ''}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _run(args))


def _run(args) -> int:
    import time

    from totalseg.classify.body_stats import body_stats, fold_indices
    from totalseg.device import check_device
    from totalseg.load.image import as_nibabel, load_image
    from totalseg.write.statistics import write_statistics

    check_device(args.device)
    fold_indices(args.fold)
    if args.output_file is not None and args.output_file.is_dir():
        raise UserError(f"the output {args.output_file} is a folder; give a .json file name")
    check_license(args.license_number)
    if args.model_type == "cnn":
        refuse_cnn(args.modality, args.model_file)
    say = progress(args.quiet)
    cnn_only = [flag for flag, given in (("-tta", args.test_time_augmentation), ("--debug", args.debug)) if given]
    if cnn_only:
        say(f"{' and '.join(cnn_only)}: for the CNN backend only; no effect with -mt xgboost")
    started = time.time()
    say("Loading data")
    image = as_nibabel(load_image(args.input_file))
    result = body_stats(image, args.modality, model_file=args.model_file, fold=args.fold,
                        only_weight=args.only_weight, skip_canonical=args.skip_canonical, device=args.device,
                        quiet=args.quiet, say=say)
    say(f"Done\ntook {time.time() - started:.1f}s")
    if not args.quiet:
        print("\n".join(format_result(result)))
    if args.output_file is not None:
        args.output_file.parent.mkdir(parents=True, exist_ok=True)
        write_statistics(result, args.output_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
