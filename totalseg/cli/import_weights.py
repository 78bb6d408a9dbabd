"""``totalseg_import_weights``: install weight zips from disk, for machines without internet.

Each zip (as published, e.g. ``Dataset291_TotalSegmentator_part1_organs_1559subj.zip``) is checked, extracted
beside the weights folder, load-tested and renamed into place; a broken zip changes nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from totalseg.cli.common import run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="totalseg_import_weights",
                                description="Install model weights from zip files (works offline).")
    p.add_argument("-i", "--weights_file", action="append", nargs="+", type=Path, required=True,
                   metavar="FILE.zip", help="weights zip holding one Dataset<ID>_<name>/ folder (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _run(args), interrupted="interrupted; the weights folder holds only complete models")


def _run(args) -> int:
    from totalseg.install import import_archive

    for path in [p for group in args.weights_file for p in group]:
        import_archive(path, quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
