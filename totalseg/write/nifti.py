"""Write label images: atomically (temporary name, then rename), with the input's header."""
from __future__ import annotations

import os
import secrets
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping

import nibabel as nib
import numpy as np

from totalseg.errors import UserError
from totalseg.write.atomic import write_atomic
from totalseg.write.labelmap import with_label_table


def label_image(labels: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header) -> nib.Nifti1Image:
    """uint8 image on the input grid, header copied from the input (as the official outputs)."""
    img = nib.Nifti1Image(labels.astype(np.uint8, copy=False), affine, header.copy())
    img.set_data_dtype(np.uint8)
    # The input's own extensions do not describe the labels.
    img.header.extensions.clear()
    return img


def save_atomic(img: nib.Nifti1Image, path: Path) -> None:
    """Save ``img`` to ``path`` so that ``path`` is either absent/old or complete, never partial."""
    write_atomic(path, lambda tmp: nib.save(img, tmp))


def save_multilabel(labels: np.ndarray, affine, header, class_map: Mapping[int, str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(with_label_table(label_image(labels, affine, header), dict(class_map)), path)


def save_per_class(labels: np.ndarray, affine, header, class_map: Mapping[int, str], folder: Path,
                   extra: Mapping[str, np.ndarray] | None = None, threads: int | None = None) -> None:
    """One ``<class>.nii.gz`` per class (empty ones too). All files appear, or none of them do.

    Files go to a hidden staging folder beside ``folder`` and are renamed in when all are written.
    The files compress side by side (zlib works outside the GIL) in ``threads`` threads (``-ns``;
    default: up to 8, at most one per core); bytes are unchanged.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = folder.parent / f".{folder.name}.{secrets.token_hex(4)}.tmp"
    stage.mkdir()
    names = list(dict.fromkeys([*class_map.values(), *(extra or {})]))

    def write(name: str) -> None:
        mask = extra[name] if extra and name in extra else labels == _ids[name]
        nib.save(label_image(mask.view(np.uint8), affine, header), stage / f"{name}.nii.gz")

    _ids = {name: k for k, name in class_map.items()}
    try:
        with ThreadPoolExecutor(max(1, min(threads or 8, os.cpu_count() or 1))) as pool:
            for done in [pool.submit(write, name) for name in names]:
                try:
                    done.result()
                except OSError as e:
                    raise UserError(f"cannot write {folder}: {e.strerror or e}; check free disk space") from None
        folder.mkdir(exist_ok=True)
        for name in names:
            os.replace(stage / f"{name}.nii.gz", folder / f"{name}.nii.gz")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
