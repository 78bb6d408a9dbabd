#!/usr/bin/env python3
"""The int8 engine's quantization variants against the exact engine, on trained weights.

    python3 bench/int8_variants.py --home HOME --task TASK --input IMG [IMG ...] [--reference SEG ...]
        [--variant default 'ignored_types=MVN' 'max_drop=0.005' ...] [--out DIR]

A variant is the engine's default ``int8_engine.Quantization`` with the fields a ``--variant`` names changed,
``;``-separated ``field=value``: ``ignored_types=MVN,ConvolutionBackpropData`` (``none``: empty),
``ignored_patterns=REGEX|REGEX`` (replaces the default), ``also_f32=REGEX|REGEX`` (added to the default
patterns), ``max_drop=0.005`` (NNCF's accuracy-aware mode: at most this drop of argmax agreement with the float
model on the calibration tiles), ``ranges=minmax``, ``preset=performance``, ``fast_bias_correction=no``.
For each input the exact engine segments once; then for each variant a fresh int8 predictor calibrates (timed,
cached in HOME under a name of its own) and segments every input. Printed per variant and input: equal voxels,
per-class Dice against exact (classes >= 50 voxels, and with ``--reference`` the classes exact gets right: Dice >
0.5 against it), calibration and segmentation seconds. Results: DIR/results.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    ma, mb = a == label, b == label
    total = int(ma.sum() + mb.sum())
    return 2 * int((ma & mb).sum()) / total if total else 1.0


def _agreement(exact: np.ndarray, other: np.ndarray, trained: list[int]) -> dict:
    labels = [int(k) for k in np.union1d(np.unique(exact), np.unique(other)) if k
              and max((exact == k).sum(), (other == k).sum()) >= 50]
    dice = {k: _dice(exact, other, k) for k in labels}
    on_trained = [_dice(exact, other, k) for k in trained]
    worst = sorted(zip(on_trained, trained))[:3]
    return {"equal_voxels": float((exact == other).mean()), "classes": len(dice),
            "dice_min": min(dice.values()) if dice else None,
            "trained_classes": len(trained), "trained_dice_min": min(on_trained) if on_trained else None,
            "trained_dice_mean": float(np.mean(on_trained)) if on_trained else None,
            "trained_worst": [[label, round(d, 4), int((exact == label).sum())] for d, label in worst]}


def variant(spec: str, default):
    """``default`` (a Quantization) with the fields ``spec`` names changed (module docstring)."""
    changes = {}
    for item in filter(None, ("" if spec == "default" else spec).split(";")):
        field, _, value = item.partition("=")
        if field == "also_f32":
            changes["ignored_patterns"] = default.ignored_patterns + tuple(value.split("|"))
        elif field in ("ignored_types", "ignored_patterns"):
            changes[field] = () if value == "none" else tuple(value.split("|" if field == "ignored_patterns" else ","))
        elif field == "max_drop":
            changes[field] = None if value == "none" else float(value)
        elif field == "fast_bias_correction":
            changes[field] = value == "yes"
        elif field in ("ranges", "preset"):
            changes[field] = value
        else:
            sys.exit(f"unknown quantization field in --variant {spec!r}: {field}")
    return dataclasses.replace(default, **changes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--input", type=Path, nargs="+", required=True)
    ap.add_argument("--reference", type=Path, nargs="*", default=[], help="one per input, in the same order")
    ap.add_argument("--variant", nargs="+", default=["default"], help="see above; default: the engine's own")
    ap.add_argument("--out", type=Path, default=Path("bench/work/int8_variants"))
    args = ap.parse_args()
    import os

    os.environ["TOTALSEG_HOME_DIR"] = str(args.home.resolve())  # the home's own tasks (custom_tasks.json)
    from totalseg import Predictor
    from totalseg.predict import int8_engine

    args.out.mkdir(parents=True, exist_ok=True)
    options = dict(task=args.task, ml=True, quiet=True)
    exact, trained = {}, {}
    with Predictor("cpu", engine="exact", home_dir=args.home, progress_bars=False) as predictor:
        for k, path in enumerate(args.input):
            exact[path] = np.asarray(predictor.segment(path, None, **options).dataobj)
            trained[path] = []
            if k < len(args.reference):
                ref = np.asarray(nib.load(args.reference[k]).dataobj)
                trained[path] = [int(c) for c in np.unique(ref) if c and _dice(ref, exact[path], c) > 0.5]
    results = []
    for spec in args.variant:
        quantization = variant(spec, int8_engine.Quantization())
        start = time.perf_counter()
        with Predictor("cpu", engine="int8", home_dir=args.home, progress_bars=False,
                       quantization=quantization) as predictor:
            for k, path in enumerate(args.input):
                began = time.perf_counter()
                labels = np.asarray(predictor.segment(path, None, **options).dataobj)
                row = {"variant": spec, "input": path.name,
                       "seconds": round(time.perf_counter() - began, 2),
                       **_agreement(exact[path], labels, trained[path])}
                if k == 0:
                    row["calibration_and_first_s"] = round(time.perf_counter() - start, 1)
                results.append(row)
                print(json.dumps(row), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
