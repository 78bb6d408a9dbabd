"""``totalsegmentator.nifti_ext_header``: the label table of multilabel NIfTI files.

Forwards to :mod:`totalseg.write.labelmap`, which writes the official extension byte for byte.
The parameters keep the official names, so keyword calls work too.
"""
from __future__ import annotations

import os
import warnings
from typing import Mapping, Sequence, Union

import nibabel as nib

from totalseg.write import labelmap

__all__ = ["add_label_map_to_nifti", "save_multilabel_nifti", "load_multilabel_nifti"]

LabelMapLike = Union[Mapping[int, str], Sequence[str], None]


def add_label_map_to_nifti(img_in: nib.Nifti1Image, label_map: LabelMapLike) -> nib.Nifti1Image:
    """Attach ``label_map`` ({id: name}, a list of names for ids 1..n, or None) to ``img_in``; return it."""
    return labelmap.add_label_map_to_nifti(img_in, label_map)


def save_multilabel_nifti(img: nib.Nifti1Image, output_path: Union[str, os.PathLike],
                          label_map: LabelMapLike, nora_project: str | None = None) -> None:
    """Attach ``label_map`` to ``img`` and save it to ``output_path``.

    ``nora_project`` (tagging in a local NORA installation) is not supported: a warning, no tag.
    """
    if nora_project is not None:
        warnings.warn("save_multilabel_nifti: nora_project is not supported by totalseg; "
                      "the file is saved without a NORA tag", stacklevel=2)
    labelmap.save_multilabel_nifti(img, output_path, label_map)


def load_multilabel_nifti(img_path: Union[str, os.PathLike, nib.Nifti1Image],
                          ) -> tuple[nib.Nifti1Image, dict[int, str]]:
    """``(image, {label id: class name})`` from a multilabel file (or an already loaded image)."""
    return labelmap.load_multilabel_nifti(img_path)
