"""The aorta report's pictures: the report page (one per frame of the rotating 3-D view), the cut at each
landmark, and the curved planar reformation (CPR) of the aorta along its centerline."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from totalseg.clinical import centerline as cl
from totalseg.clinical.flatten import flatten

FRAMES = 24  # per rotating view, as the official page
STEP_DEG = 18.0  # int(360 / 24 * 1.2), the official turn per frame
PAGE_W, PAGE_H = 900, 1460
CT_WINDOW = (-700, 1000)
LANDMARK_COLOURS = [(0, 1, 0), (1, .27, .18), (0, 0, 1), (.27, 1, .18), (.6, 0, 0), (0, .6, 0), (.27, .18, 1),
                    (.8, .5, 0), (.3, 0, 0), (.5, .5, .5), (.4, 0, .7)]


def _contours(ax, mask: np.ndarray, colour: str, width: float = 2) -> None:
    from skimage import measure

    for c in measure.find_contours(mask.astype(float), 0.5):
        ax.plot(c[:, 1], c[:, 0], color=colour, linewidth=width)


def cut_picture(mark: dict, ct_img, false: np.ndarray, affine, max_diameter: float) -> np.ndarray:
    """The landmark's cut laid flat over the CT: green outline and diameters, red false lumen (RGB)."""
    from totalseg.clinical.common import figure_rgb, pyplot
    from totalseg.clinical.planes import center_of, diameters

    plt = pyplot()
    roi = mark["roi"]
    fl = nib.Nifti1Image(np.logical_and(roi, false).astype(np.uint8), affine)
    flat, flat_ct, flat_fl, _ = flatten(nib.Nifti1Image(roi, affine), [ct_img, fl], max_diameter * 1.4,
                                        (np.int32, np.uint8), (3, 0))
    cut = flat.get_fdata() > 0
    center = center_of(cut, True)
    z = cut.shape[2] // 2 if center is None else center[2]
    cut = ndimage.binary_fill_holes(ndimage.binary_closing(cut[:, :, z]))
    fig = plt.figure(figsize=(2, 2), dpi=75)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(flat_ct.get_fdata()[:, :, z], cmap="gray", origin="lower", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1],
              interpolation="bilinear")
    _contours(ax, cut, "lime")
    _contours(ax, ndimage.binary_fill_holes(flat_fl.get_fdata()[:, :, z] > 0), "red")
    _, _, ends, ends_pd = diameters(cut.astype(np.uint8), (1, 1))
    for pair in (ends, ends_pd):
        if pair is not None:
            ax.plot([pair[0][1], pair[1][1]], [pair[0][0], pair[1][0]], color="lime", linewidth=1)
    ax.set_axis_off()
    rgb = figure_rgb(fig)
    plt.close(fig)
    return rgb


def preview_frames(context: dict, vessels: np.ndarray) -> tuple[list, list]:
    """The two rotating 3-D views: aorta with branches, centerline and landmark cuts; true/false lumen."""
    from totalseg.clinical.render3d import rotating_views

    spacing = context["spacing"]
    line_img = np.zeros(context["aorta"].shape, dtype=np.uint8)
    idx = np.clip(context["line"].astype(int), 0, np.array(line_img.shape) - 1)
    line_img[tuple(idx.T)] = 1
    line_img = ndimage.binary_dilation(line_img, iterations=1)
    layers = [(context["aorta"], (.7, .7, .7), .3), (context["false_lumen"], (1, 0, 0), .1),
              (vessels, (.3, .3, .3), 1.0), (line_img, (1, 0, 0), 1.0, 0)]
    for number, mark in context["marks"].items():
        if not mark["empty"]:
            layers.append((mark["roi"], LANDMARK_COLOURS[number - 1], 1.0))
    overview = rotating_views(layers, spacing, frames=FRAMES, step_deg=STEP_DEG)
    lumens = rotating_views([(context["true_lumen"], (0, 1, 0), 1.0), (context["false_lumen"], (1, 0, 0), 1.0)],
                            spacing, frames=FRAMES, step_deg=STEP_DEG)
    return overview, lumens


PREVIEW_BOX = (8, 100, 584, 760)  # x, y, width, height (px) of the 3-D view on the page


