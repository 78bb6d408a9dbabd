"""The service's SQLite files (jobs, DICOM node): one way to connect and one way to run a transaction."""
from __future__ import annotations

import sqlite3
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator


def connect(path: Path) -> sqlite3.Connection:
    """A connection to ``path``: WAL journal (readers never wait for the writer), rows as ``sqlite3.Row``."""
    db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # a finished change survives a power cut
    return db


@contextmanager
def transaction(path: Path, write: bool = True) -> Iterator[sqlite3.Connection]:
    """One short connection and one transaction, rolled back on any error; a write one is BEGIN IMMEDIATE,
    so that writers of other threads and processes queue instead of failing."""
    with closing(connect(path)) as db:
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
