"""Part models to task labels: each part's local ids are mapped by class name, later parts win."""
from __future__ import annotations

import numpy as np


def label_lut(local: dict[int, str], task: dict[int, str]) -> np.ndarray:
    """Lookup table local id -> task id (0 where the task has no such class)."""
    by_name = {name: k for k, name in task.items()}
    lut = np.zeros(max(local) + 1, dtype=np.uint8 if max(task) < 256 else np.uint16)
    for k, name in local.items():
        lut[k] = by_name.get(name, 0)
    return lut


def paste_part(combined: np.ndarray, part: np.ndarray, lut: np.ndarray) -> None:
    """Write ``lut[part]`` into ``combined`` where it is non-zero (in place)."""
    mapped = lut[part]
    np.copyto(combined, mapped, where=mapped != 0)
