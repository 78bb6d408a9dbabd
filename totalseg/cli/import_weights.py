"""``totalseg_import_weights``: install weight zips from disk, for machines without internet.

Each zip (as published, e.g. ``Dataset291_TotalSegmentator_part1_organs_1559subj.zip``) is checked, extracted
beside the weights folder, load-tested and renamed into place; a broken zip changes nothing.
A trained nnU-Net result folder (``Dataset<ID>_<name>/<Trainer>__<Plans>__<configuration>``) is imported the
same way, with ``--task NAME`` to register it as a custom task that ``TotalSegmentator -ta NAME`` runs.
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
                   metavar="FILE.zip", help="weights zip holding one Dataset<ID>_<name>/ folder, or a trained "
                                            "nnU-Net result folder (with --task) (repeatable)")
    p.add_argument("-ta", "--task", default=None,
                   help="for a result folder: the name of the custom task that runs it (in <home>/custom_tasks.json)")
    p.add_argument("--modality", choices=["ct", "mr"], default="ct", help="the custom task's modality (default ct)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _run(args), interrupted="interrupted; the weights folder holds only complete models")


def _run(args) -> int:
    from totalseg.errors import UserError
    from totalseg.install import import_archive
    from totalseg.notice import notice_printer

    for path in [p for group in args.weights_file for p in group]:
        if path.is_dir():
            from totalseg.train.importing import import_result

            if not args.task:
                raise UserError(f"{path} is a folder: give the task name that runs it with --task NAME")
            import_result(path, args.task, modality=args.modality, say=notice_printer(args.quiet))
        else:
            import_archive(path, quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
