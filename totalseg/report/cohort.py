"""Reading the output folder of ``totalseg_batch``: ``cases.csv`` and each case's results, tolerantly.

``cases.csv`` has (at least) ``case_id``, ``input``, ``status`` (done/failed), ``error`` and ``seconds``; each
case's segmentation is ``<dir>/<case_id>/`` (a folder of masks, or a folder holding one multilabel file) or
``<dir>/<case_id>.nii.gz``; its run report is a JSON file in the case folder with the report's keys.
Missing files make a case "no result", never an error of the whole report.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from totalseg.errors import UserError
from totalseg.report.case import mask_files


@dataclass(frozen=True)
class CohortCase:
    case_id: str
    input: Path | None
    status: str
    error: str
    seconds: float | None
    segmentation: Path | None
    run_report: dict[str, Any] | None


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _segmentation(root: Path, case_id: str, row: dict[str, str]) -> Path | None:
    for key in ("output", "segmentation"):
        if row.get(key) and (root / row[key]).exists():
            return root / row[key]
    folder = root / case_id
    if folder.is_dir():
        files = mask_files(folder)
        if len(files) == 1:  # one file: the multilabel output of an --ml run
            return next(iter(files.values()))
        return folder if files else None
    for suffix in (".nii.gz", ".nii"):
        if (root / f"{case_id}{suffix}").is_file():
            return root / f"{case_id}{suffix}"
    return None


def _run_report(root: Path, case_id: str) -> dict[str, Any] | None:
    """The case's run report: a JSON object with the report's keys in the case folder (or beside it)."""
    candidates = sorted((root / case_id).glob("*.json")) if (root / case_id).is_dir() else []
    candidates.append(root / f"{case_id}.json")
    for path in candidates:
        if path.name.startswith("statistics") or not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and ("totalsegmentator_version" in data or "task" in data):
            return data
    return None


def _input(root: Path, text: str) -> Path | None:
    if not text:
        return None
    path = Path(text)
    if path.exists() or path.is_absolute():
        return path
    return root / path  # relative to the cohort folder when not to the working directory


def read_cohort(root: Path) -> list[CohortCase]:
    """The cases of a ``totalseg_batch`` output folder, in the order of ``cases.csv``."""
    root = Path(root)
    table = root / "cases.csv"
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; give the output folder of totalseg_batch")
    if not table.is_file():
        raise UserError(f"{root} has no cases.csv; give the output folder of totalseg_batch")
    try:
        with open(table, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {table}: {e}") from None
    if rows and "case_id" not in rows[0]:
        raise UserError(f"{table} has no case_id column; is it the cases.csv of totalseg_batch?")
    cases = []
    for row in rows:
        case_id = (row.get("case_id") or "").strip()
        if not case_id:
            continue
        cases.append(CohortCase(
            case_id=case_id, input=_input(root, (row.get("input") or "").strip()),
            status=(row.get("status") or "done").strip() or "done", error=(row.get("error") or "").strip(),
            seconds=_float(row.get("seconds")), segmentation=_segmentation(root, case_id, row),
            run_report=_run_report(root, case_id)))
    if not cases:
        raise UserError(f"{table} lists no cases")
    return cases


def folder_names(case_ids: list[str]) -> dict[str, str]:
    """A distinct, file-system-safe folder name for every case id."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for case_id in case_ids:
        base = re.sub(r"[^A-Za-z0-9._-]", "_", case_id).strip(".") or "case"
        name, n = base, 2
        while name.lower() in used:
            name, n = f"{base}-{n}", n + 1
        used.add(name.lower())
        out[case_id] = name
    return out
