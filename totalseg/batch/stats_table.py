"""``statistics.csv`` (and ``statistics.parquet`` where pyarrow is installed): every case's statistics.json in
one long table, a row per case and structure.

Columns: ``case_id``, ``structure``, then the keys of statistics.json (``volume``, ``intensity`` and, with
-sx, ``n_voxels``, ``intensity_std``, ..., ``centroid_vox``, ``bbox_vox``, ``incomplete``). A CSV cell holds
the value as JSON text (numbers as Python writes them, lists as ``[...]``, ``true``/``false``), so
``json.loads(cell)`` gives back the number of statistics.json exactly; the parquet table keeps native types.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterable

from totalseg.write.atomic import write_atomic

STATS_CSV, STATS_PARQUET = "statistics.csv", "statistics.parquet"
STATS_JSON = "statistics.json"


def statistics_rows(case_folders: Iterable[tuple[str, Path]]) -> list[dict[str, Any]]:
    """The long table's rows for ``(case_id, case folder)`` pairs (folders without statistics.json skipped)."""
    rows = []
    for case_id, folder in case_folders:
        path = folder / STATS_JSON
        if not path.is_file():
            continue
        for structure, entry in json.loads(path.read_text(encoding="utf-8")).items():
            rows.append({"case_id": case_id, "structure": structure, **entry})
    return rows


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    columns: dict[str, None] = {"case_id": None, "structure": None}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def write_statistics_table(out_dir: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """Write the table (atomically) into ``out_dir``; returns the files written."""
    columns = _columns(rows)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(c, "") if c in ("case_id", "structure") else
                         ("" if c not in row else json.dumps(row[c])) for c in columns])
    data = text.getvalue()
    csv_path = Path(out_dir) / STATS_CSV
    write_atomic(csv_path, lambda tmp: tmp.write_text(data, encoding="utf-8"))
    written = [csv_path]
    if parquet_available():
        written.append(_write_parquet(Path(out_dir) / STATS_PARQUET, rows, columns))
    else:  # an older table would no longer match the CSV
        (Path(out_dir) / STATS_PARQUET).unlink(missing_ok=True)
    return written


def parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def _write_parquet(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows])
    write_atomic(path, lambda tmp: pq.write_table(table, tmp))
    return path
