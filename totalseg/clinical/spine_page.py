"""The spine report's pictures: the combined sagittal view, the per-vertebra panels and the report page.

Drawn with matplotlib (imported only here, through :func:`totalseg.clinical.common.pyplot`). The sagittal
view shows each measured vertebra on its own chosen slice: the CT inside the vertebra, its outline (green), the
three height lines (red) and ``<name>: anterior - middle - posterior (x: <slice>, HU: <median>)`` beside it,
yellow when the heights differ by 20 % or more (or the body is under 2 ml), as the official preview.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from totalseg.clinical import common
from totalseg.clinical.spine import POSITION_KEYS, Vertebra, height_difference_percent, is_fracture

HU_WINDOW = (-500, 1500)
PADDING_MM = 40  # around the vertebrae in the combined view
TEXT_OFFSET_MM = -20  # label position behind the body centre
CROP_MM = 80  # side of a per-vertebra panel
SMALL_BODY_ML = 2.0  # bodies below this are flagged in yellow whatever their heights
PICTURE_DPI = 150  # the official 600 dpi gives 5000 x 7000 px, scaled down to 570 px on the page anyway
NO_MEASUREMENTS = "No vertebrae measurements available"


def _slice_mask(labels: np.ndarray, v: Vertebra) -> np.ndarray:
    return labels[v.x_slice] == v.label


def _bounds(labels: np.ndarray, vertebrae: Sequence[Vertebra], spacing) -> tuple[int, int, int, int] | None:
    """(y0, y1, z0, z1) around the vertebrae on their slices, 40 mm of padding."""
    ys, zs = [], []
    for v in vertebrae:
        y, z = np.nonzero(_slice_mask(labels, v))
        ys.extend(y)
        zs.extend(z)
    if not ys:
        return None
    py, pz = int(round(PADDING_MM / spacing[1])), int(round(PADDING_MM / spacing[2]))
    return (max(0, min(ys) - py), min(labels.shape[1], max(ys) + py),
            max(0, min(zs) - pz), min(labels.shape[2], max(zs) + pz))


def _label_text(v: Vertebra, n_x: int, lumbar_view: bool) -> tuple[str, str]:
    """The text beside a vertebra and its colour."""
    heights = [f"{v.heights[k]['height_mm']:.1f}" if v.heights[k]["height_start"] else "0.0" for k in POSITION_KEYS]
    short = v.name.replace("vertebrae_", "")
    text = f"{short}: {' - '.join(reversed(heights))}"
    flagged = is_fracture(v.heights) or v.volume_mm3 / 1000.0 < SMALL_BODY_ML
    if flagged:
        text += f" (-{height_difference_percent(v.heights)}%)"
    gap = "\n" if lumbar_view else " "
    text += f"{gap}(x: {n_x - 1 - v.x_slice}, HU: {int(round(v.median_hu))})"
    return text, "yellow" if flagged else "white"


def _draw_heights(ax, v: Vertebra, y0: int, z0: int, values: bool = False) -> None:
    """The three height lines (red); with ``values`` each line's length in mm above its upper end."""
    fracture = is_fracture(v.heights)
    for key in POSITION_KEYS:
        m = v.heights[key]
        if not (m["height_start"] and m["height_end"]):
            continue
        ys = [m["height_start"][0] - y0, m["height_end"][0] - y0]
        zs = [m["height_start"][1] - z0, m["height_end"][1] - z0]
        ax.plot(ys, zs, color="red", linewidth=2, alpha=0.8)
        if values:
            text = f"{m['height_mm']:.1f}" + (f" (-{height_difference_percent(v.heights)}%)" if fracture else "")
            ax.text(sum(ys) / 2, max(zs) + 3, text, color="orange" if fracture else "red", fontsize=12,
                    fontweight="bold", ha="center", va="bottom",
                    bbox=dict(boxstyle="round,pad=0.2", facecolor="white", alpha=0.8))


def _outline(ax, mask: np.ndarray) -> None:
    if mask.any():
        ax.contour(mask.T.astype(float), levels=[0.5], colors="green", linewidths=1.5, alpha=0.8)


def combined_picture(ct: np.ndarray, labels: np.ndarray, vertebrae: Sequence[Vertebra], spacing,
                     path: Path, spine_range: str = "all", dpi: int = PICTURE_DPI) -> bool:
    """All vertebrae on one sagittal picture (PNG); False when there is nothing to draw."""
    bounds = _bounds(labels, vertebrae, spacing)
    if bounds is None:
        return False
    y0, y1, z0, z1 = bounds
    picture = np.full((y1 - y0, z1 - z0), -1000.0)
    filled = np.zeros(picture.shape, dtype=bool)
    for v in vertebrae:  # each vertebra from its own slice; the first one drawn keeps a pixel
        new = _slice_mask(labels, v)[y0:y1, z0:z1] & ~filled
        picture[new] = ct[v.x_slice, y0:y1, z0:z1][new]
        filled |= new
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(8, 12), facecolor="black")
    ax.set_facecolor("black")
    ax.imshow(picture.T, cmap="gray", origin="lower", aspect=spacing[2] / spacing[1], vmin=HU_WINDOW[0],
              vmax=HU_WINDOW[1])
    lumbar_view = spine_range == "lumbar"
    for v in vertebrae:
        _outline(ax, _slice_mask(labels, v)[y0:y1, z0:z1])
        _draw_heights(ax, v, y0, z0)
        text, colour = _label_text(v, ct.shape[0], lumbar_view)
        ax.text(v.centroid[1] - y0 + TEXT_OFFSET_MM / spacing[1], v.centroid[2] - z0, text, color=colour,
                fontsize=13 if lumbar_view else 9, fontweight="bold", ha="left", va="center",
                bbox=dict(boxstyle="round,pad=0.3", facecolor="black", alpha=0.8))
    _finish(plt, fig, [ax], path, dpi, facecolor="black")
    return True


