"""From sorted DICOM slices to a regular 3D grid, and from that grid to the NIfTI layout.

DICOM gives each slice a position (ImagePositionPatient) and the row/column directions
(ImageOrientationPatient) in LPS patient coordinates.  Slices are ordered by their distance along the slice
normal (never by file name or InstanceNumber).  When the slices are evenly spaced and stacked along the
normal, the slices themselves form the grid.  Otherwise -- slices missing, uneven spacing, or a gantry tilt
(slices stepping along the table while the image planes are tilted, which makes a sheared grid) -- the data are
resampled (linearly) onto an orthogonal grid with even spacing, so that every later step sees a plain volume.

The NIfTI layout is the one dicom2nifti writes with ``reorient_nifti=True`` (what the official tool segments):
the voxel axes closest to the patient's x, y, z axes, pointing Left, Anterior, Superior ("LAS").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from totalseg.errors import InputError

__all__ = ["Grid", "check_orientation", "sort_slices", "regular_grid", "resample_to_grid", "las_orientation"]

ORIENTATION_TOLERANCE = 1e-4  # largest difference between direction cosines of one orientation
TILT_TOLERANCE = 1e-3  # |sideways step| / |step along the normal| beyond which slices are sheared (~0.06 deg)
SPACING_TOLERANCE = 0.01  # relative deviation of a slice step from the typical step that is still "even"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid in DICOM terms: array index (slice, row, column), positions in LPS mm."""

    origin: np.ndarray  # centre of voxel (0, 0, 0)
    row_cosine: np.ndarray  # direction in which the column index grows (ImageOrientationPatient[:3])
    column_cosine: np.ndarray  # direction in which the row index grows (ImageOrientationPatient[3:])
    slice_vector: np.ndarray  # step from one slice to the next (mm)
    spacing: tuple[float, float]  # (between rows, between columns), as DICOM PixelSpacing
    shape: tuple[int, int, int]  # (slices, rows, columns)

    def affine_lps(self) -> np.ndarray:
        """Voxel (column, row, slice) -> LPS mm; the native NIfTI voxel order of a DICOM stack."""
        a = np.eye(4)
        a[:3, 0] = self.row_cosine * self.spacing[1]
        a[:3, 1] = self.column_cosine * self.spacing[0]
        a[:3, 2] = self.slice_vector
        a[:3, 3] = self.origin
        return a

    def affine_ras(self) -> np.ndarray:
        return LPS_TO_RAS @ self.affine_lps()

    def slice_origin(self, k: int) -> np.ndarray:
        return self.origin + k * self.slice_vector


def check_orientation(orientations: Sequence[Sequence[float]], what: str) -> np.ndarray:
    """The common ImageOrientationPatient (normalised) of all slices; one-line error if they differ."""
    arr = np.asarray(orientations, float)
    groups: list[np.ndarray] = []
    counts: list[int] = []
    for o in arr:
        for i, g in enumerate(groups):
            if np.max(np.abs(o - g)) <= ORIENTATION_TOLERANCE * 10:
                counts[i] += 1
                break
        else:
            groups.append(o)
            counts.append(1)
    if len(groups) > 1:
        raise InputError(f"{what} mixes {len(groups)} slice orientations ({' + '.join(map(str, counts))} images); "
                         "a volume needs parallel slices -- export the slices of one orientation as their own "
                         "series (or choose one with --series_uid)")
    o = arr.mean(axis=0)
    u, v = o[:3], o[3:]
    if not (np.linalg.norm(u) > 0.5 and np.linalg.norm(v) > 0.5) or abs(np.dot(u, v)) / (
            np.linalg.norm(u) * np.linalg.norm(v)) > 1e-2:
        raise InputError(f"{what} has an invalid ImageOrientationPatient {np.round(o, 4).tolist()}; "
                         "the row and column directions must be perpendicular unit vectors")
    u = u / np.linalg.norm(u)
    v = v - np.dot(v, u) * u  # remove rounding noise so the in-plane axes are exactly perpendicular
    v = v / np.linalg.norm(v)
    return np.concatenate([u, v])


