"""Input checks that only warn: intensities that are not HU, the wrong modality, a patient orientation that
looks wrong, and classes cut off by the field of view.  They never change an output.

Each check is a plain function returning short warning lines (empty when all is well or when the image does
not hold what the check needs).  The image checks look at a coarse copy of the image (about 3 mm voxels, at
most a few million voxels) in the canonical RAS grid, so they cost well under a second next to the networks.

Modality is judged from the intensities, not from the official modality classifier: that classifier needs
files the run does not otherwise need (a download), takes seconds on a large CT (float64 statistics of every
voxel), and calls the real abdominal MR of the official test data "CT".  A CT in Hounsfield units has air at
about -1000 HU (outside the body, lungs, bowel) and fat at about -100 HU; an MR image has neither.

Orientation is judged from anatomy that reads the same in any CT of the torso (the networks' outputs cannot be
used: with wrong weights, or the wrong orientation, they are what is in doubt):
* spine posterior: the bone in the midline of the torso lies in its posterior half;
* head up: the lungs reach higher than the upper-abdominal organs (the liver) and the liver lower than the lungs;
* left-right: below the lungs, the soft-tissue organ mass is far larger on the right (the liver) than on the
  left (spleen, stomach).
A rule is skipped, silently, when the field of view lacks what it needs (no torso, no lungs, no liver).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from scipy import ndimage as ndi

from totalseg.prepare.orient import to_canonical
from totalseg.volume import Volume
from totalseg.write.statistics import BORDER_SLICES  # a class this close to a face is ``incomplete`` there

GRID_MM = 3.0  # voxel size of the coarse copy the image checks look at
MAX_VOXELS = 4_000_000  # the coarse copy is made coarser until it has at most this many voxels

# Hounsfield bands (HU).
AIR_MAX, FAT_LOW, FAT_HIGH = -500.0, -150.0, -50.0
AIR_LOW, AIR_HIGH = -1100.0, -900.0  # air as a CT scanner reads it
TISSUE_MIN = -300.0  # body: anything denser than lung or air
BONE_MIN = 300.0
LUNG_LOW, LUNG_HIGH, GAS_MAX = -950.0, -500.0, -960.0
ORGAN_LOW, ORGAN_HIGH = 35.0, 200.0  # liver, spleen, muscle (15 mm average)


def image_warnings(volume: Volume, modality: str, task: str) -> list[str]:
    """The checks of an input image for a task of ``modality`` ("ct" or "mr"); the anatomical ones only for a
    CT task and an image in HU. A check that fails says so instead of stopping the run."""
    try:
        warnings = intensity_warnings(volume.data, modality, task)
        if modality == "ct" and not warnings and np.ndim(volume.data) == 3 and looks_like_hu(volume.data):
            warnings += orientation_warnings(volume)
        return warnings
    except Exception as e:  # noqa: BLE001 -- a check that only warns must never cost the user the run
        return [f"the input checks were skipped ({type(e).__name__}: {e})"]


# ------------------------------------------------------------------------------------------ intensities
def intensity_warnings(data: np.ndarray, modality: str, task: str) -> list[str]:
    """Values that are not HU for a CT task, a CT in HU for an MR task, an MR-like image for a CT task."""
    data = np.asarray(data)
    if data.size == 0:
        return []
    lo, hi = float(np.min(data)), float(np.max(data))
    sample = _sample(data)
    if modality == "mr":
        if lo < AIR_HIGH and float(np.mean((sample >= AIR_LOW) & (sample <= AIR_HIGH))) >= 0.002:
            return [f"the image looks like a CT in Hounsfield units (air at about -1000), but task {task} "
                    "is for MR images; use a CT task (e.g. -ta total)"]
        return []
    if lo >= 0:
        kind = "within 0..1" if hi <= 1 else "within 0..255" if hi <= 255 else "all >= 0"
        return [f"the intensities are {kind} (range {_num(lo)}..{_num(hi)}): not Hounsfield units (air is about "
                f"-1000), a rescaled CT or an MR image? Task {task} expects a CT in HU; its masks may be empty or "
                "partial"]
    air, fat = float(np.mean(sample <= AIR_MAX)), float(np.mean((sample >= FAT_LOW) & (sample <= FAT_HIGH)))
    if air < 0.001 and fat < 0.005:
        return [f"the image does not look like a CT in Hounsfield units (no air at about -1000, no fat at about "
                f"-100; range {_num(lo)}..{_num(hi)}): an MR image (use an MR task, e.g. -ta total_mr) or a "
                f"shifted CT? Task {task} expects a CT in HU"]
    return []


def looks_like_hu(data: np.ndarray) -> bool:
    """Whether the anatomical rules can trust HU thresholds: some air or fat, and negative values."""
    sample = _sample(np.asarray(data))
    return sample.size > 0 and float(sample.min()) < 0 and (
        float(np.mean(sample <= AIR_MAX)) >= 0.001 or float(np.mean((sample >= FAT_LOW) & (sample <= FAT_HIGH)))
        >= 0.005)


def _sample(data: np.ndarray) -> np.ndarray:
    """At most about a million voxels, taken on a regular lattice (fractions of bands are all we need)."""
    step = max(1, round((data.size / 1e6) ** (1 / max(1, data.ndim))))
    return data[(slice(None, None, step),) * data.ndim]


def _num(x: float) -> str:
    return f"{x:g}" if abs(x) < 1e6 else f"{x:.3g}"


# ------------------------------------------------------------------------------------------ orientation
def orientation_warnings(volume: Volume) -> list[str]:
    """Up-down, left-right and front-back flips judged from the anatomy of a CT (in HU) of the torso."""
    d, spacing = coarse_canonical(volume)
    if min(d.shape) < 3:
        return []
    tissue, inside = _body(d)
    if not inside.any():
        return []
    mid = _midline(d, inside)
    return spine_warning(d, tissue, mid, spacing) + _liver_warnings(d, inside, _lungs(d, inside, spacing), mid,
                                                                    spacing)


def coarse_canonical(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The image in RAS axis order on a grid of about GRID_MM (float32), and that grid's voxel size (mm)."""
    canon = to_canonical(Volume(np.asarray(volume.data), volume.affine))
    zooms = np.asarray(canon.zooms, dtype=np.float64)
    shape = np.asarray(canon.shape[:3])
    target = GRID_MM
    while True:
        step = np.maximum(1, np.round(target / zooms)).astype(int)
        if np.prod(np.ceil(shape / step)) <= MAX_VOXELS:
            break
        target *= 1.25
    data = canon.data[::step[0], ::step[1], ::step[2]]
    return np.asarray(data, dtype=np.float32), zooms * step


