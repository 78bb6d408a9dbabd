"""``totalseg_set_license``: store a licence number in config.json for the licensed tasks.

The form is checked as the official tool does (``aca_`` + 14 characters), then the licence server is asked
unless ``-sv``; a number that the server refuses, or cannot be asked about, is not stored.
"""
from __future__ import annotations

import argparse
import sys

from totalseg.cli.common import run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="totalseg_set_license",
                                description="Set the licence number for the licensed TotalSegmentator tasks.")
    p.add_argument("-l", "--license_number", required=True, help="licence number, e.g. aca_XXXXXXXXXXXXXX")
    p.add_argument("-sv", "--skip_validation", action="store_true",
                   help="store it without asking the licence server")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _run(args), interrupted="interrupted; nothing was stored")


def _run(args) -> int:
    from totalseg import config
    from totalseg.install.license import validate_license
    from totalseg.install.source import source_from_environment

    key = args.license_number.strip()
    config.check_license_format(key)
    stored = config.read_config()
    if stored.get("license_number") == key:
        print("This licence number is already set.")
        return 0
    if not args.skip_validation:
        validate_license(key, source_from_environment(stored))
    config.update_config({"license_number": key})
    print("Licence number set.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