def vertebra_panels(ct: np.ndarray, labels: np.ndarray, vertebrae: Sequence[Vertebra], spacing,
                    path: Path, dpi: int = PICTURE_DPI) -> None:
    """One 80 mm sagittal panel per vertebra with its outline and heights (the debug preview, PNG)."""
    plt = common.pyplot()
    cols = min(4, len(vertebrae))
    rows = (len(vertebrae) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    axes = axes.ravel()
    half = int(round(CROP_MM / np.mean(spacing))) // 2
    for ax, v in zip(axes, vertebrae):
        cy, cz = int(round(v.centroid[1])), int(round(v.centroid[2]))
        y0, y1 = max(0, cy - half), min(ct.shape[1], cy + half)
        z0, z1 = max(0, cz - half), min(ct.shape[2], cz + half)
        ax.imshow(ct[v.x_slice, y0:y1, z0:z1].T, cmap="gray", origin="lower", aspect=spacing[2] / spacing[1],
                  vmin=HU_WINDOW[0], vmax=HU_WINDOW[1])
        _outline(ax, _slice_mask(labels, v)[y0:y1, z0:z1])
        _draw_heights(ax, v, y0, z0, values=True)
        ax.set_title(f"{v.name}\nSagittal slice x={ct.shape[0] - 1 - v.x_slice}", fontsize=10)
    for ax in axes[len(vertebrae):]:
        ax.set_visible(False)
    _finish(plt, fig, axes[:len(vertebrae)], path, dpi)


def empty_picture(path: Path, message: str = NO_MEASUREMENTS, dpi: int = PICTURE_DPI) -> None:
    """A black picture saying that nothing could be measured."""
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(8, 12), facecolor="black")
    ax.set_facecolor("black")
    ax.text(0.5, 0.5, message, color="white", fontsize=18, ha="center", va="center", wrap=True,
            transform=ax.transAxes)
    ax.set_axis_off()
    _finish(plt, fig, [], path, dpi, facecolor="black")


def _finish(plt, fig, axes, path: Path, dpi: int, **save) -> None:
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.invert_xaxis()  # the patient faces left
    try:
        fig.tight_layout()
        fig.savefig(path, dpi=dpi, bbox_inches="tight", **save)
    finally:
        plt.close(fig)


def status_lines(has_measurements: bool, high: Sequence[str], low: Sequence[str]) -> list[str]:
    """The verdict shown in the page's status box."""
    if not has_measurements:
        return ["No vertebrae measurements available.", "Please check the segmentation output."]
    lines = []
    if high:
        lines += ["Lumbar spine compression fracture in:", ", ".join(high)]
    if low:
        lines += ([""] if lines else []) + ["Lumbar spine low attenuation in:", ", ".join(low)]
    return lines or ["Lumbar spine contains no fracture."]


def report_page(picture: Path, metadata: Mapping[str, Any], phase: str, has_measurements: bool,
                high: Sequence[str], low: Sequence[str], generated: str) -> np.ndarray:
    """The spine report page (RGB pixels, 1200 px wide): details, verdict and the sagittal picture."""
    from matplotlib.image import imread

    image = imread(str(picture))
    column = 572
    pic_h = int(round(column * image.shape[0] / image.shape[1]))
    box_h = max(pic_h, 400)  # room for the verdict beside a wide, flat picture
    top = 184
    page = common.PageLayout(height=top + box_h + 16 + 8 + 66)
    y = common.draw_header(page, "Spine report", str(metadata.get("version", "")), generated)
    common.draw_details(page, y, {"Sex": metadata.get("PatientSex", ""), "Age": metadata.get("PatientAge", ""),
                                  "Study": metadata.get("StudyDescription", ""),
                                  "Study Date": common.to_date(metadata.get("StudyDate")),
                                  "Contrast Phase": phase.replace("_", " ")})
    page.panel(8, top, page.width - 16, box_h + 16, common.PANEL_BG)
    ok = has_measurements and not high and not low
    page.panel(24, top + 24, column - 16, box_h - 32, common.OK_COLOUR if ok else common.WARN_COLOUR, rounded=8)
    # The large faint tick or cross behind the verdict, below its text.
    page.text(24 + (column - 16) / 2, top + 24 + (box_h - 32) * 0.6, "\u2713" if ok else "X",
              min(360, 0.6 * (box_h - 32)), weight="bold", ha="center", va="center", alpha=0.25)
    for k, line in enumerate(status_lines(has_measurements, high, low)):
        page.text(24 + (column - 16) / 2, top + 56 + 28 * k, line, 21, weight="bold", ha="center")
    ax = page.box(page.width - 24 - column, top + 8 + (box_h - pic_h) // 2, column, pic_h)
    ax.imshow(image, interpolation="antialiased")
    common.draw_footer(page, common.FOOTER_LINES)
    return page.rgb()
