"""The cohort folder: a case folder per case, a staging area for cases being written, one run at a time.

A case is written into ``OUT_DIR/.staging/<case_id>.<random>/`` and renamed to ``OUT_DIR/<case_id>/`` when
complete: a rename within one file system is atomic, so a case folder is there whole or not at all, even
after a SIGKILL. Whatever is left in the staging area belongs to cases that did not finish.
"""
from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from totalseg.errors import UserError
from totalseg.filelock import file_lock

STAGING = ".staging"
LOCK = ".totalseg_batch.lock"


def case_folder(out_dir: Path, case_id: str) -> Path:
    return Path(out_dir) / case_id


def new_staging(out_dir: Path, case_id: str) -> Path:
    """An empty folder in the staging area for one attempt at ``case_id``."""
    folder = Path(out_dir) / STAGING / f"{case_id}.{secrets.token_hex(4)}"
    folder.mkdir(parents=True)
    return folder


def publish(staging: Path, final: Path) -> None:
    """Move a complete case into place (never over a finished case)."""
    if final.exists():
        raise UserError(f"{final} appeared while the case ran; another run writes into this folder?")
    os.rename(staging, final)


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def clear_staging(out_dir: Path, tables: tuple[str, ...] = ()) -> None:
    """Remove what unfinished cases left, and the temporary files of ``tables`` a killed run left
    (only while holding the cohort lock: no run is writing)."""
    shutil.rmtree(Path(out_dir) / STAGING, ignore_errors=True)
    for name in tables:  # write_atomic's names: .<name>.<random>.tmp<suffix>
        for tmp in Path(out_dir).glob(f".{name}.*.tmp*"):
            tmp.unlink(missing_ok=True)


@contextmanager
def cohort_lock(out_dir: Path) -> Iterator[None]:
    """Hold the cohort folder for this run; a second run on the same folder stops at once."""
    def busy() -> None:
        raise UserError(f"another totalseg_batch is running on {out_dir}; wait for it or use another -o")

    with file_lock(Path(out_dir) / LOCK, on_wait=busy, remove=True):
        yield