def sort_slices(positions: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Indices that order slices by their distance along the normal (stable for equal distances)."""
    return np.argsort(positions @ normal, kind="stable")


def regular_grid(positions: np.ndarray, orientation: np.ndarray, spacing: tuple[float, float],
                 rows: int, cols: int, what: str, warn: Callable[[str], None]) -> tuple[Grid, bool]:
    """The grid for slices at sorted, distinct ``positions``; True if it is the slices' own grid.

    When False the caller must resample (see :func:`resample_to_grid`); the warning has then been given.
    """
    u, v = orientation[:3], orientation[3:]
    n = np.cross(u, v)
    count = len(positions)
    dist = (positions - positions[0]) @ n
    steps = np.diff(dist)
    span = positions[-1] - positions[0]
    along = float(span @ n)
    sideways = float(np.linalg.norm(span - along * n))
    tilted = sideways > TILT_TOLERANCE * abs(along)
    if tilted:
        # Slices step along the table, not along their normal: the grid's third axis is the table direction.
        w = span / np.linalg.norm(span)
        dist = (positions - positions[0]) @ w
        steps = np.diff(dist)
    typical = float(np.median(steps))
    tol = max(SPACING_TOLERANCE * typical, 1e-4)
    even = bool(np.all(np.abs(steps - typical) <= tol))
    if not tilted and even:
        grid = Grid(positions[0].copy(), u.copy(), v.copy(), span / (count - 1), spacing, (count, rows, cols))
        return grid, True

    step = _resampled_step(steps, dist, typical, what, warn)
    if tilted:
        angle = float(np.degrees(np.arctan2(sideways, abs(along))))
        warn(f"{what}: gantry tilt of {angle:.1f} degrees (sheared slices); resampled linearly onto an "
             "orthogonal grid")
        axes = _orthogonal_axes(u, v, span)
    else:
        axes = (n, v, u)
    return _covering_grid(positions, orientation, axes, step, spacing, rows, cols), False


def _resampled_step(steps: np.ndarray, dist: np.ndarray, typical: float, what: str, warn) -> float:
    """The slice step of the even grid for uneven ``steps``: the typical one when the others are its
    multiples (missing slices), else the smallest; warns either way."""
    multiples = steps / typical
    if np.all(np.abs(multiples - np.rint(multiples)) <= SPACING_TOLERANCE * np.rint(multiples)):
        missing = int(np.sum(np.rint(multiples) - 1))
        gaps = [f"{dist[i]:.2f}-{dist[i + 1]:.2f} mm" for i in np.nonzero(np.rint(multiples) > 1)[0][:3]]
        if missing:
            warn(f"{what}: {missing} slice(s) missing (gaps at {', '.join(gaps)} along the stack); "
                 f"filled by linear interpolation on an even {typical:.3g} mm grid")
        return typical
    step = float(np.min(steps))
    warn(f"{what}: uneven slice spacing ({step:.3g} to {np.max(steps):.3g} mm); "
         f"resampled linearly to an even {step:.3g} mm grid")
    return step


def _orthogonal_axes(u: np.ndarray, v: np.ndarray, span: np.ndarray):
    """``(w, v2, u2)``: orthonormal axes for tilted slices, ``w`` along the table (``span``), the in-plane
    axes as close to the slices' ``u``, ``v`` as that allows."""
    w = span / np.linalg.norm(span)
    v2 = np.cross(w, u)
    v2 /= np.linalg.norm(v2)
    if np.dot(v2, v) < 0:
        v2 = -v2
    u2 = np.cross(v2, w)  # keeps (u2, v2, w) orthonormal; u2 == u when the tilt is about the row axis
    u2 /= np.linalg.norm(u2)
    if np.dot(u2, u) < 0:
        u2 = -u2
    return w, v2, u2


def _covering_grid(positions: np.ndarray, orientation: np.ndarray, axes, step: float,
                   spacing: tuple[float, float], rows: int, cols: int) -> Grid:
    """The grid along ``axes`` (slice, column, row direction), ``step`` between slices, that covers every
    source voxel centre of the slices at ``positions`` (with their ``orientation`` and ``spacing``)."""
    u, v = orientation[:3], orientation[3:]
    w, v2, u2 = axes
    corners = np.asarray([p + c * spacing[1] * u + r * spacing[0] * v
                          for p in (positions[0], positions[-1]) for r in (0, rows - 1) for c in (0, cols - 1)])
    base = positions[0]
    coords = np.stack([(corners - base) @ axis for axis in (w, v2, u2)], axis=1)
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    # Cover every source voxel centre.
    counts = [int(np.ceil((b - a) / size - 1e-3)) + 1 for a, b, size in zip(lo, hi, (step, *spacing))]
    origin = base + lo[0] * w + lo[1] * v2 + lo[2] * u2
    return Grid(origin, u2, v2, w * step, spacing, (counts[0], counts[1], counts[2]))


def _snap(x: np.ndarray) -> np.ndarray:
    """Round coordinates that are integers up to float noise (keeps source voxels exact)."""
    r = np.rint(x)
    return np.where(np.abs(x - r) < 1e-6, r, x)


def resample_to_grid(stack: np.ndarray, positions: np.ndarray, orientation: np.ndarray,
                     spacing: tuple[float, float], grid: Grid, fill: float) -> np.ndarray:
    """Linear resampling of sorted slices ``stack`` (slices, rows, cols) onto ``grid``.

    A target point is placed between the two source slices around it (by its distance along the slice
    normal), and within them by its in-plane position relative to the (interpolated) slice origin.  Points
    outside the source slices get ``fill``.  Source voxels that fall on grid points keep their exact value.
    """
    from scipy.ndimage import map_coordinates

    u, v = orientation[:3], orientation[3:]
    n = np.cross(u, v)
    dist = (positions - positions[0]) @ n
    count = len(positions)
    k_index = np.arange(count, dtype=float)
    out_dtype = np.float64 if stack.dtype.kind == "f" else np.float32
    out = np.empty(grid.shape, dtype=stack.dtype if stack.dtype.kind == "f" else np.float32)
    src = stack.astype(out_dtype, copy=False)
    rows, cols = grid.shape[1], grid.shape[2]
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    in_plane = (rr[..., None] * (grid.column_cosine * grid.spacing[0])
                + cc[..., None] * (grid.row_cosine * grid.spacing[1]))  # (rows, cols, 3)
    tilted = not np.allclose(grid.slice_vector / np.linalg.norm(grid.slice_vector), n, atol=1e-9) or \
        not np.allclose(grid.row_cosine, u, atol=1e-9)
    for k in range(grid.shape[0]):
        pts = grid.slice_origin(k) + in_plane  # (rows, cols, 3)
        s = (pts - positions[0]) @ n
        kk = _snap(np.interp(s, dist, k_index))
        outside = (s < dist[0] - 1e-6 * max(1.0, abs(dist[-1]))) | (s > dist[-1] + 1e-6 * max(1.0, abs(dist[-1])))
        if not tilted:
            # Slices are parallel to the grid: blend the two neighbouring slices, pixel for pixel.
            k0 = float(kk.flat[0])
            lo = int(np.floor(k0))
            frac = k0 - lo
            if outside.flat[0]:
                out[k] = fill
            elif frac == 0 or lo + 1 >= count:
                out[k] = src[min(lo, count - 1)]
            else:
                out[k] = (1 - frac) * src[lo] + frac * src[lo + 1]
            continue
        # Origin of the (virtual) source slice through each point, then in-plane indices relative to it.
        o = np.stack([np.interp(kk, k_index, positions[:, i]) for i in range(3)], axis=-1)
        d = pts - o
        r = _snap((d @ v) / spacing[0])
        c = _snap((d @ u) / spacing[1])
        vals = map_coordinates(src, [kk.ravel(), r.ravel(), c.ravel()], order=1, mode="constant", cval=fill)
        vals = vals.reshape(rows, cols)
        vals[outside] = fill
        out[k] = vals
    if stack.dtype.kind in "iu":
        info = np.iinfo(stack.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(stack.dtype)
    return out


def las_orientation(affine_ras: np.ndarray) -> np.ndarray:
    """nibabel orientation (``apply_orientation``) from the native voxel order to dicom2nifti's LAS layout.

    Each patient axis (x, y, z) takes the voxel axis that moves most along it (largest entry of the inverse
    affine); the voxel axes then point Left, Anterior, Superior.  Ties fall back to nibabel's choice.
    """
    import nibabel as nib

    inv = np.linalg.inv(affine_ras)[:3, :3]  # column j: voxel steps per mm along patient axis j
    picks = [int(np.argmax(np.abs(inv[:, j]))) for j in range(3)]
    if len(set(picks)) < 3:
        ornt = nib.orientations.io_orientation(affine_ras)  # RAS; flip x to get L
        ornt[:, 1] = np.where(ornt[:, 0] == 0, -ornt[:, 1], ornt[:, 1])
        return ornt
    ornt = np.zeros((3, 2))
    wanted = (-1.0, 1.0, 1.0)  # L, A, S: index grows against +x (R), along +y (A) and +z (S)
    for out_axis, voxel_axis in enumerate(picks):
        sign = np.sign(inv[voxel_axis, out_axis])
        ornt[voxel_axis] = (out_axis, 1.0 if sign == wanted[out_axis] else -1.0)
    return ornt
