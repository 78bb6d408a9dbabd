"""Aortic diameters at the eleven standard landmarks and per-section length, diameter and volume.

Input: the total-task masks (aorta, its branches, vertebra T12) and the detail masks (annulus,
sinotubular junction, true/false lumen) of one CT. Everything is measured on a 0.8 mm grid around the
aorta: a centerline from annulus to abdomen, landmarks placed along it from the branch points, a
plane cut perpendicular to it at each landmark, the cut laid flat and measured (area, major and
perpendicular diameter, true and false lumen). Numbers and JSON keys are the official report's
(TotalSegmentator 2.18.0, report version 0.1.2): areas in cm², diameters, lengths in cm, volumes in ml.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
from scipy import ndimage

from totalseg.clinical import centerline as cl
from totalseg.clinical import planes
from totalseg.clinical.flatten import flatten
from totalseg.clinical.grid import crop_to_masks, drop_small_blobs, largest_blob, load_on, to_spacing

VERSION = "0.1.2"
GRID_MM = 0.8

# key: (mask file stem, folder: "totalseg" = -rt, "details" = -rd)
STRUCTURES = {
    "brachio": ("brachiocephalic_trunk", "totalseg"),
    "subclavian": ("subclavian_artery_left", "totalseg"),
    "celiac": ("celiac_trunk", "totalseg"),
    "T12": ("vertebrae_T12", "totalseg"),
    "sinotub_junc": ("sinotubular_junction", "details"),
    "iliac": ("iliac_artery_right", "totalseg"),
}
LANDMARKS = {  # number: (name, the structures it needs)
    1: ("annulus", ("annulus",)),
    2: ("sinuses of valsalva", ("annulus", "sinotub_junc")),
    3: ("sinotub. junc.", ("sinotub_junc",)),
    4: ("mid asc. aorta", ("sinotub_junc", "brachio")),
    5: ("distal asc. aorta", ("brachio",)),
    6: ("mid aortic arch", ("brachio", "subclavian")),
    7: ("proximal desc. aorta", ("subclavian",)),
    8: ("mid desc. aorta", ("subclavian", "T12")),
    9: ("desc. aorta (T12)", ("T12",)),
    10: ("abd. aorta (celiac artery)", ("celiac",)),
    11: ("abd. aorta (bifurcation)", ("iliac",)),
}
SECTIONS = {"aorta_ascending": (1, 5), "aorta_arch": (5, 7), "aorta_descending": (7, 9),
            "aorta_abdominal": (9, 11), "aorta_total": (1, 11)}
VESSELS = ("brachiocephalic_trunk", "subclavian_artery_left", "common_carotid_artery_left", "renal_arteries",
           "celiac_trunk", "superior_mesenteric_artery", "iliac_artery_left", "iliac_artery_right")
EMPTY_LANDMARK = ("area", "area_fl", "area_tl", "diameter", "diameter_fl", "diameter_tl", "diameter_pd",
                  "diameter_fl_pd", "diameter_tl_pd", "start", "end", "start_pd", "end_pd")
EMPTY_SECTION = ("length", "max_diameter", "max_diameter_perpendicular", "volume", "volume_true_lumen",
                 "volume_false_lumen")

Log = Callable[[str], None]


def measuring_grid(annulus_path: Path, vessel_path: Path, log: Log) -> nib.Nifti1Image:
    """The annulus mask cut to the vessel's box + 20 mm and zoomed to 0.8 mm: the grid of all measurements."""
    annulus = nib.as_closest_canonical(nib.load(annulus_path))
    if annulus.affine[:3, :3].min() < 0:
        log("WARNING: Affine contains negative values!")
    vessel = nib.as_closest_canonical(nib.load(vessel_path))
    vessel = nib.Nifti1Image(largest_blob(vessel.get_fdata(dtype=np.float32)), vessel.affine)
    annulus = crop_to_masks(annulus, [vessel], [20, 20, 20], dtype=np.uint8)
    return to_spacing(annulus, GRID_MM, order=0)


