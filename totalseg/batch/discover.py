"""Find the cases of a cohort: folders, single files and lists of paths, each case with a stable id.

A folder gives every NIfTI file under it and every DICOM series under it (a folder holding DICOM files, or
a .zip); a .txt list gives one path per line, a .csv list an ``input`` (or ``path``) column and optionally a
``case_id`` column; any other file is one case. A case id is the path relative to the folder (or list) it
was found in, with ``__`` between folder names and any character but letters, digits, ``.``, ``_`` and ``-``
replaced by ``_``: the same inputs always give the same ids, so a rerun finds its finished cases.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from totalseg.errors import UserError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
LIST_SUFFIXES = (".txt", ".csv")
# Files that sit beside images and are never images: they make no case.
_NOT_IMAGES = (".txt", ".csv", ".tsv", ".json", ".md", ".pdf", ".png", ".jpg", ".jpeg", ".html", ".xml",
               ".log", ".yaml", ".yml")
_NOT_SERIES_NAMES = {"dicomdir", "thumbs.db", "desktop.ini"}
# Names the cohort folder uses itself (cases.csv, statistics.csv/.parquet); a case may not take them.
RESERVED_IDS = {"cases.csv", "statistics.csv", "statistics.parquet"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_ID = 200  # bytes; file names stop at 255


@dataclass(frozen=True)
class Case:
    """One image to segment: its id (the name of its output folder) and its input path."""

    case_id: str
    input: Path


def discover_cases(inputs: Sequence[str | os.PathLike]) -> list[Case]:
    """The cases of ``inputs`` in a stable order; a missing input, no case at all or two cases with the
    same id is a one-line error."""
    cases: list[Case] = []
    for item in inputs:
        path = Path(item).absolute()
        if not path.exists():
            raise UserError(f"the input does not exist: {path}")
        if path.is_dir():
            cases.extend(folder_cases(path))
        elif path.name.lower().endswith(LIST_SUFFIXES):
            cases.extend(listed_cases(path))
        else:
            cases.append(Case(case_id(path.name), path))
    if not cases:
        raise UserError("no cases found in the inputs: give NIfTI files, DICOM folders or zips, or folders "
                        "or lists of them")
    check_unique(cases)
    return cases


def case_id(relative: str | os.PathLike) -> str:
    """The id of a case at ``relative`` (a relative path): folders joined by ``__``, image suffixes off."""
    parts = [p for p in Path(relative).parts if p not in ("", ".")]
    last = parts[-1] if parts else "case"
    for suffix in (*NIFTI_SUFFIXES, ".zip"):
        if last.lower().endswith(suffix) and len(last) > len(suffix):
            last = last[: -len(suffix)]
            break
    safe = "__".join(_UNSAFE.sub("_", p).lstrip(".") or "_" for p in [*parts[:-1], last])
    if len(safe.encode()) > _MAX_ID:  # still unique: the hash of the whole path
        digest = hashlib.sha1(str(relative).encode()).hexdigest()[:12]
        safe = f"{safe[:_MAX_ID - 13]}-{digest}"
    return safe


def check_unique(cases: Iterable[Case]) -> None:
    """Two cases may not share an id (compared without case: some file systems ignore it)."""
    seen: dict[str, Case] = {}
    for case in cases:
        if case.case_id.lower() in RESERVED_IDS:
            raise UserError(f"the case id '{case.case_id}' ({case.input}) is a name the cohort folder uses "
                            "itself; rename the file or give case ids in a CSV list (case_id column)")
        other = seen.setdefault(case.case_id.lower(), case)
        if other is not case:
            raise UserError(f"two inputs have the case id '{case.case_id}': {other.input} and {case.input}; "
                            "rename one, or give case ids in a CSV list (case_id column)")


def folder_cases(root: Path) -> list[Case]:
    """Every NIfTI file, DICOM zip and DICOM series folder under ``root`` (hidden entries skipped)."""
    cases = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder)
        rel = here.relative_to(root)
        series = False
        for name in sorted(f for f in files if not f.startswith(".")):
            low = name.lower()
            if low.endswith(NIFTI_SUFFIXES) or low.endswith(".zip"):
                cases.append(Case(case_id(rel / name), here / name))
            elif not low.endswith(_NOT_IMAGES) and low not in _NOT_SERIES_NAMES:
                series = True  # DICOM files often have no suffix: anything else is taken for one
        if series:
            cases.append(Case(case_id(rel if rel.parts else root.name), here))
    return cases


def listed_cases(path: Path) -> list[Case]:
    """The cases of a list file; relative paths are relative to the list's folder."""
    rows = _csv_rows(path) if path.name.lower().endswith(".csv") else _txt_rows(path)
    cases = []
    for given_id, entry in rows:
        listed = Path(entry).expanduser()
        target = listed if listed.is_absolute() else path.parent / listed
        if given_id:
            if _UNSAFE.search(given_id) or given_id.startswith(".") or len(given_id.encode()) > _MAX_ID:
                raise UserError(f"case_id '{given_id}' in {path} is not a safe folder name; use letters, "
                                "digits, '.', '_' and '-' (not first '.')")
            cases.append(Case(given_id, target.absolute()))
        else:
            cases.append(Case(case_id(listed.name if listed.is_absolute() else listed), target.absolute()))
    return cases


def _txt_rows(path: Path) -> list[tuple[str, str]]:
    lines = (line.strip() for line in _read_text(path).splitlines())
    return [("", line) for line in lines if line and not line.startswith("#")]


def _csv_rows(path: Path) -> list[tuple[str, str]]:
    reader = csv.DictReader(_read_text(path).splitlines())
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    column = "input" if "input" in fields else "path" if "path" in fields else None
    if column is None:
        raise UserError(f"{path} needs a header row with an 'input' (or 'path') column, and optionally "
                        "'case_id'")
    rows = []
    for row in reader:
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        if row.get(column):
            rows.append((row.get("case_id", ""), row[column]))
    return rows


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the list {path}: {getattr(e, 'strerror', None) or e}") from None
