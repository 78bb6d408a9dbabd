"""``totalseg_get_phase``: contrast phase of a CT from the intensities of a few vessels and organs."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from totalseg.cli.common import progress, run, write_result
from totalseg.errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="totalseg_get_phase",
                                description="Predict the contrast phase (time since injection) of a CT.")
    p.add_argument("-i", metavar="filepath", dest="input", type=Path,
                   help="CT image (.nii/.nii.gz, or a DICOM folder or .zip); may be left out with -s when the "
                        "brain is not in view")
    p.add_argument("-o", metavar="filepath", dest="output", type=Path, required=True, help="output JSON file")
    p.add_argument("-m", metavar="path", dest="model", type=Path,
                   help="classifier: the official contrast_phase_classifiers_2024_07_19.pkl or a folder with "
                        "its five .json.<k> files (default: the weights home, fetched once)")
    p.add_argument("-s", metavar="filepath", dest="stats", type=Path,
                   help="existing statistics.json of the total task (median, masks at the border included) "
                        "instead of running the model")
    p.add_argument("-d", "--device", default="gpu", help="gpu, gpu:N, cpu or mps")
    p.add_argument("-q", dest="quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--call_via_subprocess", action="store_true",
                   help="accepted for compatibility (officially: the models in a child process, for hosts where its "
                        "worker pools fail); totalseg starts no worker pools, so the models run in this process")
    p.add_argument("--debug", action="store_true", help="on an error in a model run, also say the input and the task")
    return p


def _read_stats(path: Path) -> dict:
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"the statistics file does not exist: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{path} is not a statistics JSON file ({err})") from None
    if not isinstance(stats, dict) or not all(isinstance(v, dict) and "intensity" in v for v in stats.values()):
        raise UserError(f"{path} is not a statistics.json ({{class: {{volume, intensity}}}})")
    return stats


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _run(args))


def _run(args) -> int:
    from totalseg.classify.phase import contrast_phase

    if args.input is None and args.stats is None:
        raise UserError("give the CT with -i (or its statistics with -s)")
    if args.input is not None and not args.input.exists():
        raise UserError(f"the input file does not exist: {args.input}")
    if args.output.is_dir():
        raise UserError(f"the output {args.output} is a folder; give a .json file name")
    say = progress(args.quiet)
    stats = _read_stats(args.stats) if args.stats is not None else None
    result = contrast_phase(args.input, stats_total=stats, model_path=args.model, device=args.device,
                            quiet=args.quiet, say=say, debug=args.debug)
    write_result(result, args.output, args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