def _lumens(details: Path, aorta: np.ndarray, grid, cache, phase: str, skip_dissection: bool, log: Log):
    """True and false lumen on the grid, or the aorta and nothing when they cannot or must not be used."""
    true_path = details / "aorta_true_lumen.nii.gz"
    if not true_path.exists():
        log("WARNING: No true/false lumen found! Using aorta + empty array instead.")
    elif skip_dissection:
        log("WARNING: skip_dissection=True! Using aorta + empty array instead.")
    elif phase == "native":
        log("WARNING: contrast phase is native. Not using true/false lumen segmentation!")
    else:
        _, true = load_on(true_path, grid, 3, True, cache)
        _, false = load_on(details / "aorta_false_lumen.nii.gz", grid, 3, True, cache)
        return true, false
    return aorta.copy(), np.zeros_like(aorta)


def load_masks(ct_path: Path, totalseg: Path, details: Path, aorta_fn: str, annulus_fn: str, cache: Path,
               phase: str, skip_dissection: bool, log: Log, debug: bool = False) -> dict:
    """Every mask of the report on the measuring grid (and the CT, for pictures)."""
    grid = measuring_grid(details / annulus_fn, totalseg / aorta_fn, log)
    annulus = grid.get_fdata(dtype=np.float32)
    annulus_volume = annulus.sum() * np.prod(grid.header.get_zooms())
    if annulus_volume < 200:
        log("WARNING: Annulus is empty!")
    if debug:
        nib.save(grid, cache / "annulus.nii.gz")
    ct_img, _ = load_on(ct_path, grid, 3, False, cache)
    aorta_img, aorta = load_on(totalseg / aorta_fn, grid, 0, True, cache)
    aorta_totalseg = ndimage.binary_fill_holes(aorta).astype(np.uint8)
    true, false = _lumens(details, aorta, grid, cache, phase, skip_dissection, log)
    false = drop_small_blobs(false, 20)
    # In place on purpose: aorta_img shares this array, so its sections include both lumens (as officially).
    aorta[true > 0.5] = 1
    aorta[false > 0.5] = 1
    aorta = ndimage.binary_fill_holes(aorta).astype(np.uint8)
    true = aorta.copy()
    true[false > 0.5] = 0
    structures = {}
    for key, (stem, folder) in STRUCTURES.items():
        _, data = load_on((details if folder == "details" else totalseg) / f"{stem}.nii.gz", grid, 0, True, cache)
        if data.sum() == 0:
            log(f"WARNING: {key} is empty!")
        structures[key] = {"data": data, "empty": False}
    return {"grid": grid, "affine": grid.affine, "spacing": grid.header.get_zooms(), "ct_img": ct_img,
            "annulus": ndimage.binary_closing(annulus, iterations=1), "annulus_volume": annulus_volume,
            "aorta_img": aorta_img, "aorta": aorta, "aorta_totalseg": aorta_totalseg, "true_lumen": true,
            "false_lumen": false, "structures": structures}


def vessel_union(totalseg: Path, grid, cache: Path) -> np.ndarray:
    """The aorta's branches (for the 3-D picture) on the grid."""
    union = np.zeros(grid.shape, dtype=np.uint8)
    for stem in VESSELS:
        _, data = load_on(totalseg / f"{stem}.nii.gz", grid, 0, True, cache)
        union[data > 0.5] = 1
    return union


def trace_centerline(aorta: np.ndarray, annulus: np.ndarray, spacing, log: Log) -> np.ndarray:
    """The aorta's centerline in grid voxels, from its abdominal end to (just past) the annulus centre."""
    center = planes.center_of(annulus)
    if center is None:
        from totalseg.errors import UserError

        raise UserError("the annulus mask is empty on the aorta's grid; check -an/--annulus_fn and -rd")
    smooth = ndimage.gaussian_filter(ndimage.binary_dilation(aorta, iterations=4).astype(np.float32), sigma=6) > 0.5
    line = cl.longest_path(cl.skeleton(smooth.astype(np.uint8)))
    if line[0][2] > line[-1][2]:
        line = line[::-1]
    line = cl.append_point(line, center)
    longer = cl.extended(line, 1)
    if annulus[tuple(line[-1].astype(int))]:
        log("  New annulus point is in annulus mask!")
        line = longer
    else:
        log("WARNING: New annulus point is not in annulus mask! Skipping the extension.")
    if np.float32(cl.path_length(line, spacing)) < 2:
        log("WARNING: Centerline is very short (<2mm). This may indicate issues with the input data.")
    return line


