"""``totalseg_evans_index``: the Evans index, brain and ventricle volumes of a head CT (JSON and a PNG).

Runs ``total`` (brain and skull) and ``ventricle_parts`` through :func:`totalseg.totalsegmentator`, then
:mod:`totalseg.clinical.evans` (rigid registration to a CT brain atlas with antspyx: ``pip install
'totalseg[evans]'``). Flags as the official 2.18.0 command.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from totalseg.cli.common import check_paths, progress, run
from totalseg.errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="totalseg_evans_index", description="Calculate evans index.")
    p.add_argument("-i", "--ct_img", type=Path, required=True, help="Path to ct_img (.nii.gz, .nii, or .zip of DICOM).")
    p.add_argument("-o", "--output_file", type=Path, required=True, help="json output file.")
    p.add_argument("-p", "--preview_file", type=Path, required=True,
                   help="Preview PNG file of evans index to check if calculation is correct.")
    p.add_argument("-v", "--verbose", action="store_true", help="Print detailed progress information")
    return p


def segment(ct, verbose: bool, say):
    """The brain/skull label map (total) and the ventricle_parts label map, on the CT's grid."""
    from totalseg import totalsegmentator

    say("progress: 10%: Run brain and skull model")
    brain_skull = totalsegmentator(ct, None, roi_subset=["brain", "skull"], ml=True, nr_thr_saving=1,
                                   quiet=not verbose)
    say("progress: 40%: Run ventricle model")
    ventricles = totalsegmentator(ct, None, task="ventricle_parts", ml=True, nr_thr_saving=1, quiet=not verbose)
    return brain_skull, ventricles


def check_outputs(*paths: Path) -> None:
    """Refuse output paths that are folders, before the models run."""
    for path in paths:
        if path.is_dir():
            raise UserError(f"the output {path} is a folder; give a file name")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _run(args))


def _run(args) -> int:
    import time

    import numpy as np

    from totalseg.clinical import evans
    from totalseg.cli.common import write_result
    from totalseg.load.image import as_nibabel, load_image
    from totalseg.registry import get_task
    from totalseg.volume import Volume
    from totalseg.write.atomic import write_atomic

    check_outputs(args.output_file, args.preview_file)
    # the user's input first, then what the machine lacks
    check_paths(args.ct_img, None, "", "; give a head CT (.nii.gz, .nii or a DICOM .zip)")
    try:
        import ants  # noqa: F401 - before the models run: the registration needs it
    except ImportError:
        raise UserError(evans.ANTSPYX_HINT) from None
    say = progress(False)
    started = time.time()
    say("progress: 2%: Loading data")
    ct = as_nibabel(load_image(args.ct_img))
    brain_skull, ventricles = segment(ct, args.verbose, say)
    say("progress: 70%: Process segmentations")
    ids = {name: idx for idx, name in get_task("total").classes.items()}
    labels = np.asanyarray(brain_skull.dataobj)
    volume = lambda data, img: Volume(np.asarray(data), img.affine)  # noqa: E731
    values, found = evans.evans_index(volume(np.asanyarray(ct.dataobj), ct),
                                      volume((labels == ids["brain"]).astype(np.uint8), brain_skull),
                                      volume((labels == ids["skull"]).astype(np.uint8), brain_skull),
                                      volume(np.asanyarray(ventricles.dataobj), ventricles))
    say("progress: 95%: Plotting")
    png = evans.picture(values, found)
    write_result(values, args.output_file, quiet=True)
    args.preview_file.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.preview_file, lambda tmp: tmp.write_bytes(png))
    say("progress: 100%: Done")
    if args.verbose:
        say(f"took: {time.time() - started:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