def _page(result: dict, cuts: dict, generated: str) -> np.ndarray:
    """The report page without its 3-D view (pasted in per frame)."""
    from totalseg.clinical.common import FOOTER_LINES, PageLayout, draw_footer, draw_header

    page = PageLayout(PAGE_H, PAGE_W)
    y = draw_header(page, "Aorta Report", result["metadata"].get("version", ""), generated)
    page.text(300, y, "Overview", 16, ha="center")
    ty = y + 800
    for k, head in enumerate(("Section", "Length", "Max. Dia.", "Volume", "Volume FL")):
        page.text(16 + 115 * k, ty, head, 14, weight="bold")
    for row, (name, s) in enumerate(result["section_stats"].items(), start=1):
        cells = (name.replace("_", " "), f"{s['length']} cm", f"{s['max_diameter']} cm", f"{s['volume']} ml",
                 f"{s['volume_false_lumen']} ml")
        for k, cell in enumerate(cells):
            page.text(16 + 115 * k, ty + 34 * row, cell, 13)
    page.text(750, y, "Landmarks", 16, ha="center")
    for k, (number, m) in enumerate(result["landmarks"].items()):
        _landmark_rows(page, y + 24 + 108 * k, number, m, cuts.get(number))
    draw_footer(page, FOOTER_LINES)
    return page.rgb()


def _landmark_rows(page, ly: int, number: str, m: dict, picture) -> None:
    green, red = "#00cc00", "#ff3333"
    if picture is not None:
        page.box(604, ly, 100, 100).imshow(picture)
    page.text(710, ly + 4, f"{number} - {m['name']}", 12, weight="bold")
    if m["area"] is None:
        page.text(710, ly + 26, "not in image", 13)
        return
    page.text(710, ly + 26, f"▧: {m['area']} cm²", 13, colour=green, weight="bold")
    page.text(710, ly + 46, f"⌀: {m['diameter']} x {m['diameter_pd']} cm", 13, colour=green, weight="bold")
    if m["area_fl"]:
        page.text(710, ly + 66, f"▧: {m['area_fl']} cm²", 13, colour=red, weight="bold")
        page.text(710, ly + 86, f"⌀: {m['diameter_fl']} x {m['diameter_fl_pd']} cm", 13, colour=red, weight="bold")


def with_picture(page: np.ndarray, picture: np.ndarray, box=PREVIEW_BOX) -> np.ndarray:
    """``page`` with ``picture`` scaled into ``box`` (x, y, width, height)."""
    from PIL import Image

    x, y, w, h = box
    out = page.copy()
    out[y:y + h, x:x + w] = np.asarray(Image.fromarray(picture).resize((w, h), Image.Resampling.LANCZOS))
    return out


def report_pages(result: dict, context: dict, vessels: np.ndarray, meta: dict, work: Path):
    """The report as an RGB NIfTI: one page per frame of the two rotating views (48 pages)."""
    from totalseg.clinical.common import generated_now, pages_to_nifti

    cuts = {str(n): cut_picture(m, context["ct_img"], context["false_lumen"], context["affine"],
                                context["max_diameter"])
            for n, m in context["marks"].items() if not m["empty"]}
    overview, lumens = preview_frames(context, vessels)
    base = _page(result, cuts, generated_now())
    # last frame first along z, as the official report files
    return pages_to_nifti([with_picture(base, frame) for frame in overview + lumens][::-1])


