"""The Evans index of a head CT: frontal-horn width over inner skull width, with brain and ventricle volumes.

As the official ``totalseg_evans_index`` (2.18.0): the brain, skull and ventricle masks are brought to the
closest canonical orientation and 1 mm voxels, the brain-extracted CT is registered rigidly (antspyx,
mattes metric, in voxel coordinates) to a 1 mm CT brain atlas shipped with this package, and the masks are
moved onto the atlas grid. There, on axial slices, the widest left-right extent of the frontal horns
(ventricle_parts labels 1 and 6) is found; the inner skull width is the widest extent of the brain
(dilated by 2 voxels into the cranial cavity, minus the skull) on that same slice. Widths are the distance
between the first and the last voxel of a row (voxels, i.e. mm on the atlas grid).

A CT that is not at 1 mm is resampled and cast to uint8 before registration, as the official does (values
wrap modulo 256); kept so that the transforms are the official ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from scipy import ndimage

from totalseg.errors import UserError
from totalseg.volume import Volume

# ventricle_parts labels of the frontal horns (left, right).
FRONTAL_HORNS = (1, 6)
# Brain blobs up to this size and frontal-horn blobs up to this size (voxels) are noise.
MIN_BRAIN_BLOB = 200
MIN_HORN_BLOB = 10
ANTSPYX_HINT = "the Evans index needs antspyx for the registration; install it with: pip install 'totalseg[evans]'"


@dataclass(frozen=True)
class Width:
    """The widest row of a mask along x: its length (voxels) and its two end voxels (x, y, z)."""

    length: int
    start: tuple[int, int, int]
    end: tuple[int, int, int]


def atlas() -> Volume:
    """The shipped 1 mm CT brain atlas (from TotalSegmentator, Apache-2.0)."""
    import nibabel as nib

    ref = resources.files("totalseg.clinical").joinpath("resources/ct_brain_atlas_1mm.nii.gz")
    with resources.as_file(ref) as path:
        img = nib.load(path)
        return Volume(np.asarray(img.get_fdata()), img.affine)


def widest_row(mask: np.ndarray) -> Width | None:
    """The longest x extent (last minus first voxel) over all rows (y) and axial slices (z), or None if empty.

    Ties go to the lowest z, then the lowest y, as the official scan order gives.
    """
    present = mask.any(axis=0)  # (y, z)
    if not present.any():
        return None
    xs = np.arange(mask.shape[0])[:, None, None]
    first = np.where(mask, xs, mask.shape[0]).min(axis=0)
    last = np.where(mask, xs, -1).max(axis=0)
    length = np.where(present, last - first, -1)
    z, y = divmod(int(np.argmax(length.T)), length.shape[0])  # first maximum in (z, y) order
    return Width(int(length[y, z]), (int(first[y, z]), y, z), (int(last[y, z]), y, z))


def largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of ``mask`` (unchanged when empty)."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return (labels == np.argmax(sizes) + 1).astype(np.uint8)


def drop_small_blobs(mask: np.ndarray, min_size: int) -> np.ndarray:
    """``mask`` without its 6-connected components of ``min_size`` voxels or fewer."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes > min_size
    keep[0] = False
    return keep[labels].astype(np.uint8)


def to_1mm(vol: Volume, order: int) -> np.ndarray:
    """``vol`` in the closest canonical orientation at 1 mm.

    A resampled image is cast to uint8, as the official does even for the CT (its values wrap); one that is
    already at 1 mm keeps its values, as there.
    """
    from totalseg.prepare.orient import to_canonical
    from totalseg.prepare.resample import to_spacing

    canonical = to_canonical(vol)
    data = canonical.data if order == 0 else canonical.data.astype(np.float64)
    return np.asarray(to_spacing(canonical.with_data(data), (1.0, 1.0, 1.0), order=order, dtype=np.uint8).data)


def register_to_atlas(ct: np.ndarray, brain: np.ndarray, fixed: np.ndarray, masks: dict[str, tuple[np.ndarray, str]]
                      ) -> dict[str, np.ndarray]:
    """Register the brain-extracted ``ct`` rigidly to ``fixed`` and move each ``masks`` entry (array, interpolator)."""
    try:
        import ants
    except ImportError:
        raise UserError(ANTSPYX_HINT) from None

    moving = np.where(brain > 0, ct, 0).astype(np.float64)
    fixed_img = ants.from_numpy(fixed.astype(np.float64))
    result = ants.registration(fixed=fixed_img, moving=ants.from_numpy(moving), type_of_transform="Rigid",
                               aff_metric="mattes", verbose=False)
    moved = {}
    for name, (mask, interpolator) in masks.items():
        warped = ants.apply_transforms(fixed=fixed_img, moving=ants.from_numpy(mask.astype(np.float64)),
                                       transformlist=result["fwdtransforms"], interpolator=interpolator)
        moved[name] = warped.numpy().astype(np.uint8)  # truncation: a linear mask keeps only full voxels
    return moved


