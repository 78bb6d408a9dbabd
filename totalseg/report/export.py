"""The volumes of the case viewer: compressed NIfTI bytes, base64 in a script file, on two grids.

The viewer first shows a preview grid of at most ``PREVIEW_VOXELS`` voxels (every n-th voxel): NiiVue renders
every layer of a volume into 3D textures and computes its gradients on each change, which a software GPU
(headless Chromium's SwiftShader, machines without a GPU) does at roughly a microsecond per voxel, so a
512x512x300 CT would take minutes there. The full grid is stored beside it and loaded on request (at once
where the browser has a hardware GPU).

A page opened from disk (file://) may not fetch() or XMLHttpRequest other local files in Chromium, but it may
load ``<script src>`` files. So each volume is written as ``data/<key>.js``, a script that stores the base64
text of a gzip-compressed NIfTI in ``window.TSR_VOLUMES[key]``; the page decodes it into an ArrayBuffer and
gives it to NiiVue (``NVImage.new``), which inflates it with the browser's native DecompressionStream.
"""
from __future__ import annotations

import base64
import gzip
import io
from pathlib import Path

import nibabel as nib
import numpy as np

# gzip level of the embedded volumes: level 1 is ~3x faster to write than 6 and ~10% larger; loading time in
# the browser is dominated by the decompressed size, not by the level.
COMPRESS_LEVEL = 1
PREVIEW_VOXELS = 2_000_000  # ~1.5 s of NiiVue layer rendering on this project's 2-core software-GPU machine


def viewer_dtype(image: np.ndarray) -> np.dtype:
    """int16 when the intensities are whole numbers within int16 (CT, most MR), else float32."""
    if np.issubdtype(image.dtype, np.integer) or image.dtype == bool:
        lo, hi = (int(image.min()), int(image.max())) if image.size else (0, 0)
        return np.dtype(np.int16) if -32768 <= lo and hi <= 32767 else np.dtype(np.float32)
    sample = image[::4, ::4, ::4]
    whole = np.all(np.isfinite(sample)) and np.array_equal(sample, np.round(sample))
    if whole and image.size and -32768 <= float(image.min()) and float(image.max()) <= 32767:
        return np.dtype(np.int16)
    return np.dtype(np.float32)


def preview_step(shape: tuple[int, ...], max_voxels: int) -> int:
    """The smallest subsampling step whose grid has at most ``max_voxels`` voxels (1: the full grid)."""
    step = 1
    while max_voxels > 0 and np.prod([-(-n // step) for n in shape[:3]], dtype=np.float64) > max_voxels:
        step += 1
    return step


def subsample(data: np.ndarray, affine: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Every ``step``-th voxel, starting in the middle of the first block, and the matching affine.

    Nearest-voxel sampling keeps label values exact, and image and labels sampled alike stay aligned.
    """
    if step <= 1:
        return data, affine
    start = step // 2
    out = np.ascontiguousarray(data[start::step, start::step, start::step])
    moved = np.array(affine, dtype=float)
    moved[:3, 3] = affine[:3, :3] @ np.full(3, float(start)) + affine[:3, 3]
    moved[:3, :3] = affine[:3, :3] * step
    return out, moved


def nifti_gz(data: np.ndarray, affine: np.ndarray) -> bytes:
    """The gzip-compressed NIfTI-1 file of ``data`` (sform and qform = ``affine``), as bytes."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_sform(affine, code=1)
    img.header.set_qform(affine, code=1)
    raw = img.to_bytes()
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=COMPRESS_LEVEL, mtime=0) as gz:
        gz.write(raw)
    return buf.getvalue()


def write_volume_script(path: Path, key: str, payload: bytes) -> None:
    """Write ``data/<key>.js``: ``payload`` as base64 in ``window.TSR_VOLUMES[key]``."""
    text = base64.b64encode(payload).decode("ascii")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="ascii") as f:
        f.write(f'(window.TSR_VOLUMES = window.TSR_VOLUMES || {{}})["{key}"] = "')
        f.write(text)
        f.write('";\n')


def export_volumes(folder: Path, image: np.ndarray, labels: np.ndarray, affine: np.ndarray,
                   preview_voxels: int, full: bool) -> dict:
    """Write the viewer's volume scripts into ``folder/data``: a preview grid of at most ``preview_voxels``
    voxels (shown first) and, with ``full``, the full grid too (loaded on request). Returns the grids:
    ``{"preview": {"scripts", "shape", "step"}, "full": {...} or None}`` (paths relative to ``folder``)."""
    grids: dict = {"preview": None, "full": None}
    dtype = viewer_dtype(image)
    step = preview_step(image.shape, preview_voxels)
    plans = [("preview", step, "")] + ([("full", 1, "_full")] if full and step > 1 else [])
    for grid, grid_step, suffix in plans:
        img, grid_affine = subsample(image, affine, grid_step)
        lab, _ = subsample(labels, affine, grid_step)
        scripts = []
        for key, data in ((f"image{suffix}", np.asarray(img).astype(dtype, copy=False)), (f"labels{suffix}", lab)):
            name = f"data/{key}.js"
            write_volume_script(folder / name, key, nifti_gz(np.asarray(data), grid_affine))
            scripts.append(name)
        grids[grid] = {"scripts": scripts, "keys": [f"image{suffix}", f"labels{suffix}"],
                       "shape": list(img.shape), "step": grid_step}
    return grids
