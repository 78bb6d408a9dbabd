"""One case viewer page: statistics, class list data, window presets, volumes and the HTML, into a folder."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from totalseg.report.case import Case
from totalseg.report.export import PREVIEW_VOXELS, export_volumes
from totalseg.report.pages import case_page
from totalseg.write.atomic import write_atomic
from totalseg.write.preview import label_colour
from totalseg.write.statistics import compute_statistics

# (statistics key, column title, decimals) of the statistics table; intensities are in the image's unit.
STATS_COLUMNS = (("volume_ml", "volume ml", 1), ("intensity", "mean", 1), ("intensity_std", "std", 1),
                 ("intensity_min", "min", 0), ("intensity_max", "max", 0), ("n_voxels", "voxels", 0),
                 ("incomplete", "cut", 0))
CT_WINDOWS = (("soft tissue", -160, 240), ("lung", -1350, 150), ("bone", -500, 1300), ("brain", 0, 80))


def case_statistics(case: Case) -> dict[str, dict]:
    """Statistics of every class with the ``-sx`` extras, of the whole masks (also those cut by the field of
    view: the report marks them instead of zeroing them as statistics.json does by default)."""
    stats = compute_statistics(case.labels, case.image, case.zooms, case.classes, exclude_border=False, extra=True)
    for entry in stats.values():
        entry["volume_ml"] = round(entry["volume"] / 1000.0, 3)
    return stats


def _inside_mm(case: Case, key: int, entry: dict) -> list[float] | None:
    """World position (RAS mm) of the class's voxel nearest to its centroid: a point that lies in the mask
    even for curved ones (colon, ribs), where the viewer jumps to."""
    box = entry.get("bbox_vox")
    if not box:
        return None
    sl = tuple(slice(a, b + 1) for a, b in box)
    inside = np.argwhere(case.labels[sl] == key) + np.array([a for a, _ in box])
    voxel = inside[np.argmin(((inside - np.array(entry["centroid_vox"])) ** 2).sum(axis=1))]
    return [round(float(v), 3) for v in (case.affine @ np.array([*voxel, 1.0]))[:3]]


def windows(case: Case, not_hu: bool) -> list[dict]:
    """Window presets: the CT ones (HU), and the image's 1st..99th percentile (first when not in HU or MR)."""
    sample = np.asarray(case.image[::2, ::2, ::2], dtype=np.float32)
    lo, hi = (np.percentile(sample, [1, 99]) if sample.size else (0.0, 1.0))
    auto = {"name": "auto", "min": round(float(lo), 1), "max": round(float(max(hi, lo + 1)), 1)}
    presets = [{"name": n, "min": a, "max": b} for n, a, b in CT_WINDOWS] if case.modality == "CT" else []
    return [auto, *presets] if not_hu or not presets else [*presets, auto]


def class_entries(case: Case, stats: dict[str, dict]) -> list[dict]:
    """The class list: id, name, label-table colour, voxel count, cut flag and jump position."""
    out = []
    for key, name in sorted(case.classes.items()):
        entry = stats.get(name, {})
        out.append({"id": int(key), "name": name, "rgb": list(label_colour(key)), "voxels": entry.get("n_voxels", 0),
                    "incomplete": bool(entry.get("incomplete")), "inside_mm": _inside_mm(case, key, entry)})
    return out


def write_case_page(folder: Path, case: Case, stats: dict[str, dict], *, assets: str, title: str,
                    subtitle: str = "", flags: Sequence[dict] = (), back: str | None = None,
                    preview_voxels: int = PREVIEW_VOXELS, full: bool = True) -> None:
    """Write ``folder/index.html`` and ``folder/data/*.js`` for ``case`` (assets at relative path ``assets``);
    ``full``: also store the full grid when the preview grid is a subsample."""
    folder.mkdir(parents=True, exist_ok=True)
    grids = export_volumes(folder, case.image, case.labels, case.affine, preview_voxels, full)
    classes = class_entries(case, stats)
    present = [c for c in classes if c["voxels"]]
    meta = {
        "title": title, "subtitle": subtitle, "modality": case.modality, "flags": list(flags), "back": back,
        "classes": classes, "stats": stats, "stats_columns": [list(c) for c in STATS_COLUMNS],
        "windows": windows(case, any(f["kind"] == "not_hu" for f in flags)),
        "focus": max(present, key=lambda c: c["voxels"])["id"] if present else None,
        "shape": list(case.labels.shape), "spacing": [round(z, 4) for z in case.zooms], "grids": grids,
    }
    page = case_page(meta, assets, grids["preview"]["scripts"])
    write_atomic(folder / "index.html", lambda tmp: tmp.write_text(page, encoding="utf-8"))