def _farthest_points(a: np.ndarray, b: np.ndarray):
    """The voxel of ``a`` and the voxel of ``b`` furthest apart (first such pair in scan order)."""
    from scipy.spatial.distance import cdist

    pa, pb = np.argwhere(a), np.argwhere(b)
    best, pair = 0.0, (None, None)
    for start in range(0, len(pa), 1024):
        d = cdist(pa[start:start + 1024], pb)
        k = int(np.argmax(d))
        if d.flat[k] > best:
            i, j = np.unravel_index(k, d.shape)
            best, pair = d.flat[k], (pa[start + i], pb[j])
    return pair


def _contacts(structures: dict, aorta: np.ndarray, spacing, log: Log) -> None:
    """Each structure's contact with the aorta (the mask itself for T12, sinotubular junction and iliac)."""
    for key, s in structures.items():
        if key in ("T12", "sinotub_junc", "iliac"):
            big = s["data"].sum() * np.prod(spacing) >= 200
            s["contact"] = s["data"] if big else np.zeros_like(s["data"])
        else:
            s["contact"] = (ndimage.binary_dilation(s["data"], iterations=1) + aorta) > 1
        if not s["contact"].any():
            log(f"WARNING: {key} is (almost) empty or has no intersection with aorta! Setting to empty.")
            s["empty"] = True


def anchor_structures(structures: dict, aorta: np.ndarray, line: np.ndarray, spacing, log: Log) -> dict:
    """Where each structure meets the centerline: its end point and ``cl_idx`` (or ``empty``)."""
    _contacts(structures, aorta, spacing, log)
    branches = {"brachio": None, "subclavian": None}
    if structures["brachio"]["empty"] or structures["subclavian"]["empty"]:
        structures["brachio"]["empty"] = structures["subclavian"]["empty"] = True
        log("WARNING: Setting subclavian+brachio to empty because one or both are empty.")
    else:  # the two branch points furthest apart: the vessels' origins on the arch
        pair = _farthest_points(structures["brachio"]["contact"], structures["subclavian"]["contact"])
        branches = dict(zip(branches, pair))
    for key, s in structures.items():
        if s["empty"]:
            continue
        if key in ("celiac", "iliac"):  # the contact voxel highest up
            where = np.where(s["contact"] > 0)
            top = np.argmax(where[2])
            end = tuple(w[top] for w in where)
        elif key in branches:
            end = tuple(branches[key])
        else:
            end = tuple(planes.center_of(s["contact"], True))
        if key == "sinotub_junc" and not structures["brachio"]["empty"]:
            part = line[structures["brachio"]["cl_idx"]:]
        elif key == "T12":
            part = cl.closest_section(line, end, 40, spacing[2])
        else:
            part = line
        s["cl_idx"] = cl.index_of(line, cl.closest_point(part, end))
        if s["cl_idx"] is None:
            s["empty"] = True
            log(f"WARNING: Could not map {key} to the centerline. Setting to empty.")
    return structures


def _place(marks: dict, number: int, index, log: Log) -> None:
    if marks[number]["empty"]:
        return
    if index is None:
        marks[number]["empty"] = True
        log(f"WARNING: Could not place landmark {number} on the centerline!")
    else:
        marks[number]["cl_idx"] = int(index)


