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


def write_folder_atomic(path: Path, write: Callable[[Path], None], marker: str | None = None) -> None:
    """Call ``write(tmp)`` on a new folder beside ``path`` and rename it to ``path``.

    ``path`` is then either its old content or the complete new folder. An existing ``path`` is only replaced
    when it is empty or holds the file ``marker`` (a folder this writer made before): other folders are the
    user's, and a typo must not delete them.
    """
    import shutil

    path = Path(path).absolute()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{path} is a file; give a folder name for the output")
        if any(path.iterdir()) and not (marker and (path / marker).is_file()):
            raise UserError(f"{path} exists and is not a folder this command wrote; give a new or empty folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    tmp = path.with_name(f".{path.name}.{token}.tmp")
    old = path.with_name(f".{path.name}.{token}.old")
    try:
        tmp.mkdir()
        write(tmp)
        if path.exists():
            os.replace(path, old)  # two renames: the old folder is back in place if the second fails
        try:
            os.replace(tmp, path)
        except OSError:
            if old.exists():
                os.replace(old, path)
            raise
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write {path}: {e.strerror or e}; check the folder and free disk space") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
