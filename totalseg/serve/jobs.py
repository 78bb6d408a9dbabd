"""The service's job store: one SQLite database (WAL, one transaction per change) and one folder per job.

Layout of the data folder::

    jobs.sqlite            the jobs (state, progress, options, attempts, output names)
    jobs/<id>/input/       the job's input (a NIfTI file, a DICOM zip or folder), complete or absent
    jobs/<id>/output/      what the worker published (the names listed in the job's ``files``)
    jobs/<id>/report/      the case report (``totalseg_report``'s page)
    incoming/              uploads being received (temporary names, renamed into a job when complete)

Every process (the web server, the worker, the DICOM node) opens its own short-lived connections, so the
store may be used from several threads and processes at once.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import time
from pathlib import Path

from totalseg.errors import UserError
from totalseg.serve.database import connect, transaction

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL = ("done", "failed", "cancelled")
MAX_ATTEMPTS = 2  # a job that was running when its process died runs again once, then fails
RESERVE = 1 << 20  # bytes kept free in the data folder so that a job's end is recorded on a full disk

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    state TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    error TEXT,
    options TEXT NOT NULL,
    origin TEXT NOT NULL,
    input TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    files TEXT NOT NULL DEFAULT '[]',
    created REAL NOT NULL,
    started REAL,
    finished REAL
)
"""


class UnknownJob(UserError):
    """No job has this id (or it was deleted)."""


