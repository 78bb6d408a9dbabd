"""``totalseg_combine_masks``: one binary mask from a group of classes (whole lung, all ribs, ...)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from totalseg.cli.common import run
from totalseg.errors import UserError

_GROUPS = ["lung", "lung_left", "lung_right", "vertebrae", "ribs", "vertebrae_ribs", "heart", "pelvis", "body"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="totalseg_combine_masks",
                                description="Combine the masks of a group of classes into one binary mask.")
    p.add_argument("-i", metavar="path", dest="input", type=Path, required=True,
                   help="folder of per-class masks, or a multilabel .nii.gz written with --ml")
    p.add_argument("-o", metavar="file", dest="output", type=Path, required=True, help="output .nii.gz")
    p.add_argument("-m", "--masks", choices=_GROUPS, required=True, help="which group of classes")
    p.add_argument("-t", "--nora_tag", default="None",
                   help="official: tag the output in a local NORA installation; refused here (as by TotalSegmentator)")
    p.add_argument("-ml", "--multilabel", action="store_true",
                   help="attach a label table {1: <group>} to the output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _run(args))


def _run(args) -> int:
    from totalseg.assemble.combine import combine_masks
    from totalseg.write.labelmap import with_label_table
    from totalseg.write.nifti import save_atomic

    from totalseg import check_options

    check_options({"nora_tag": args.nora_tag})  # refused unless "None", with TotalSegmentator's line
    if not (args.output.name.endswith(".nii.gz") or args.output.name.endswith(".nii")):
        raise UserError(f"the output is one NIfTI file: give -o a name ending in .nii.gz (got {args.output})")
    if args.output.is_dir():
        raise UserError(f"the output {args.output} is a folder; give a file name ending in .nii.gz")
    img = combine_masks(args.input, args.masks)
    if args.multilabel:
        img = with_label_table(img, {1: args.masks})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(img, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
