"""``totalseg_get_modality``: is an image a CT or an MR?"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from totalseg.cli.common import check_paths, progress, run, write_result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="totalseg_get_modality", description="Predict whether an image is CT or MR.")
    p.add_argument("-i", metavar="filepath", dest="input", type=Path, required=True,
                   help="CT/MR image (.nii/.nii.gz, or a DICOM folder or .zip)")
    p.add_argument("-o", metavar="filepath", dest="output", type=Path, required=True, help="output JSON file")
    p.add_argument("-m", metavar="folder", dest="model", type=Path,
                   help="folder with the five official modality classifier files "
                        "(default: the weights home, fetched once)")
    p.add_argument("-n", dest="normalized", action="store_true",
                   help="for images with normalised intensities: use intensities inside 16 structures "
                        "of the fast total_mr model")
    p.add_argument("-d", "--device", default="gpu", help="gpu, gpu:N, cpu or mps (only with -n)")
    p.add_argument("-q", dest="quiet", action="store_true", help="print nothing but errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _run(args))


def _run(args) -> int:
    from totalseg.classify.modality import modality
    from totalseg.load.image import as_nibabel, load_image

    check_paths(args.input, args.output, "a .json file name")
    say = progress(args.quiet)
    result = modality(as_nibabel(load_image(args.input)), args.normalized, args.model, device=args.device,
                      quiet=args.quiet, say=say)
    write_result(result, args.output, args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
