"""The official three-way split along z for very large images (and ``-fs``)."""
from __future__ import annotations

import numpy as np

MARGIN = 20
LARGE = 512 * 512 * 900


def needs_split(shape, multi_model: bool, force: bool) -> bool:
    return force or (multi_model and int(np.prod(shape)) > LARGE and shape[2] > 200)


def chunks(depth: int) -> list[slice]:
    """Overlapping z ranges of the three chunks (20 slices of margin on inner sides)."""
    third = depth // 3
    return [slice(0, third + MARGIN), slice(third + 1 - MARGIN, 2 * third + MARGIN),
            slice(2 * third + 1 - MARGIN, depth)]


def join(parts: list[np.ndarray], depth: int) -> np.ndarray:
    """Stitch chunk predictions back, dropping the margins as the official tool does."""
    third = depth // 3
    out = np.empty(parts[0].shape[:2] + (depth,), dtype=parts[0].dtype)
    out[..., :third] = parts[0][..., :-MARGIN]
    out[..., third:2 * third] = parts[1][..., MARGIN - 1:-MARGIN]
    out[..., 2 * third:] = parts[2][..., MARGIN - 1:]
    return out