class JobStore:
    """Jobs in ``data/jobs.sqlite`` with their files under ``data/jobs/<id>/``."""

    def __init__(self, data: Path):
        self.data = Path(data).absolute()
        self.jobs_dir = self.data / "jobs"
        self.incoming = self.data / "incoming"
        for folder in (self.jobs_dir, self.incoming):
            folder.mkdir(parents=True, exist_ok=True)
        with self._transaction() as db:
            db.execute(_SCHEMA)
        # Held open while the store lives: SQLite deletes the WAL file when its last connection closes, and
        # recreating it needs disk space that a full disk does not have (then not even a read would work).
        self._keeper = connect(self.data / "jobs.sqlite")
        self.keep_reserve()

    def keep_reserve(self) -> None:
        """Hold ``RESERVE`` bytes in ``.reserve`` (released when the disk is full, see ``_end``)."""
        reserve = self.data / ".reserve"
        if not reserve.exists() or reserve.stat().st_size < RESERVE:
            try:
                with open(reserve, "wb") as f:
                    f.write(bytes(RESERVE))
            except OSError:
                reserve.unlink(missing_ok=True)  # no space now; tried again at the next submission

    # -- database ------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._keeper.close()

    def _transaction(self, write: bool = True):
        return transaction(self.data / "jobs.sqlite", write)

    def _row(self, db: sqlite3.Connection, job_id: str) -> sqlite3.Row:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJob(f"no job {job_id!r}; list the jobs with GET /api/jobs")
        return row

    # -- folders -------------------------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / _checked_id(job_id)

    def input_path(self, job_id: str) -> Path:
        """The job's input file or folder."""
        with self._transaction(write=False) as db:
            return self.job_dir(job_id) / "input" / self._row(db, job_id)["input"]

    def output_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "output"

    def report_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "report"

    def output_path(self, job_id: str, name: str) -> Path:
        """The published output ``name`` of a job (only names listed in its ``files``)."""
        if name not in self.get(job_id)["files"]:
            raise UnknownJob(f"job {job_id} has no output {name!r}; its outputs are listed in its 'files'")
        return self.output_dir(job_id) / name

    def new_upload(self, suffix: str) -> Path:
        """A temporary path for an upload being received (renamed into a job by ``submit`` when complete)."""
        return self.incoming / f"{secrets.token_hex(8)}.part{suffix}"

    # -- jobs ----------------------------------------------------------------------------------------------
    def submit(self, input_path: Path, options: dict, origin: str = "upload", name: str | None = None) -> str:
        """A new queued job for ``input_path`` (a file or folder): moved into the job's folder, or copied
        when ``origin`` is "path" (a file of the server's that stays where it is). Returns the job id.
        ``name``: the input's name inside the job (default: ``input`` with the source's suffix)."""
        input_path = Path(input_path)
        job_id = secrets.token_hex(8)
        name = name or "input" + _suffix(input_path)
        staging = self.jobs_dir / f".{job_id}.tmp"
        try:
            (staging / "input").mkdir(parents=True)
            target = staging / "input" / name
            if origin == "path":
                (shutil.copytree if input_path.is_dir() else shutil.copyfile)(input_path, target)
            else:
                shutil.move(str(input_path), target)
            os.replace(staging, self.jobs_dir / job_id)  # the job's folder is complete or absent
            self.keep_reserve()
            with self._transaction() as db:
                db.execute("INSERT INTO jobs (id, state, options, origin, input, created) VALUES "
                           "(?, 'queued', ?, ?, ?, ?)", (job_id, json.dumps(options), origin, name, time.time()))
        except (OSError, sqlite3.OperationalError) as e:
            _remove(staging)
            _remove(self.jobs_dir / job_id)
            why = getattr(e, "strerror", None) or e
            raise UserError(f"cannot store the job: {why}; free space in the data folder") from None
        return job_id

    def get(self, job_id: str) -> dict:
        """``{"id", "state", "progress", "error", "files", ...}`` of a job."""
        with self._transaction(write=False) as db:
            return _public(self._row(db, job_id))

    def list(self) -> list[dict]:
        """Every job, oldest first."""
        with self._transaction(write=False) as db:
            return [_public(r) for r in db.execute("SELECT * FROM jobs ORDER BY seq")]

    def options(self, job_id: str) -> dict:
        with self._transaction(write=False) as db:
            return json.loads(self._row(db, job_id)["options"])

    def claim(self) -> dict | None:
        """The oldest queued job, now running (its attempt counted); None when none is queued."""
        with self._transaction() as db:
            row = db.execute("SELECT * FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', progress = 0, attempts = attempts + 1, started = ? "
                       "WHERE id = ?", (time.time(), row["id"]))
            return {**_public(row), "state": "running", "attempts": row["attempts"] + 1}

    def set_progress(self, job_id: str, progress: float) -> None:
        """Raise a running job's progress (best effort: a full disk does not stop the job here)."""
        try:
            with self._transaction() as db:
                db.execute("UPDATE jobs SET progress = MAX(progress, ?) WHERE id = ? AND state = 'running'",
                           (min(max(progress, 0.0), 1.0), job_id))
        except sqlite3.OperationalError:
            pass

    def finish(self, job_id: str, attempt: int, files: list[str]) -> bool:
        """Mark attempt ``attempt`` of a running job done; False if it is no longer that run (cancelled,
        deleted or requeued meanwhile), so a job is done once."""
        return self._end(job_id, attempt, "done", None, files)

    def fail(self, job_id: str, attempt: int, error: str) -> bool:
        """Mark attempt ``attempt`` of a running job failed with a one-line ``error``."""
        return self._end(job_id, attempt, "failed", _one_line(error), [])

    def _end(self, job_id: str, attempt: int, state: str, error: str | None, files: list[str]) -> bool:
        try:
            return self._set_end(job_id, attempt, state, error, files)
        except sqlite3.OperationalError:  # the disk is full: free the reserve so that the end is recorded
            (self.data / ".reserve").unlink(missing_ok=True)
            return self._set_end(job_id, attempt, state, error, files)

    def _set_end(self, job_id: str, attempt: int, state: str, error: str | None, files: list[str]) -> bool:
        with self._transaction() as db:
            cur = db.execute("UPDATE jobs SET state = ?, progress = ?, error = ?, files = ?, finished = ? "
                             "WHERE id = ? AND state = 'running' AND attempts = ?",
                             (state, 1.0 if state == "done" else 0.0, error, json.dumps(files), time.time(),
                              job_id, attempt))
            return cur.rowcount == 1

    def cancel(self, job_id: str) -> str:
        """Cancel a queued or running job; returns the state it had (a finished job is left as it is)."""
        with self._transaction() as db:
            state = self._row(db, job_id)["state"]
            if state in ("queued", "running"):
                db.execute("UPDATE jobs SET state = 'cancelled', finished = ? WHERE id = ?", (time.time(), job_id))
            return state

    def delete(self, job_id: str) -> None:
        """Remove a finished job and its files (cancel a running one first)."""
        with self._transaction() as db:
            if self._row(db, job_id)["state"] not in FINAL:
                raise UserError(f"job {job_id} is not finished; cancel it first")
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        _remove(self.job_dir(job_id))

    def recover(self) -> list[str]:
        """After a process died: its running jobs queued again if they have an attempt left, else failed.
        Returns the ids queued again."""
        with self._transaction() as db:
            running = db.execute("SELECT id, attempts FROM jobs WHERE state = 'running'").fetchall()
            again = [r["id"] for r in running if r["attempts"] < MAX_ATTEMPTS]
            db.executemany("UPDATE jobs SET state = 'queued', progress = 0 WHERE id = ?", [(i,) for i in again])
            db.execute("UPDATE jobs SET state = 'failed', progress = 0, finished = ?, error = ? WHERE state = "
                       "'running'", (time.time(), "the service stopped while this job ran, twice; not retried"))
        return again

    def clean_up(self) -> None:
        """At start-up only (no upload in flight): remove uploads being received and job folders without a
        job (staged, or whose row was never written) when the last process stopped."""
        with self._transaction() as db:
            known = {r["id"] for r in db.execute("SELECT id FROM jobs")}
        for path in [*self.incoming.iterdir(), *self.jobs_dir.iterdir()]:
            if path.name not in known:
                _remove(path)


def _public(row: sqlite3.Row) -> dict:
    return {"id": row["id"], "state": row["state"], "progress": round(float(row["progress"]), 3),
            "error": row["error"], "files": json.loads(row["files"]), "options": json.loads(row["options"]),
            "origin": row["origin"],
            "attempts": row["attempts"], "created": row["created"], "started": row["started"],
            "finished": row["finished"]}


def _checked_id(job_id: str) -> str:
    if not (isinstance(job_id, str) and 0 < len(job_id) <= 64 and job_id.isalnum()):
        raise UnknownJob(f"no job {job_id!r}; list the jobs with GET /api/jobs")
    return job_id


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".nii.gz", ".nii", ".zip", ".dcm"):
        if name.endswith(suffix):
            return suffix
    return ""


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line[:500] if line else "failed without a message"


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