def _frames_along(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit tangents and two normals along ``points`` (mm), the normals carried along without twisting."""
    tangents = np.gradient(ndimage.gaussian_filter1d(points, 3, axis=0), axis=0)
    tangents /= np.maximum(np.linalg.norm(tangents, axis=1, keepdims=True), 1e-9)
    first = np.cross(tangents[0], [1.0, 0, 0] if abs(tangents[0][0]) < 0.9 else [0, 1.0, 0])
    normals = [first / np.linalg.norm(first)]
    for t in tangents[1:]:
        n = normals[-1] - np.dot(normals[-1], t) * t  # parallel transport: drop the part along the new tangent
        normals.append(n / max(np.linalg.norm(n), 1e-9))
    normals = np.asarray(normals)
    return tangents, normals, np.cross(tangents, normals)


def straightened(context: dict, fast: bool = False) -> dict:
    """The aorta straightened along its centerline (annulus at the top): two perpendicular longitudinal
    CT views with the aorta and false lumen sampled alike, 1 mm per row (0.5 mm across, 1 mm when ``fast``)."""
    affine = context["affine"]
    vox = cl.resampled(context["line"], affine, 1.0)[::-1]
    mm = nib.affines.apply_affine(affine, vox)
    _, normals, binormals = _frames_along(mm)
    half = max(context["max_diameter"] * 1.6, 60) / 2
    step = 1.0 if fast else 0.5
    offsets = np.arange(-half, half + step / 2, step)
    to_vox = np.linalg.inv(affine[:3, :3])
    views = {}
    for name, direction in (("a", normals), ("b", binormals)):
        where = mm[:, None, :] + offsets[None, :, None] * direction[:, None, :]
        coords = (where - affine[:3, 3]) @ to_vox.T
        flat = coords.reshape(-1, 3).T
        shape = where.shape[:2]
        views[name] = {
            "ct": ndimage.map_coordinates(context["ct_img"].get_fdata(), flat, order=1, cval=-1024).reshape(shape),
            "aorta": ndimage.map_coordinates(context["aorta"], flat, order=0).reshape(shape),
            "false": ndimage.map_coordinates(context["false_lumen"].astype(np.uint8), flat, order=0).reshape(shape),
        }
    marks = {n: int(np.argmin(np.linalg.norm(vox - context["line"][m["cl_idx"]], axis=1)))
             for n, m in context["marks"].items() if not m["empty"]}
    width = np.maximum(views["a"]["aorta"].sum(axis=1), views["b"]["aorta"].sum(axis=1)) * step
    return {"views": views, "step": step, "offsets": offsets, "marks": marks, "width_mm": width}


def _cpr_figure(cpr: dict, meta: dict, row: int | None = None):
    """The CPR overview figure: two longitudinal views and the width profile, landmarks numbered."""
    from totalseg.clinical.common import pyplot

    plt = pyplot()
    n = len(cpr["width_mm"])
    fig, axes = plt.subplots(1, 3, figsize=(12, 10), dpi=80, facecolor="black",
                             gridspec_kw={"width_ratios": [1, 1, 0.8]})
    extent = (cpr["offsets"][0], cpr["offsets"][-1], n, 0)
    for ax, key, title in ((axes[0], "a", "CPR 0°"), (axes[1], "b", "CPR 90°")):
        view = cpr["views"][key]
        ax.imshow(view["ct"], cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], extent=extent, aspect="auto")
        ax.contour(cpr["offsets"], np.arange(n) + 0.5, view["aorta"], levels=[0.5], colors="lime", linewidths=1)
        if view["false"].any():
            ax.contour(cpr["offsets"], np.arange(n) + 0.5, view["false"], levels=[0.5], colors="red", linewidths=1)
        ax.set_title(title, color="white")
        ax.set_axis_off()
        for number, r in cpr["marks"].items():
            ax.text(extent[0], r, str(number), color="yellow", fontsize=9, ha="right", va="center")
            ax.axhline(r, color="yellow", linewidth=0.5, xmax=0.08)
        if row is not None:
            ax.axhline(row, color="orange", linewidth=1.5)
    prof = axes[2]
    prof.set_facecolor("black")
    prof.plot(cpr["width_mm"], np.arange(n), color="lime", linewidth=1.5)
    prof.set_ylim(n, 0)
    prof.set_xlabel("aorta width in the two views (mm)", color="white")
    prof.tick_params(colors="white")
    prof.set_title(f"Aorta CPR  {meta.get('version', '')}", color="white")
    if row is not None:
        prof.axhline(row, color="orange", linewidth=1.5)
    return fig


def write_cpr_png(cpr: dict, meta: dict, path: Path) -> None:
    """The CPR overview as PNG (written atomically)."""
    import matplotlib.pyplot as plt

    from totalseg.write.atomic import write_atomic

    fig = _cpr_figure(cpr, meta)
    write_atomic(Path(path), lambda tmp: fig.savefig(tmp, format="png", facecolor="black"))
    plt.close(fig)


def cpr_animation(cpr: dict, meta: dict, frames: int = 48):
    """The CPR overview as an RGB NIfTI of ``frames`` pages, an orange line moving down the aorta."""
    import matplotlib.pyplot as plt

    from totalseg.clinical.common import figure_rgb, pages_to_nifti

    n = len(cpr["width_mm"])
    pages = []
    for row in np.linspace(0, n - 1, frames):
        fig = _cpr_figure(cpr, meta, row=float(row))
        pages.append(figure_rgb(fig))
        plt.close(fig)
    return pages_to_nifti(pages[::-1])  # last frame first along z, as officially
