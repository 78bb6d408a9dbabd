"""The input image as TotalSegmentator reads it: a NIfTI file or image, or a DICOM folder, zip or file."""
from __future__ import annotations

from typing import Callable

import nibabel as nib

from totalseg.load.dicom import is_dicom_input, load_dicom
from totalseg.load.nifti import InputImage, load_nifti


def load_image(source, warn: Callable[[str], None] | None = None) -> InputImage:
    """``source`` read and validated by the DICOM or the NIfTI reader (``warn``: where the readers' warnings go,
    Python warnings by default)."""
    kwargs = {} if warn is None else {"warn": warn}
    if not isinstance(source, nib.Nifti1Image) and is_dicom_input(source):
        return load_dicom(source, **kwargs)
    return load_nifti(source, **kwargs)


def as_nibabel(image: InputImage) -> nib.Nifti1Image:
    """The validated image in memory as nibabel's NIfTI image (its ``get_fdata()`` is the input's values)."""
    return nib.Nifti1Image(image.volume.data, image.volume.affine, image.header)