def measure(brain: np.ndarray, skull: np.ndarray, ventricles: np.ndarray, voxel_mm3: float) -> dict[str, Any] | None:
    """The Evans index, volumes and drawing geometry from masks on the atlas grid; None if no frontal horn is left."""
    ventricle_any = ventricles > 0
    # The brain mask stops short of the skull: grow it into the cranial cavity, but only a little, so that
    # openings in the skull do not let it leak out.
    cavity = ndimage.binary_dilation(brain, iterations=2).astype(np.uint8)
    cavity[skull > 0] = 0
    cavity = largest_blob(cavity)
    brain_ml = int(cavity.sum()) * voxel_mm3 * 0.001
    ventricle_ml = int(ventricle_any.sum()) * voxel_mm3 * 0.001
    horns = drop_small_blobs(np.isin(ventricles, FRONTAL_HORNS), MIN_HORN_BLOB)
    cavity = drop_small_blobs(cavity, MIN_BRAIN_BLOB)
    horn = widest_row(horns)
    if horn is None:
        return None
    z = horn.start[2]
    inner = widest_row(cavity[:, :, z:z + 1])
    if inner is None or inner.length == 0 or brain_ml == 0:
        return None
    return {"evans_index": horn.length / inner.length, "brain_volume_ml": brain_ml,
            "ventricle_volume_ml": ventricle_ml, "ventricle_brain_ratio": ventricle_ml / brain_ml,
            "horn": horn, "skull_width": Width(inner.length, inner.start[:2] + (z,), inner.end[:2] + (z,))}


EMPTY = {"evans_index": None, "brain_volume_ml": None, "ventricle_volume_ml": None, "ventricle_brain_ratio": None}


def evans_index(ct: Volume, brain: Volume, skull: Volume, ventricles: Volume) -> tuple[dict, dict | None]:
    """The official JSON values (rounded as the official) and the picture's data (None when not measurable).

    ``brain`` and ``skull`` are binary masks, ``ventricles`` the ventricle_parts label map, all on ``ct``'s grid.
    """
    if not (brain.data.any() and skull.data.any() and np.isin(ventricles.data, FRONTAL_HORNS).any()):
        return dict(EMPTY), None
    fixed = atlas()
    ct_1mm = to_1mm(ct, order=1)
    brain_1mm = to_1mm(brain.with_data(brain.data.astype(np.uint8)), order=0)
    moved = register_to_atlas(ct_1mm, brain_1mm, fixed.data, {
        "brain": (brain_1mm, "linear"),
        "skull": (to_1mm(skull.with_data(skull.data.astype(np.uint8)), order=0), "genericLabel"),
        "ventricles": (to_1mm(ventricles.with_data(ventricles.data.astype(np.uint8)), order=0), "genericLabel")})
    found = measure(moved["brain"], moved["skull"], moved["ventricles"], float(np.prod(fixed.zooms)))
    if found is None:
        return dict(EMPTY), None
    values = {"evans_index": round(found["evans_index"], 3), "brain_volume_ml": round(found["brain_volume_ml"], 1),
              "ventricle_volume_ml": round(found["ventricle_volume_ml"], 1),
              "ventricle_brain_ratio": round(found["ventricle_brain_ratio"], 3)}
    outline = moved["skull"].copy()
    outline[moved["ventricles"] > 0] = 1
    return values, {**found, "outline": outline}


DISCLAIMER = ("This is a research prototype and not designed for diagnosis of any medical complaint.\n"
              "Created by AI Lab, Department of Radiology, University Hospital Basel")


def _png(fig, facecolor: str) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=200, bbox_inches="tight", pad_inches=0.1, facecolor=facecolor)
    plt.close(fig)
    return buf.getvalue()


def picture(values: dict, found: dict | None) -> bytes:
    """The preview PNG: the measured slice with both widths and the numbers, or a note that nothing was measurable."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(8, 9.0))
    if found is None:
        fig.patch.set_facecolor("black")
        fig.text(0.5, 0.5, "No calculation possible because the segmentation is empty.\n"
                 "Does your image contain the full brain?", ha="center", va="center", color="white")
        fig.text(0.5, 0.01, DISCLAIMER, ha="center", va="bottom", fontsize=8, color="white")
        return _png(fig, "black")
    ax = fig.add_subplot(111)
    horn, skull = found["horn"], found["skull_width"]
    ax.imshow(found["outline"][:, :, horn.start[2]].T, cmap="gray", origin="lower", interpolation="gaussian")
    for width in (skull, horn):
        xs, ys = (width.start[0], width.end[0]), (width.start[1], width.end[1])
        ax.scatter(xs, ys, color="red", marker="x", s=200)
        ax.plot(xs, ys, color="green", linewidth=3)
    ax.set_title(f"EVANS INDEX: {values['evans_index']:.3f}\nbrain volume: {values['brain_volume_ml']:.1f}ml*\n"
                 f"ventricle volume: {values['ventricle_volume_ml']:.1f}ml\n"
                 f"ventricle/brain ratio: {values['ventricle_brain_ratio']:.3f}")
    ax.axis("off")
    ax.invert_xaxis()  # radiological view: the patient's right on the left
    fig.text(0.5, -0.01, "* Volume of brain + cranial cavity (area inside of skull)\n\n" + DISCLAIMER,
             ha="center", va="bottom", fontsize=8, wrap=True)
    fig.tight_layout()
    return _png(fig, "white")
