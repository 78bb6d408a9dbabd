"""Atomic writes: a temporary name in the same folder, then a rename; a failed write leaves nothing."""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable

from totalseg.errors import UserError


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` and rename ``tmp`` to ``path``: ``path`` is either old/absent or complete."""
    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{suffix}")
    try:
        write(tmp)
        with open(tmp, "rb") as written:  # on disk before it takes the name: a crash leaves old or new
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {e.strerror or e}; check the folder and free disk space") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
