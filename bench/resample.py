#!/usr/bin/env python3
"""Resampling to a model's grid and back, one thread (scipy's ``ndimage.zoom``) against our slabs in threads.

    python3 bench/resample.py [--input CT] [--spacing 1.5] [--threads N] [--repeat 3]

Prints the median wall time of each way and the ratio, and checks that the values are identical.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from totalseg.prepare import resample  # noqa: E402

CT = ROOT.parent / "shared" / "data" / "extra_ct" / "itkelastix_chest_ct.nii.gz"


def _median_s(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", type=Path, default=CT)
    ap.add_argument("--spacing", type=float, default=1.5)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    img = nib.load(args.input)
    data = np.asanyarray(img.dataobj)
    zooms = np.array(img.header.get_zooms()[:3], dtype=np.float64)
    down = zooms / args.spacing
    print(f"{args.input.name} {data.shape} {data.dtype}, zooms {zooms.round(4).tolist()} -> {args.spacing} mm; "
          f"{args.threads} threads; median of {args.repeat}")
    small = ndimage.zoom(data, down, order=1, mode="nearest", output=np.float64).astype(np.int32)
    labels = (small % 50).astype(np.uint8)
    up = np.array(data.shape) / np.array(labels.shape)
    for name, src, factor, order, out in (("to the model grid, order 1", data, down, 1, np.float64),
                                          ("labels back, order 0", labels, up, 0, np.uint8),
                                          ("to the model grid, order 3", data, down, 3, np.float64)):
        t1, ref = _median_s(lambda: ndimage.zoom(src, factor, order=order, mode="nearest", output=out),
                            args.repeat)
        tn, got = _median_s(lambda: resample.zoom(src, factor, order, out, threads=args.threads), args.repeat)
        same = "identical" if got.shape == ref.shape and np.array_equal(got, ref) else "DIFFERENT"
        print(f"  {name:<28} scipy {t1:6.2f} s | ours {tn:6.2f} s | {tn / t1:.2f}x | {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
