"""Gallery tiles: a coronal and an axial slice through the labelled body, labels in the label-table colours.

Slices are taken on a copy reoriented to RAS and resampled (nearest voxel) to square pixels, so every tile
shows anatomy the same way: coronal with the head up, axial with anterior up, both with the patient's right
on the left of the picture (radiological convention).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from totalseg.prepare.orient import ras_array
from totalseg.write.atomic import write_atomic
from totalseg.write.preview import label_colour

TILE_WIDTH, TILE_HEIGHT = 480, 240  # at most, in pixels: both panels share one scale (pixels per mm)
LABEL_ALPHA = 0.55
CT_WINDOW = (-160.0, 240.0)  # soft-tissue window (level 40, width 400)


def window(image: np.ndarray, modality: str) -> np.ndarray:
    """Grey values 0..255: the soft-tissue window for CT, the 1st..99th percentile for MR."""
    if modality == "CT":
        lo, hi = CT_WINDOW
    else:
        lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    scaled = (np.asarray(image, dtype=np.float32) - lo) / max(float(hi - lo), 1e-6)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def _resample(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """``plane`` resampled (nearest voxel) to ``height`` x ``width`` pixels."""
    r = np.minimum((np.arange(height) + 0.5) * plane.shape[0] / height, plane.shape[0] - 1).astype(int)
    c = np.minimum((np.arange(width) + 0.5) * plane.shape[1] / width, plane.shape[1] - 1).astype(int)
    return plane[np.ix_(r, c)]


def _colour_table(top: int) -> np.ndarray:
    table = np.zeros((top + 1, 3), dtype=np.float32)
    for key in range(1, top + 1):
        table[key] = label_colour(key)
    return table


def _overlay(grey: np.ndarray, labels: np.ndarray, table: np.ndarray) -> np.ndarray:
    rgb = np.repeat(grey[..., None].astype(np.float32), 3, axis=2)
    inside = labels > 0
    rgb[inside] = (1 - LABEL_ALPHA) * rgb[inside] + LABEL_ALPHA * table[labels[inside]]
    return np.clip(rgb, 0, 255).astype(np.uint8)


def render_tile(image: np.ndarray, labels: np.ndarray, affine: np.ndarray, modality: str) -> np.ndarray:
    """RGB uint8 picture: coronal and axial slice through the labels' centre, side by side, in mm scale."""
    img, spacing = ras_array(np.asarray(image), affine)
    lab, _ = ras_array(np.asarray(labels), affine)
    present = np.argwhere(lab[::2, ::2, ::2] > 0)  # a thinned grid is plenty to place the slices
    centre = (present.mean(axis=0) * 2).astype(int) if present.size else np.array(lab.shape) // 2
    centre = np.minimum(centre, np.array(lab.shape) - 1)
    grey = window(img, modality)
    table = _colour_table(int(lab.max()) if lab.size else 0)
    extent = np.array(lab.shape) * spacing  # mm along x, y, z
    scale = min(TILE_WIDTH / (2 * extent[0]), TILE_HEIGHT / max(extent[1], extent[2]))  # pixels per mm
    # RAS arrays: +x is the patient's right. Coronal: rows superior..inferior, columns right..left (x falling);
    # axial: rows anterior..posterior.
    panels = []
    for index, rows_mm in ((np.s_[:, centre[1], :], extent[2]), (np.s_[:, :, centre[2]], extent[1])):
        size = (max(int(round(rows_mm * scale)), 1), max(int(round(extent[0] * scale)), 1))
        plane_grey, plane_labels = (_resample(a[index].T[::-1, ::-1], *size) for a in (grey, lab))
        panels.append(_overlay(plane_grey, plane_labels, table))
    height = max(p.shape[0] for p in panels)
    padded = []
    for panel in panels:  # the shorter panel centred
        top = (height - panel.shape[0]) // 2
        padded.append(np.pad(panel, ((top, height - panel.shape[0] - top), (0, 0), (0, 0))))
    panels = padded
    gap = np.zeros((height, 3, 3), dtype=np.uint8)
    return np.concatenate([panels[0], gap, panels[1]], axis=1)


def write_png(rgb: np.ndarray, path: Path) -> None:
    """Save an RGB uint8 array as PNG, atomically (Pillow comes with highdicom, a dependency)."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(Path(path), lambda tmp: picture.save(tmp, format="PNG", optimize=True))
