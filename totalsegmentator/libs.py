"""``totalsegmentator.libs.combine_masks`` of the official API, served by :mod:`totalseg.assemble.combine`."""
from __future__ import annotations

__all__ = ["combine_masks"]


def combine_masks(mask_dir, class_type, multilabel: bool = False):
    """The union of ``class_type`` (a group name such as ``ribs`` or ``lung``, or a list of class names) as a
    binary uint8 nibabel image. ``mask_dir`` is a folder of per-class masks or a multilabel file; which one is
    seen from the path, so ``multilabel`` changes nothing (kept for scripts that pass it)."""
    from totalseg.assemble.combine import combine_masks as union_of_classes

    return union_of_classes(mask_dir, class_type)