def _body(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The patient (largest component denser than lung, table and foam opened away) and, slice by slice,
    everything it encloses (lungs, bowel gas)."""
    tissue = ndi.binary_opening(d > TISSUE_MIN, iterations=2)
    lab, n = ndi.label(tissue)
    if n == 0:
        return tissue, tissue
    tissue = lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
    inside = np.stack([ndi.binary_fill_holes(tissue[:, :, k]) for k in range(d.shape[2])], axis=2)
    return tissue, inside


def _midline(d: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """x of the body's midline in each slice: the median x of the bone in the central 40 % of the body's
    width (spine and sternum; robust to an arm on one side), else the middle of the body."""
    mid = np.full(d.shape[2], np.nan)
    for k in range(d.shape[2]):
        xs = np.flatnonzero(inside[:, :, k].any(1))
        if xs.size == 0:
            continue
        centre, half = (xs[0] + xs[-1]) / 2, 0.2 * (xs[-1] - xs[0])
        lo, hi = int(np.floor(centre - half)), int(np.ceil(centre + half)) + 1
        bx = np.nonzero((d[lo:hi, :, k] > BONE_MIN) & inside[lo:hi, :, k])[0]
        mid[k] = lo + float(np.median(bx)) if bx.size >= 3 else centre
    return mid


def spine_warning(d: np.ndarray, tissue: np.ndarray, mid: np.ndarray, spacing: np.ndarray) -> list[str]:
    """Front-back: in torso slices the midline bone (spine, not the thinner sternum) is in the posterior half.

    Solid bright blobs wider than about 15 mm (contrast-filled heart and aorta) are not counted as bone.
    """
    bone = (d > BONE_MIN) & tissue
    bone &= ~ndi.binary_opening(bone, structure=np.ones((5, 5, 1), bool))
    positions = []
    for k in range(d.shape[2]):
        xs = np.flatnonzero(tissue[:, :, k].any(1))
        ys = np.flatnonzero(tissue[:, :, k].any(0))
        if xs.size == 0 or (xs[-1] - xs[0] + 1) * spacing[0] < 200 or np.isnan(mid[k]):  # not a torso
            continue
        half = 0.12 * (xs[-1] - xs[0])
        lo, hi = int(np.floor(mid[k] - half)), int(np.ceil(mid[k] + half)) + 1
        by = np.nonzero(bone[max(lo, 0):hi, :, k])[1]
        if by.size >= 3:
            positions.append((float(np.median(by)) - ys[0]) / max(1, ys[-1] - ys[0]))
    if len(positions) < 5 or float(np.median(positions)) <= 0.6:
        return []
    return [f"the spine lies in the front half of the body (median position {np.median(positions):.2f} from "
            "back to front): the image's front-back (anterior-posterior) axis looks flipped"]


def _lungs(d: np.ndarray, inside: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Lung: inside the body, lung density on a 9 mm average, away from pure gas (bowel gas and its rim),
    in pieces of at least 20 ml (mottled stool is rejected by the slice-share test of the callers)."""
    avg = ndi.uniform_filter(d, 3)
    gas = ndi.binary_dilation(avg < GAS_MAX, iterations=2)
    lung = inside & (avg > LUNG_LOW) & (avg < LUNG_HIGH) & ~gas
    lab, n = ndi.label(lung)
    if n == 0:
        return lung
    ml = np.bincount(lab.ravel())[1:] * float(np.prod(spacing)) / 1000
    return np.isin(lab, np.flatnonzero(ml >= 20) + 1)


def _liver_warnings(d: np.ndarray, inside: np.ndarray, lung: np.ndarray, mid: np.ndarray,
                    spacing: np.ndarray) -> list[str]:
    """Up-down and left-right from where the lungs and the liver (the big one-sided organ mass) lie."""
    ml = float(np.prod(spacing)) / 1000
    area = inside.sum((0, 1)) * ml
    lung_share = lung.sum((0, 1)) * ml / np.maximum(area, ml)
    right, left = _organ_sides(d, inside, mid)
    below_lungs = lung_share < 0.15  # the heart (left) is not counted: only slices outside the thorax
    ex_right = np.where(below_lungs & (right > 1.5 * left), right - left, 0) * ml
    ex_left = np.where(below_lungs & (left > 1.5 * right), left - right, 0) * ml
    warnings = []
    if ex_left.sum() >= 150 and ex_left.sum() >= 3 * ex_right.sum():
        warnings.append(f"the liver appears on the patient's left (an organ mass of {ex_left.sum():.0f} ml "
                        "more on the left than on the right below the lungs): the image's left-right axis looks "
                        "flipped")
    liver = ex_right if ex_right.sum() >= ex_left.sum() else ex_left
    lungs = lung_share >= 0.03
    if liver.sum() >= 150 and lungs.sum() >= 3 and lung.sum() * ml >= 50:
        warnings += _head_foot(lungs, liver >= 0.25 * liver.max(), spacing[2])
    return warnings


def _organ_sides(d: np.ndarray, inside: np.ndarray, mid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxels of solid soft tissue (15 mm average) on the patient's right (x above the midline) and left."""
    avg = ndi.uniform_filter(d, (5, 5, 3))
    organ = inside & (avg > ORGAN_LOW) & (avg < ORGAN_HIGH)
    x = np.arange(d.shape[0])[:, None, None]
    m = np.where(np.isnan(mid), d.shape[0] / 2, mid)[None, None, :]
    return (organ & (x > m + 1)).sum((0, 1)), (organ & (x < m - 1)).sum((0, 1))


def _head_foot(lungs: np.ndarray, liver: np.ndarray, dz: float) -> list[str]:
    """The lungs' lowest and highest slices lie above the liver's; warn only when both lie clearly below."""
    l0, l1 = np.flatnonzero(lungs)[[0, -1]]
    v0, v1 = np.flatnonzero(liver)[[0, -1]]
    low, high = (l0 - v0) * dz, (l1 - v1) * dz
    if low + high > -30 or max(low, high) > 0:
        return []
    return [f"the lungs lie below the liver (their lowest slice {-low:.0f} mm and their highest {-high:.0f} mm "
            "below the liver's): the image's head-foot (superior-inferior) axis looks flipped"]


# ------------------------------------------------------------------------------------------ outputs
def cut_off_warning(labels: np.ndarray, class_map: Mapping[int, str], shown: int = 4) -> list[str]:
    """Classes that reach within BORDER_SLICES of a face of the image: probably cut off by the field of view."""
    labels = np.asarray(labels)
    if labels.ndim != 3 or min(labels.shape) == 0:
        return []
    b = BORDER_SLICES
    faces = [labels[:b], labels[-b:], labels[:, :b], labels[:, -b:], labels[:, :, :b], labels[:, :, -b:]]
    found = set()
    for face in faces:  # bincount: a pass over each face, where np.unique would sort it
        counts = np.bincount(face.ravel()) if face.dtype.kind in "ub" else None
        found.update(np.flatnonzero(counts).tolist() if counts is not None else np.unique(face).tolist())
    names = [class_map[k] for k in sorted(found) if k in class_map]
    if not names:
        return []
    listed = ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")
    what = f"{len(names)} classes touch" if len(names) > 1 else "1 class touches"
    return [f"{what} the edge of the field of view, probably cut off ({listed}); their masks and statistics "
            "cover only the part inside the image"]
