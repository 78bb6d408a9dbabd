"""Write the sheared input of the oracle_extra case ``fast_sheared``: example_ct_sm's voxels on a non-orthogonal grid.

The voxels are stored left-to-right reversed (an LAS file, as dicom2nifti writes) and the affine is sheared: the
first axis leans 7.6 degrees towards anterior and the slices are tilted 15.4 degrees (gantry-tilt-like), so the
axes are 74.6-88 degrees apart and the column lengths are 3.027, 3 and 3.008 mm.  The header's pixdim stay
3 x 3 x 3 mm (a converter that did not update them), so they differ from the column lengths: the official tool
resamples by the column lengths, and a wrong choice would change many voxels at --fast (3 mm).

Usage: python3 tests/data/make_sheared_ct.py SRC.nii.gz DST.nii.gz (tests import write_sheared_ct).
"""
from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np

# Columns: voxel steps (mm, RAS) of the three array axes.
SHEARED_COLUMNS = np.array([[-3.0, 0.0, 0.0],
                            [0.4, 3.0, 0.8],
                            [0.0, 0.0, 2.9]])


def write_sheared_ct(src: Path, dst: Path) -> Path:
    """Save ``src`` (an RAS scan) reversed along its first axis with the sheared affine; pixdim stay as in ``src``."""
    img = nib.load(src)
    data = np.asanyarray(img.dataobj)[::-1]
    affine = img.affine.copy()
    affine[0, 3] += (data.shape[0] - 1) * img.affine[0, 0]  # the first voxel is now the rightmost one
    affine[:3, :3] = SHEARED_COLUMNS
    header = img.header.copy()
    header.set_sform(affine, code=1)
    header.set_qform(affine, code=1)  # nibabel strips the shear from the qform and sets pixdim to the lengths
    header["pixdim"][1:4] = img.header["pixdim"][1:4]  # ... which are put back to the unsheared scan's
    out = nib.Nifti1Image(np.ascontiguousarray(data), affine, header)
    nib.save(out, dst)
    return Path(dst)


if __name__ == "__main__":
    write_sheared_ct(Path(sys.argv[1]), Path(sys.argv[2]))
