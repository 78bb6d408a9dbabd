"""``totalseg_download_weights``: fetch the weights of one or more tasks ahead of a run.

``-t TASK`` may be repeated; ``-t all`` takes every open task, and the licensed ones too when a licence is set.
Weights come from the official addresses, or from ``TOTALSEG_WEIGHTS_URL`` / config.json's ``weights_url``.
"""
from __future__ import annotations

import argparse
import sys

from totalseg.cli.common import run, progress


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="totalseg_download_weights",
                                description="Download the model weights of TotalSegmentator tasks.")
    p.add_argument("-t", "--task", action="append", metavar="TASK",
                   help="task whose weights to fetch (repeatable; 'all' for every task; default: total)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _run(args), interrupted="interrupted; the weights folder holds only complete models")


def _run(args) -> int:
    from totalseg import config
    from totalseg.install import ensure_installed, source_from_environment
    from totalseg.registry import get_model, get_task, task_names

    say = progress(args.quiet)
    requested = args.task or ["total"]
    source = source_from_environment()
    if "all" in requested:
        names = [n for n in task_names() if source.license_number or not get_task(n).licensed]
        if not source.license_number:
            say("Skipping the licensed tasks: no licence is set (totalseg_set_license -l KEY)")
    else:
        names = list(dict.fromkeys(requested))
    for name in names:  # every problem with the request before any download
        if get_task(name).licensed:
            config.require_license(name)
    models = [get_model(i) for name in names for i in get_task(name).download]
    installed = ensure_installed(models, source, quiet=args.quiet, say=say)
    say(f"{len(installed)} model(s) downloaded; {len({m.id for m in models}) - len(installed)} already installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
