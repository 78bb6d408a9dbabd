"""``cases.csv``: one row per case of the cohort folder, rewritten atomically after each case."""
from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from totalseg.write.atomic import write_atomic

CASES_CSV = "cases.csv"
DONE, FAILED = "done", "failed"


@dataclass(frozen=True)
class CaseRow:
    """What became of one case. ``models``: ``folder@release`` of each model that ran, ``;`` between them.
    (Columns are only ever added at the end: tables of earlier runs read with the new ones empty.)"""

    case_id: str
    input: str
    status: str
    error: str = ""
    seconds: str = ""
    totalseg_version: str = ""
    models: str = ""
    warnings: str = ""  # the warnings of the case's run report, " | " between them


COLUMNS = [f.name for f in fields(CaseRow)]


def read_rows(out_dir: Path) -> dict[str, CaseRow]:
    """The rows of ``out_dir/cases.csv`` by case id (none when there is no table yet)."""
    path = Path(out_dir) / CASES_CSV
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = [CaseRow(**{c: (row.get(c) or "") for c in COLUMNS}) for row in csv.DictReader(f)]
    return {row.case_id: row for row in rows if row.case_id}


def write_rows(out_dir: Path, rows: list[CaseRow]) -> None:
    """Replace ``out_dir/cases.csv`` with ``rows``: readers see the old table or the new one, never half."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(row) for row in rows)
    data = text.getvalue()
    write_atomic(Path(out_dir) / CASES_CSV, lambda tmp: tmp.write_text(data, encoding="utf-8"))