def place_landmarks(structures: dict, annulus_volume, line: np.ndarray, aorta_img, spacing, log: Log) -> dict:
    """The eleven landmarks as centerline indices (``cl_idx``) or ``empty``."""
    structures = {**structures, "annulus": {"empty": annulus_volume < 200}}
    marks = {}
    for number, (name, needs) in LANDMARKS.items():
        marks[number] = {"empty": any(structures[k]["empty"] for k in needs), "name": name}
        for k in needs:
            if structures[k]["empty"]:
                log(f"WARNING: landmark {number} is empty because {k} is empty!")
    idx = {k: s.get("cl_idx") for k, s in structures.items()}

    def between(a, b, number):
        if not marks[number]["empty"] and not marks[a]["empty"] and not marks[b]["empty"]:
            _place(marks, number, cl.midpoint(line, marks[a]["cl_idx"], marks[b]["cl_idx"]), log)

    _place(marks, 11, cl.walk(line, 0, 20, spacing), log)
    _place(marks, 10, idx["celiac"], log)
    if not marks[9]["empty"]:
        t12 = idx["T12"]
        if not structures["celiac"]["empty"] and t12 < idx["celiac"]:
            log("WARNING: T12 is lower than celiac! Setting to celiac + 10mm.")
            t12 = cl.walk(line, idx["celiac"], 10, spacing)
        _place(marks, 9, t12, log)
    _place(marks, 7, cl.walk(line, idx["subclavian"], -5, spacing), log)
    between(7, 9, 8)
    _place(marks, 5, cl.walk(line, idx["brachio"], 5, spacing), log)
    between(5, 7, 6)
    _place(marks, 3, idx["sinotub_junc"], log)
    between(3, 5, 4)
    _place(marks, 1, len(line) - 1, log)
    if not marks[2]["empty"] and not marks[1]["empty"] and not marks[3]["empty"]:
        _place(marks, 2, _sinus_index(marks, line, aorta_img, spacing, log), log)
    return marks


def _sinus_index(marks: dict, line: np.ndarray, aorta_img, spacing, log: Log) -> int | None:
    """The sinuses of Valsalva: the widest cut between 10 mm past the junction and 10 mm before the annulus."""
    start = cl.walk(line, marks[3]["cl_idx"], 10, spacing)
    end = cl.walk(line, marks[1]["cl_idx"], -10, spacing)
    if start is not None and end is not None and start < end:
        point = widest_point(aorta_img, line[start:end], 80)
        index = cl.index_of(line, point)
        if index is not None:
            return index
        log("WARNING: Sinus centerline section is too short; using its midpoint.")
    else:
        log("WARNING: Distance between annulus sinutub. jun. is too small! "
            "As robust backup take middle as sinuses of valsalva.")
    return cl.midpoint(line, marks[1]["cl_idx"], marks[3]["cl_idx"])


def widest_point(aorta_img, part: np.ndarray, crop_mm: float):
    """The point of the centerline piece ``part`` whose perpendicular cut has the most voxels (None if < 2 points)."""
    if len(part) < 2:
        return None
    areas = {}  # keyed by point: a repeated point keeps its first place and its last area, as officially
    for i, point in enumerate(part):
        _, cut = planes.cut_in_crop(aorta_img, point, cl.direction_at(part, i), crop_mm)
        areas[tuple(point)] = cut.sum()
    return max(areas, key=areas.get)


def landmark_cuts(marks: dict, line: np.ndarray, aorta: np.ndarray, annulus: np.ndarray, spacing, log: Log,
                  erosion: bool = False) -> float:
    """Cut the aorta (the annulus mask at landmark 1) at every landmark; the largest preliminary diameter."""
    for number, mark in marks.items():
        if mark["empty"]:
            mark["diameter_tmp"] = 0
            continue
        point = line[mark["cl_idx"]]
        if mark["name"] == "annulus":
            ring = annulus.astype(np.uint8)
            cut = planes.cut(ring, point, planes.mask_normal(ring)).astype(np.uint8)
            if erosion:
                cut = ndimage.binary_erosion(cut, iterations=1).astype(np.uint8)
        else:
            source = ndimage.binary_erosion(aorta, iterations=1) if erosion else aorta
            cut = planes.cut(source, point, cl.direction_at(line, mark["cl_idx"])).astype(np.uint8)
        mark["roi"] = cut
        major = planes.major_chord(cut)
        if major is None:
            log(f"WARNING: for landmark {number} no diameter was found!")
            mark["diameter_tmp"] = 0
        else:
            mark["diameter_tmp"] = cl.step_length(major[1], major[2], spacing)
    return max(m["diameter_tmp"] for m in marks.values())


