"""``totalseg_evaluate``: Dice and NSD (surface Dice) per case and class, as in the TotalSegmentator paper."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from totalseg.cli.common import progress, run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="totalseg_evaluate", description=(
        "Score predictions against ground truth: per_case.csv, summary.csv, summary.md and summary.png in "
        "OUT_DIR. NSD uses the spacing in the ground truth's NIfTI header."))
    a = p.add_argument
    a("-p", "--pred", type=Path, required=True,
      help="predictions: <case>/<class>.nii.gz folders or <case>.nii.gz multilabel files")
    a("-g", "--gt", type=Path, required=True, help="ground truth: <case>/segmentations/<class>.nii.gz")
    a("-o", "--output", type=Path, required=True, help="output folder")
    a("--split", choices=["train", "val", "test"], default=None, help="only the cases of this split of meta.csv")
    a("--meta", type=Path, default=None, help="meta.csv (default <gt>/meta.csv)")
    a("-ta", "--task", default=None, help="the task's classes (default: every class in the ground truth)")
    a("--tolerance", type=float, default=3.0, help="NSD tolerance in mm (default 3, as the paper)")
    a("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _run(args))


def _run(args) -> int:
    from totalseg.evaluate.run import evaluate

    say = progress(args.quiet)
    summary = evaluate(args.pred, args.gt, args.output, split=args.split, meta=args.meta, task=args.task,
                       tolerance=args.tolerance, say=say, progress=not args.quiet)
    overall = summary[-1]
    say(f"{overall['class']}: Dice {overall['dice_mean']:.4f}, NSD {overall['nsd_mean']:.4f}; "
        f"tables in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
