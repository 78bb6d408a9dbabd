"""Combine several class masks into one binary mask (``totalseg_combine_masks``).

The groups are the official ones (HEAD): ``ribs`` = the 24 ribs, ``vertebrae`` = the 26 vertebrae
classes of ``total`` (sacrum, S1 ... C1), ``lung`` = the five lobes, ``pelvis`` = femurs and hip
bones, ``body`` = trunk and extremities. ``heart`` is offered by the official command line but not
handled there; here it is the ``heart`` class of ``total`` or, for outputs of ``heartchambers_highres``
(and v1 ``total``), the union of the four chambers and the myocardium.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import nibabel as nib
import numpy as np

from totalseg.errors import InputError, UserError

_RIBS = tuple(f"rib_{side}_{i}" for side in ("left", "right") for i in range(1, 13))
_VERTEBRAE = ("sacrum", "vertebrae_S1", *(f"vertebrae_L{i}" for i in range(5, 0, -1)),
              *(f"vertebrae_T{i}" for i in range(12, 0, -1)), *(f"vertebrae_C{i}" for i in range(7, 0, -1)))
_LUNG_LEFT = ("lung_upper_lobe_left", "lung_lower_lobe_left")
_LUNG_RIGHT = ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right")
_HEART_CHAMBERS = ("heart_myocardium", "heart_atrium_left", "heart_ventricle_left",
                   "heart_atrium_right", "heart_ventricle_right")

# Each group lists alternative class sets; the first whose classes are all available is used.
GROUPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "lung": (_LUNG_LEFT + _LUNG_RIGHT,),
    "lung_left": (_LUNG_LEFT,),
    "lung_right": (_LUNG_RIGHT,),
    "vertebrae": (_VERTEBRAE,),
    "ribs": (_RIBS,),
    "vertebrae_ribs": (_VERTEBRAE + _RIBS,),
    "heart": (("heart",), _HEART_CHAMBERS),
    "pelvis": (("femur_left", "femur_right", "hip_left", "hip_right"),),
    "body": (("body_trunc", "body_extremities"),),
}


def group_classes(group: str | Sequence[str], available: Sequence[str]) -> tuple[str, ...]:
    """The class names that make up ``group`` (a group name, or a list of class names), given the names
    ``available`` in the input.

    Raises :class:`UserError` for an unknown group or an empty list, :class:`InputError` when classes are
    missing.
    """
    if not isinstance(group, str):
        names = tuple(str(name) for name in group)
        if not names:
            raise UserError("combine_masks: the list of classes is empty")
        missing = [n for n in names if n not in set(available)]
        if missing:
            raise InputError(f"the input lacks the classes {', '.join(missing)}")
        return names
    if group not in GROUPS:
        raise UserError(f"unknown mask group '{group}'; choose one of {', '.join(GROUPS)}")
    have = set(available)
    for names in GROUPS[group]:
        if have.issuperset(names):
            return names
    first = GROUPS[group][0]
    missing = [n for n in first if n not in have]
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    raise InputError(f"the input lacks classes of '{group}': {shown}; give the output of a task that has them "
                     "(e.g. total, or body for 'body')")


def combine_label_image(labels: np.ndarray, label_map: Mapping[int, str],
                        group: str | Sequence[str]) -> np.ndarray:
    """uint8 mask (0/1): voxels of ``labels`` whose class belongs to ``group``."""
    names = group_classes(group, list(label_map.values()))
    ids = [int(k) for k, v in label_map.items() if v in names]
    return np.isin(labels, ids).astype(np.uint8)


def _folder_masks(folder: Path, group: str | Sequence[str]) -> tuple[tuple[str, ...], dict[str, Path]]:
    files = {}
    for path in folder.iterdir():
        for suffix in (".nii.gz", ".nii"):
            if path.name.endswith(suffix):
                files.setdefault(path.name[: -len(suffix)], path)
    return group_classes(group, list(files)), files


def combine_masks(source: str | os.PathLike, group: str | Sequence[str]) -> nib.Nifti1Image:
    """Binary uint8 image of the union of ``group``'s classes (a group of :data:`GROUPS` or a list of
    class names).

    ``source`` is a folder of per-class masks (``<class>.nii.gz``; a voxel counts when > 0.5) or a
    multilabel NIfTI carrying the label table. The result has the geometry (affine and header) of
    the first mask of the group, or of the multilabel file.
    """
    from totalseg.write.labelmap import load_multilabel_nifti
    from totalseg.write.nifti import label_image

    src = Path(source)
    if not src.exists():
        raise InputError(f"{src} does not exist; give a folder of masks or a multilabel .nii.gz")
    if src.is_dir():
        names, files = _folder_masks(src, group)
        combined = reference = None
        for name in names:
            try:
                img = nib.load(files[name])
                data = np.asanyarray(img.dataobj)
            except Exception as err:  # nibabel raises several kinds for damaged files
                raise InputError(f"{files[name]}: not a readable NIfTI image ({err})") from None
            if combined is None:
                combined, reference = np.zeros(data.shape, dtype=bool), img
            elif data.shape != combined.shape:
                raise InputError(f"{files[name]} has shape {data.shape}, but {files[names[0]]} has "
                                 f"{combined.shape}; the masks must come from one segmentation")
            combined |= data > 0.5
        return label_image(combined.view(np.uint8), reference.affine, reference.header)
    img, label_map = load_multilabel_nifti(src)
    labels = np.asanyarray(img.dataobj)
    return label_image(combine_label_image(labels, label_map, group), img.affine, img.header)