def _flat_slice(volume: np.ndarray, z: int) -> np.ndarray:
    return ndimage.binary_fill_holes(ndimage.binary_closing(volume[:, :, z])).astype(np.uint8)


def measure_cut(mark: dict, affine, true: np.ndarray, false: np.ndarray, max_diameter: float) -> dict:
    """Area (cm²), diameters (cm) and end points of one landmark's cut, laid flat; true/false lumen too."""
    roi = mark["roi"]
    lumens = [nib.Nifti1Image(np.logical_and(roi, m).astype(np.uint8), affine) for m in (false, true)]
    flat, flat_false, flat_true, back = flatten(
        nib.Nifti1Image(roi, affine), lumens, max_diameter * 1.4, (np.uint8, np.uint8), (0, 0))
    vols = [img.get_fdata().astype(np.uint8) for img in (flat, flat_false, flat_true)]
    center = planes.center_of(vols[0], True)
    z = vols[0].shape[2] // 2 if center is None else center[2]
    cut, cut_fl, cut_tl = (_flat_slice(v, z) for v in vols)
    px = np.asarray(flat.header.get_zooms())[:2]
    out = {key: (d.sum() * np.prod(px) / 100).round(1) for key, d in (("area", cut), ("area_fl", cut_fl),
                                                                        ("area_tl", cut_tl))}
    major, minor, voxels, world = planes.flat_diameters(cut, px, back, z=z)
    out["diameter"], out["diameter_pd"] = (major / 10).round(1), (minor / 10).round(1)
    out.update(zip(("start", "end", "start_pd", "end_pd"), world or [None] * 4))
    out.update(zip(("start_voxel", "end_voxel", "start_pd_voxel", "end_pd_voxel"), voxels or [None] * 4))
    for suffix, part in (("fl", cut_fl), ("tl", cut_tl)):
        major, minor, _, _ = planes.flat_diameters(part, px, back)
        out[f"diameter_{suffix}"], out[f"diameter_{suffix}_pd"] = (major / 10).round(1), (minor / 10).round(1)
    return out


def measure_landmarks(marks: dict, affine, true, false, max_diameter: float, log: Log) -> None:
    """Fill each landmark with its measurements (None values when it is empty)."""
    for number, mark in marks.items():
        log(f"  Processing landmark {number}")
        if mark["empty"]:
            mark.update(dict.fromkeys(EMPTY_LANDMARK))
        else:
            mark.update(measure_cut(mark, affine, true, false, max_diameter))


def widest_diameter(aorta_img, part: np.ndarray, spacing, crop_mm: float) -> np.float32:
    """The major diameter (mm) of the widest perpendicular cut along ``part`` (0 when under 2 points)."""
    point = widest_point(aorta_img, part, crop_mm)
    index = cl.index_of(part, point)
    if index is None:
        return np.float32(0)
    _, cut = planes.cut_in_crop(aorta_img, part[index], cl.direction_at(part, index), crop_mm)
    return np.float32(planes.diameters(cut, spacing, perpendicular=False)[0])


def section_mask(aorta_img, start: int, end: int, line: np.ndarray, crop_mm: float) -> np.ndarray:
    """The aorta between the cuts at centerline indices ``start`` and ``end`` (the piece around the middle)."""
    aorta = aorta_img.get_fdata().astype(np.uint8)
    if len(line) < 2 or not (0 <= start < len(line) and 0 <= end < len(line)):
        return np.zeros_like(aorta)
    start, end = min(start, end), max(start, end)
    for i in (start, end):
        cube, cut = planes.cut_in_crop(aorta_img, line[i], cl.direction_at(line, i), crop_mm)
        origin = np.rint((np.linalg.inv(aorta_img.affine) @ cube.affine @ np.array([0, 0, 0, 1]))[:3]).astype(int)
        aorta[tuple(slice(o, o + s) for o, s in zip(origin, cut.shape))][cut > 0] = 0
    return planes.closest_blob(aorta, line[cl.midpoint(line, start, end)])


