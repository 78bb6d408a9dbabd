"""The label table that multilabel NIfTI outputs carry (a Caret-style XML NIfTI extension).

The official tool stores ``{label id: class name}`` in one NIfTI header extension with
code 0 whose content is a small CaretExtension XML document. Viewers (and the official
``load_multilabel_nifti``) read it to name the labels, so we write the very same bytes.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Mapping, Union

import nibabel as nib

from totalseg.errors import InputError

# Extension code the official tool uses (0, "unknown"), not NIfTI's registered Caret code 30.
LABEL_TABLE_ECODE = 0

# Twelve label colours (RGB 0..255); label ``k`` gets ``_PALETTE[k % 12]``.
_PALETTE = (
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
    (255, 128, 0), (255, 0, 128), (128, 255, 128), (0, 128, 255), (128, 128, 128), (185, 170, 155),
)

_HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?> <CaretExtension>  '
    "<Date><![CDATA[2013-07-14T05:45:09]]></Date>   "
    '<VolumeInformation Index="0">   <LabelTable>'
)
_TAIL = (
    "  </LabelTable>  <StudyMetaDataLinkSet>  </StudyMetaDataLinkSet>  "
    "<VolumeType><![CDATA[Label]]></VolumeType>   </VolumeInformation></CaretExtension>"
)
_TRAILER = "\n" + " " * 14

LabelMap = Mapping[int, str]


def _label_line(key: int, name: str) -> str:
    red, green, blue = (channel / 255 for channel in _PALETTE[key % len(_PALETTE)])
    # f-string formatting of a float is its repr, e.g. 0.5019607843137255, as the official writes it.
    return (
        f'<Label Key="{key}" Red="{red}" Green="{green}" Blue="{blue}" Alpha="1">'
        f"<![CDATA[{name}]]></Label>\n"
    )


def label_table_xml(label_map: LabelMap) -> str:
    """The XML text of the label-table extension, identical to the official tool's.

    Labels are written in the mapping's iteration order (the official class maps are sorted by id).
    """
    body = "".join(_label_line(int(key), str(name)) for key, name in label_map.items())
    return _HEAD + "\n" + body + "\n" + _TAIL + _TRAILER


def _is_label_table(content: bytes) -> bool:
    head = content[:512].lstrip()
    return head.startswith(b"<?xml") and b"<CaretExtension" in head


def with_label_table(img: nib.Nifti1Image, label_map: LabelMap) -> nib.Nifti1Image:
    """A new image (same data object, affine and header fields) carrying ``label_map`` as extension.

    The input image and its header are left untouched. A label table already present in the header
    (e.g. copied from a previous output) is replaced; other extensions are kept, in order, and the
    new table is appended after them, as the official tool does.
    """
    out = img.__class__(img.dataobj, img.affine, header=img.header)  # header is copied here
    extensions = out.header.extensions
    extensions[:] = [
        ext for ext in extensions
        if not (ext.get_code() == LABEL_TABLE_ECODE and _is_label_table(ext.get_content()))
    ]
    payload = label_table_xml(label_map).encode("utf-8")
    extensions.append(nib.nifti1.Nifti1Extension(LABEL_TABLE_ECODE, payload))
    return out


def _parse_label_table(content: bytes) -> dict[int, str] | None:
    """``{id: name}`` from one extension's bytes, or None when they are not a label table."""
    if not _is_label_table(content):
        return None
    try:
        root = ET.fromstring(content)
    except ET.ParseError:
        return None
    table = root.find(".//LabelTable")
    if table is None:
        return None
    labels: dict[int, str] = {}
    for element in table.iter("Label"):
        key = element.get("Key")
        if key is None:
            continue
        try:
            labels[int(key)] = (element.text or "").strip()
        except ValueError:
            return None
    return labels


def load_multilabel_nifti(
    source: Union[str, os.PathLike, nib.Nifti1Image],
) -> tuple[nib.Nifti1Image, dict[int, str]]:
    """Load a multilabel NIfTI and its label table: ``(image, {label id: class name})``.

    ``source`` is a path or an already loaded image. The first extension holding a label table
    is used (the official writer puts exactly one there). Raises :class:`InputError` when there
    is none.
    """
    if isinstance(source, (str, os.PathLike)):
        try:
            img = nib.load(os.fspath(source))
        except FileNotFoundError:
            raise InputError(f"{os.fspath(source)}: file not found") from None
        except nib.filebasedimages.ImageFileError as err:
            raise InputError(f"{os.fspath(source)}: not a readable NIfTI image ({err})") from None
        name = os.fspath(source)
    else:
        img = source
        name = "the given image"
    header = getattr(img, "header", None)
    for ext in getattr(header, "extensions", ()) or ():
        labels = _parse_label_table(ext.get_content())
        if labels is not None:
            return img, labels
    raise InputError(
        f"{name} has no label table (NIfTI extension with a CaretExtension LabelTable); "
        "expected a multilabel file written with --ml"
    )


def as_label_map(label_map: LabelMap | list[str] | None,
                 img: nib.Nifti1Image | None = None) -> dict[int, str]:
    """``{id: name}`` from the forms the official helpers accept.

    A mapping is used as is; a sequence of names gets ids 1..n; ``None`` names each distinct
    nonzero value of ``img`` ``L<value>`` (ids 1..n in ascending value order, as the official).
    """
    if label_map is None:
        if img is None:
            raise ValueError("label_map None needs the image to derive label names from")
        import numpy as np

        values = np.unique(np.asanyarray(img.dataobj))
        return {i: f"L{float(v)}" for i, v in enumerate(values[values != 0], start=1)}
    if isinstance(label_map, Mapping):
        return {int(k): str(v) for k, v in label_map.items()}
    return {i: str(name) for i, name in enumerate(label_map, start=1)}


def add_label_map_to_nifti(img: nib.Nifti1Image, label_map: LabelMap | list[str] | None) -> nib.Nifti1Image:
    """Attach ``label_map`` to ``img`` in place (the official helper's contract) and return ``img``.

    ``label_map``: ``{id: name}``, a list of names (ids 1..n) or None (see :func:`as_label_map`).
    A label table already in the header is replaced; other extensions are kept.
    """
    table = with_label_table(img, as_label_map(label_map, img)).header.extensions
    img.header.extensions[:] = list(table)
    return img


def save_multilabel_nifti(img: nib.Nifti1Image, path: Union[str, os.PathLike],
                          label_map: LabelMap | list[str] | None) -> None:
    """Attach ``label_map`` to ``img`` (in place, as the official) and save it atomically at ``path``."""
    from pathlib import Path

    from totalseg.write.atomic import write_atomic

    add_label_map_to_nifti(img, label_map)
    write_atomic(Path(path), lambda tmp: nib.save(img, tmp))
