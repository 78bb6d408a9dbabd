"""``crop_to_body``: crop a CT to the body (or only the trunk) found by the 6 mm body model.

The official recipe: the ``body`` task in its fast form (6 mm model, fold 0), binarised (any body
label, or with ``-t`` only ``body_trunc``), then the CT's bounding box of that mask grown by 3 mm per
side (``int(3 / zoom)`` voxels), written as int32 with the affine moved to the box corner.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from totalseg.cli.common import check_paths, progress, run
from totalseg.errors import UserError

MARGIN_MM = (3, 3, 3)
TRUNC_LABEL = 1  # body_trunc in the body task


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crop_to_body", description="Crop a CT image to the body.")
    p.add_argument("-i", metavar="filepath", dest="input", type=Path, required=True, help="CT NIfTI image")
    p.add_argument("-o", metavar="filepath", dest="output", type=Path, required=True,
                   help="cropped NIfTI image")
    p.add_argument("-t", "--only_trunc", action="store_true", help="crop to the trunk instead of the entire body")
    p.add_argument("-nr", "--nr_thr_resamp", type=int, default=1, help="threads for resampling")
    p.add_argument("-ns", "--nr_thr_saving", type=int, default=6,
                   help="threads for saving (accepted for compatibility; one file is written)")
    p.add_argument("-d", "--device", choices=["gpu", "cpu"], default="gpu",
                   help="device to run on (default gpu; the CPU when there is none)")
    p.add_argument("-q", "--quiet", action="store_true", help="print no intermediate output")
    p.add_argument("-v", "--verbose", action="store_true", help="show more intermediate output")
    return p


def body_mask(labels, only_trunc: bool):
    """The binary crop mask from the body task's label array."""
    import numpy as np

    return (labels == TRUNC_LABEL if only_trunc else labels > 0).astype(np.uint8)


def crop_image(image, mask, margin_mm=MARGIN_MM, say=lambda m: None):
    """``image`` (nibabel) cropped to ``mask``'s box plus ``margin_mm``; int32 voxels, shifted affine.

    An empty mask leaves the whole image (the official tool warns and does the same).
    """
    import nibabel as nib
    import numpy as np

    from totalseg.assemble.crop import crop, mask_box
    from totalseg.volume import Volume

    # The official tool takes the margin's voxels from the header zooms and the values from get_fdata.
    box = mask_box(mask, image.header.get_zooms()[:3], margin_mm)
    if box is None:
        say("WARNING: no body found; the image is not cropped")
        box = tuple(slice(0, n) for n in image.shape[:3])
    vol = crop(Volume(np.asanyarray(image.get_fdata()), image.affine), box)
    return nib.Nifti1Image(vol.data, vol.affine)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _run(args))


def _run(args) -> int:
    import time

    import nibabel as nib
    import numpy as np

    from totalseg import totalsegmentator
    from totalseg.write.nifti import save_atomic

    check_paths(args.input, args.output, "a .nii.gz file name")
    say = progress(args.quiet)
    image = nib.load(args.input)
    if len(image.shape) != 3:
        raise UserError(f"{args.input} has shape {image.shape}; crop_to_body needs a 3D image")
    started = time.time()
    say("Generating rough body segmentation...")
    seg = totalsegmentator(image, None, task="body", fast=True, ml=True, quiet=True, verbose=args.verbose,
                           nr_thr_resamp=args.nr_thr_resamp, nr_thr_saving=1, device=args.device)
    if args.verbose:
        say(f"Rough body segmentation generated in {time.time() - started:.2f}s")
    mask = body_mask(np.asanyarray(seg.dataobj), args.only_trunc)
    out = crop_image(image, mask, say=say)
    say(f"  cropping from {image.shape} to {out.shape}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(out, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
