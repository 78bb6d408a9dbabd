"""``totalsegmentator.libs``: ``combine_masks``, forwarded to :mod:`totalseg.assemble.combine`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import nibabel as nib
import numpy as np

from totalseg.assemble.combine import combine_masks as _combine_group
from totalseg.errors import InputError

__all__ = ["combine_masks"]


def combine_masks(mask_dir: Union[str, os.PathLike], class_type: Union[str, Sequence[str]],
                  multilabel: bool = False) -> nib.Nifti1Image:
    """Binary uint8 image: the union of the classes of ``class_type``.

    ``mask_dir``: a folder of per-class masks or a multilabel file (detected, so ``multilabel``
    is accepted for compatibility only). ``class_type``: a group (lung, lung_left, lung_right,
    vertebrae, ribs, vertebrae_ribs, heart, pelvis, body) or a list of class names.
    """
    if isinstance(class_type, str):
        return _combine_group(mask_dir, class_type)
    return _combine_classes(Path(mask_dir), [str(name) for name in class_type])


def _combine_classes(source: Path, names: list[str]) -> nib.Nifti1Image:
    """The union of the classes ``names`` (a custom list, as the official API allows)."""
    from totalseg.write.labelmap import load_multilabel_nifti
    from totalseg.write.nifti import label_image

    if not names:
        raise InputError("combine_masks: the list of classes is empty")
    if not source.is_dir():
        img, label_map = load_multilabel_nifti(source)
        missing = [n for n in names if n not in label_map.values()]
        if missing:
            raise InputError(f"{source} has no class {', '.join(missing)}")
        ids = [k for k, v in label_map.items() if v in names]
        mask = np.isin(np.asanyarray(img.dataobj), ids)
        return label_image(mask.view(np.uint8), img.affine, img.header)
    paths = [source / f"{name}.nii.gz" for name in names]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise InputError(f"{source} lacks the masks {', '.join(missing)}")
    reference = nib.load(paths[0])
    combined = np.zeros(reference.shape, dtype=bool)
    for path in paths:
        data = np.asanyarray(nib.load(path).dataobj)
        if data.shape != combined.shape:
            raise InputError(f"{path} has shape {data.shape}, {paths[0]} has {combined.shape}")
        combined |= data > 0.5
    return label_image(combined.view(np.uint8), reference.affine, reference.header)
