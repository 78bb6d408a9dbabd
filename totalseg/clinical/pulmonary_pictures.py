"""The pulmonary report's page: a rotating 3-D view of the artery with its five cuts, and each cut over the CT."""
from __future__ import annotations

import numpy as np

from totalseg.clinical.aorta_pictures import FRAMES, LANDMARK_COLOURS, STEP_DEG, cut_picture, with_picture

PAGE_W, PAGE_H = 900, 980
PREVIEW_BOX = (8, 100, 584, 584)


def _page(result: dict, cuts: dict, generated: str) -> np.ndarray:
    from totalseg.clinical.aorta_pictures import _landmark_rows
    from totalseg.clinical.common import FOOTER_LINES, PageLayout, draw_footer, draw_header

    page = PageLayout(PAGE_H, PAGE_W)
    y = draw_header(page, "Pulmonary Report", result["metadata"].get("version", ""), generated)
    page.text(300, y, "Overview", 16, ha="center")
    page.text(750, y, "Landmarks", 16, ha="center")
    for k, (number, m) in enumerate(result["landmarks"].items()):
        _landmark_rows(page, y + 24 + 108 * k, number, {**m, "area_fl": None}, cuts.get(number))
    draw_footer(page, FOOTER_LINES)
    return page.rgb()


def report_pages(result: dict, context: dict):
    """The report as an RGB NIfTI: one page per frame of the rotating view (24 pages)."""
    from totalseg.clinical.common import generated_now, pages_to_nifti
    from totalseg.clinical.render3d import rotating_views

    marks = context["marks"]
    nothing = np.zeros(context["artery"].shape, dtype=np.uint8)
    cuts = {str(n): cut_picture(m, context["ct_img"], nothing, context["affine"], context["max_diameter"])
            for n, m in marks.items() if not m["empty"]}
    layers = [(context["artery"], (.7, .7, .7), .3)]
    layers += [(m["roi"], LANDMARK_COLOURS[n - 1], 1.0) for n, m in marks.items() if not m["empty"]]
    frames = rotating_views(layers, context["spacing"], size=(584, 584), frames=FRAMES, step_deg=STEP_DEG)
    base = _page(result, cuts, generated_now())
    # last frame first along z, as the official report files
    return pages_to_nifti([with_picture(base, frame, PREVIEW_BOX) for frame in frames][::-1])