def _r1(value) -> float:
    """A float32 or float64 measurement as the official rounds it, as a clean Python float."""
    return round(float(value), 1)


def measure_sections(marks: dict, data: dict, line: np.ndarray, max_diameter: float, log: Log) -> dict:
    """Length (cm), largest diameter (cm) and volumes (ml) of the aorta between pairs of landmarks."""
    spacing, voxel_ml = data["spacing"], np.prod(data["spacing"])
    stats = {}
    for name, (first, last) in SECTIONS.items():
        log(f"  Processing section: {name}...")
        a, b = marks[first], marks[last]
        if a["empty"] or b["empty"]:
            log(f"WARNING: {name} is empty!")
            stats[name] = dict.fromkeys(EMPTY_SECTION)
            continue
        part = line[b["cl_idx"]:a["cl_idx"]]
        widest = widest_diameter(data["aorta_img"], part, spacing, max_diameter * 1.4)
        if widest > max_diameter:
            log(f"WARNING: max_dia of aorta section {name} is larger than max_dia from landmarks "
                f"({widest:.2f} > {max_diameter:.2f})")
        if name == "aorta_total":
            section = data["aorta_totalseg"]
        else:
            section = section_mask(data["aorta_img"], a["cl_idx"], max(0, b["cl_idx"] - 2), line,
                                   max_diameter * 1.4).astype(np.float64)
        stats[name] = {
            "length": _r1((np.float32(cl.path_length(part, spacing)) / 10).round(1)),
            "max_diameter": round(float(widest) / 10, 1),
            "volume": (section.sum() * voxel_ml / 1000).round(1),
            "volume_true_lumen": ((section * data["true_lumen"]).sum() * voxel_ml / 1000).round(1),
            "volume_false_lumen": ((section * data["false_lumen"]).sum() * voxel_ml / 1000).round(1),
        }
    return stats


def results(marks: dict, sections: dict, metadata: dict) -> dict:
    """The report's JSON: landmarks (numbered, in order), section_stats and metadata."""
    keep_out = {"roi", "cl_idx", "empty", "diameter_tmp"}
    landmarks = {str(n): {k: v for k, v in marks[n].items() if k not in keep_out} for n in sorted(marks)}
    return json_ready({"landmarks": landmarks, "section_stats": sections, "metadata": metadata})


def json_ready(value):
    """Numpy numbers and arrays as JSON-ready Python values."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def measure(ct_path: Path, totalseg: Path, details: Path, metadata: dict, work: Path, log: Log, phase: str,
            aorta_fn: str = "aorta.nii.gz", annulus_fn: str = "annulus_proper.nii.gz", erosion: bool = False,
            skip_dissection: bool = False, debug: bool = False) -> tuple[dict, dict]:
    """The report's JSON and what the pictures need (masks, centerline, landmarks) from the mask folders.

    ``work`` keeps the masks resampled onto the grid (a later run with the same folder reuses them).
    """
    import time

    data = load_masks(ct_path, totalseg, details, aorta_fn, annulus_fn, work, phase, skip_dissection, log, debug)
    started = time.time()
    line = trace_centerline(data["aorta"], data["annulus"], data["spacing"], log)
    log(f"  get_centerline took {time.time() - started:.2f}s")
    structures = anchor_structures(data["structures"], data["aorta"], line, data["spacing"], log)
    marks = place_landmarks(structures, data["annulus_volume"], line, data["aorta_img"], data["spacing"], log)
    max_diameter = landmark_cuts(marks, line, data["aorta"], data["annulus"], data["spacing"], log, erosion)
    measure_landmarks(marks, data["affine"], data["true_lumen"], data["false_lumen"], max_diameter, log)
    sections = measure_sections(marks, data, line, max_diameter, log)
    context = {**data, "line": line, "marks": marks, "max_diameter": max_diameter}
    return results(marks, sections, metadata), context
