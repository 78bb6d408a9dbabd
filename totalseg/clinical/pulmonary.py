"""Pulmonary artery diameters at five landmarks: proximal main artery (annulus), sinotubular junction,
bifurcation, and the starts of the left and right arteries.

Input: the pulmonary artery mask and the five landmark masks (task pulmonary_artery_landmarks). On a
0.8 mm grid around the artery each landmark's mask gives a plane (its thinnest direction through its
centre; the annulus mask itself at landmark 1), the artery is cut there, the cut is laid flat and
measured. Numbers and keys are the official report's (TotalSegmentator 2.18.0, report version 0.2.1):
areas in cm², diameters in cm, end points in world mm and in voxels of the flattened cut.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
from scipy import ndimage

from totalseg.clinical import planes
from totalseg.clinical.aorta import measuring_grid
from totalseg.clinical.centerline import step_length
from totalseg.clinical.flatten import flatten
from totalseg.clinical.grid import load_on

VERSION = "0.2.1"
LANDMARKS = {1: ("pul_annulus", "proximal MPA"), 2: ("pul_sinotubular_junction", "sinotub. junc."),
             3: ("pul_bifurcation", "bifurcation"), 4: ("pul_left_start", "left PA"),
             5: ("pul_right_start", "right PA")}
EMPTY = ("area", "diameter", "diameter_pd", "start", "end", "start_pd", "end_pd")

Log = Callable[[str], None]


def check_inputs(totalseg: Path, details: Path, artery_fn: str) -> None:
    """One line naming the masks the report needs that are missing."""
    from totalseg.errors import UserError

    need = [totalseg / artery_fn] + [details / f"{stem}.nii.gz" for stem, _ in LANDMARKS.values()]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        raise UserError(f"the pulmonary report needs these masks (or -rm): {', '.join(missing)}")


def load_masks(ct_path: Path, totalseg: Path, details: Path, artery_fn: str, cache: Path, log: Log,
               debug: bool = False) -> dict:
    """The artery, the landmark masks and the CT on the 0.8 mm grid around the artery."""
    check_inputs(totalseg, details, artery_fn)
    grid = measuring_grid(details / "pul_annulus.nii.gz", totalseg / artery_fn, log)
    annulus = grid.get_fdata(dtype=np.float32)
    if annulus.sum() * np.prod(grid.header.get_zooms()) < 200:
        log("WARNING: Annulus is empty!")
    if debug:  # kept under the landmark's own name: a debug run then measures this copy, as officially
        nib.save(grid, cache / "pul_annulus.nii.gz")
    ct_img, _ = load_on(ct_path, grid, 3, False, cache)
    _, artery = load_on(totalseg / artery_fn, grid, 0, True, cache)
    marks = {}
    for number, (stem, name) in LANDMARKS.items():
        _, data = load_on(details / f"{stem}.nii.gz", grid, 3, True, cache)
        if data.sum() == 0:
            log(f"WARNING: {stem} is empty!")
        marks[number] = {"name": name, "data": data, "empty": bool(data.sum() == 0)}
    return {"grid": grid, "affine": grid.affine, "spacing": grid.header.get_zooms(), "ct_img": ct_img,
            "artery": ndimage.binary_fill_holes(artery).astype(np.uint8), "marks": marks}


def landmark_cuts(marks: dict, artery: np.ndarray, spacing, log: Log) -> float:
    """Cut the artery at each landmark (the annulus mask is landmark 1's cut); the largest preliminary diameter."""
    for number, mark in marks.items():
        if mark["empty"]:
            mark["diameter_tmp"] = 0
            continue
        point = tuple(planes.center_of(mark["data"], True))
        mark["point"] = point
        if number == 1:
            cut = mark["data"]
        else:
            cut = planes.cut(artery, point, planes.mask_normal(mark["data"])).astype(np.uint8)
        mark["roi"] = cut
        if cut.sum() == 0:
            log(f"WARNING: for landmark {number} no pulmonary artery plane was found!")
            mark["empty"], mark["diameter_tmp"] = True, 0
            continue
        before = marks.get(number - 1)
        if number > 1 and not before["empty"] and np.logical_and(cut, before["roi"]).any():
            log(f"WARNING: plane of landmark {number} touches previous landmark!")
        major = planes.major_chord(cut)
        if major is None:
            log(f"WARNING: for landmark {number} no diameter was found!")
            mark["diameter_tmp"] = 0
        else:
            mark["diameter_tmp"] = step_length(major[1], major[2], spacing)
    return max(m["diameter_tmp"] for m in marks.values())


def measure_cut(roi: np.ndarray, affine, max_diameter: float) -> dict:
    """Area (cm²), diameters (cm) and end points of one cut, laid flat (holes filled, no closing)."""
    flat, back = flatten(nib.Nifti1Image(roi, affine), [], max_diameter * 1.4, (), ())
    volume = flat.get_fdata().astype(np.uint8)
    center = planes.center_of(volume, True)
    z = volume.shape[2] // 2 if center is None else center[2]
    cut = ndimage.binary_fill_holes(volume[:, :, z]).astype(np.uint8)
    px = np.asarray(flat.header.get_zooms())[:2]
    out = {"area": (cut.sum() * np.prod(px) / 100).round(1)}
    major, minor, voxels, world = planes.flat_diameters(cut, px, back, z=z)
    out["diameter"], out["diameter_pd"] = (major / 10).round(1), (minor / 10).round(1)
    out.update(zip(("start", "end", "start_pd", "end_pd"), world or [None] * 4))
    out.update(zip(("start_voxel", "end_voxel", "start_pd_voxel", "end_pd_voxel"), voxels or [None] * 4))
    return out


def measure(ct_path: Path, totalseg: Path, details: Path, metadata: dict, work: Path, log: Log,
            artery_fn: str = "pulmonary_artery.nii.gz", debug: bool = False) -> tuple[dict, dict]:
    """The report's JSON and what its pictures need, from the mask folders (``work`` caches grid copies)."""
    from totalseg.clinical.aorta import json_ready

    data = load_masks(ct_path, totalseg, details, artery_fn, work, log, debug)
    marks = data["marks"]
    max_diameter = landmark_cuts(marks, data["artery"], data["spacing"], log)
    for number, mark in marks.items():
        log(f"  Processing landmark {number}")
        if mark["empty"]:
            mark.update(dict.fromkeys(EMPTY))
            continue
        mark.update(measure_cut(mark["roi"], data["affine"], max_diameter))
        if debug:
            nib.save(nib.Nifti1Image(mark["roi"].astype(np.uint8), data["affine"]),
                     work / f"pulmonary_plane_lm{number}.nii.gz")
    keep_out = {"data", "empty", "diameter_tmp", "point", "roi"}
    landmarks = {str(n): {k: v for k, v in marks[n].items() if k not in keep_out} for n in sorted(marks)}
    return json_ready({"landmarks": landmarks, "metadata": metadata}), {**data, "max_diameter": max_diameter}
