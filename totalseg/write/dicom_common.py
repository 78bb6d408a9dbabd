"""What the DICOM writers share: SNOMED CT codes and colours per class, and atomic saving."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from totalseg.write.atomic import write_atomic

__all__ = ["ClassCode", "class_code", "save_dataset_atomic", "MANUFACTURER"]

MANUFACTURER = "totalseg"
_SNOMED = Path(__file__).resolve().parents[1] / "registry" / "snomed.json"
# Classes without an entry in the table are coded as generic tissue (as the official tool does).
_TISSUE = ("SCT", "85756007", "Tissue")
# Colours for classes without an entry (RGB), cycled by label id.
_PALETTE = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
            (255, 128, 0), (255, 0, 128), (128, 255, 128), (0, 128, 255), (128, 128, 128), (185, 170, 155))


@dataclass(frozen=True)
class ClassCode:
    """Coded meaning of one class: (scheme, value, meaning) triples and an RGB colour."""

    category: tuple[str, str, str]
    type: tuple[str, str, str]
    type_modifier: tuple[str, str, str] | None
    region: tuple[str, str, str] | None
    region_modifier: tuple[str, str, str] | None
    color: tuple[int, int, int]
    known: bool


@lru_cache(maxsize=1)
def _table() -> dict:
    return json.loads(_SNOMED.read_text())["classes"]


def class_code(name: str, label: int) -> ClassCode:
    """The SNOMED CT coding of class ``name`` (generic tissue if the table has none)."""
    entry = _table().get(name)
    if entry is None:
        return ClassCode(_TISSUE, _TISSUE, None, None, None, _PALETTE[label % len(_PALETTE)], False)

    def triple(key):
        value = entry.get(key)
        return tuple(value) if value else None

    return ClassCode(triple("category"), triple("type"), triple("type_modifier"), triple("region"),
                     triple("region_modifier"), tuple(entry["color"]), True)


def save_dataset_atomic(ds, path: Path) -> None:
    """Write a pydicom dataset to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))


def present_labels(stack, class_map) -> list[int]:
    """The task's labels that occur in ``stack``, in label order."""
    import numpy as np

    return [int(k) for k in np.unique(stack) if k and int(k) in class_map]
