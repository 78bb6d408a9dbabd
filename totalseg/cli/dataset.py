"""``totalseg_dataset``: a dataset in the TotalSegmentator layout -> an nnU-Net v2 raw dataset with its split."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from totalseg.cli.common import progress, run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="totalseg_dataset", description=(
        "Convert <case>/ct.nii.gz + <case>/segmentations/<class>.nii.gz (+ meta.csv with image_id;split) "
        "into nnUNet_raw/Dataset<ID>_<name> with splits_final.json (train/val; test cases kept aside)."))
    p.add_argument("-i", "--input", type=Path, required=True, help="dataset folder (TotalSegmentator layout)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="training work folder (the dataset goes to <output>/nnUNet_raw/)")
    p.add_argument("-d", "--dataset_id", type=int, required=True, help="nnU-Net dataset id, e.g. 901")
    p.add_argument("-n", "--name", required=True, help="dataset name, e.g. MyOrgans")
    p.add_argument("-c", "--classes", required=True, nargs="+", metavar="CLASS",
                   help="a class map or task of the registry (e.g. total_part1_organs, liver_vessels), or class "
                        "names in label order")
    p.add_argument("-m", "--meta", type=Path, default=None,
                   help="meta.csv with the split (default: <input>/meta.csv if it exists, else all train)")
    p.add_argument("--image", default="ct.nii.gz", help="image file name in each case folder (default ct.nii.gz)")
    p.add_argument("--channel", default=None, help="nnU-Net channel name: CT (default) or MR for z-score norm")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _run(args), interrupted="interrupted; the dataset folder may be incomplete: run again")


def _run(args) -> int:
    from totalseg.train import convert_dataset, resolve_classes

    say = progress(args.quiet)
    classes = resolve_classes(args.classes[0] if len(args.classes) == 1 else args.classes)
    meta = args.meta or (args.input / "meta.csv" if (args.input / "meta.csv").is_file() else None)
    channel = args.channel or ("MR" if "mr" in args.image.lower() else "CT")
    done = convert_dataset(args.input, args.output / "nnUNet_raw", args.dataset_id, args.name, classes, meta=meta,
                           image=args.image, channel=channel, say=say, progress=not args.quiet)
    say(f"Wrote {done.folder}: {len(classes)} classes; train {len(done.splits['train'])}, "
        f"val {len(done.splits['val'])}, test {len(done.splits['test'])} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
