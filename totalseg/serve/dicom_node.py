"""The service's DICOM node: a Storage SCP that turns each received CT/MR series into one job and sends the
job's DICOM SEG (and/or RTSTRUCT) to a destination by C-STORE.

Layout in the service's data folder (beside the job store's ``jobs.sqlite``)::

    dicom_node.sqlite           the series received and the sends still to do (a restart loses neither)
    dicom/tmp/                  instances being written (renamed into their series folder when complete)
    dicom/incoming/<series>/    the instances of a series still arriving, one file per SOP instance
    dicom/staged/<n>/           a quiet series on its way into the job store (which moves it into the job)

Logs name series by their row number and jobs by their id: never a patient's name or ID, nor a UID of the images
received.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

from totalseg.errors import UserError
from totalseg.notice import notice_printer
from totalseg.serve.database import transaction

# What the node stores: the image classes the DICOM loader reads (classic and enhanced CT/MR).
IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
}
VERIFICATION = "1.2.840.10008.1.1"
DICOM_TYPES = ("dicom_seg", "dicom_rtstruct", "dicom")

# Uncompressed syntaxes first; then the compressed ones the pylibjpeg/pydicom decoders read.
_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5",
]
_SUCCESS = {0x0000, 0xB000, 0xB006, 0xB007}  # success, and the C-STORE warnings (stored, with coercion)
_FAILED_STORE = 0xC000  # "cannot understand": an instance without usable UIDs
_OUT_OF_RESOURCES = 0xA700
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_TICK = 0.5  # seconds between looks at the series, the jobs and the sends
_RETRY_FIRST = 2.0  # seconds before the first retry of a failed send; doubled each time up to _RETRY_MAX
_RETRY_MAX = 300.0
_ATTEMPTS_PER_RUN = 8  # then the send waits for the next start of the node
_TIMEOUT = 30.0  # seconds for each network step of a send

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS series (
        n INTEGER PRIMARY KEY AUTOINCREMENT, uid TEXT NOT NULL, folder TEXT NOT NULL, state TEXT NOT NULL,
        instances INTEGER NOT NULL DEFAULT 0, last_seen REAL NOT NULL, calling TEXT, job TEXT)""",
    """CREATE TABLE IF NOT EXISTS sends (
        n INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL, path TEXT NOT NULL, state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL DEFAULT 0, error TEXT)""",
)


def parse_dest(dest: str) -> tuple[str, str, int]:
    """``AET@HOST:PORT`` as (AE title, host, port); a malformed one is a :class:`UserError`."""
    match = re.fullmatch(r"([^@]{1,16})@\[?([^\[\]@]+?)\]?:([0-9]{1,5})", dest.strip())
    if not match or not 0 < int(match[3]) < 65536:
        raise UserError(f"DICOM destination {dest!r} is not AET@HOST:PORT (e.g. PACS@10.0.0.5:104); fix --dicom-dest")
    aet = _checked_aet(match[1], "--dicom-dest")
    return aet, match[2], int(match[3])


def job_options(options: dict) -> dict:
    """A series job's options: ``options`` with DICOM SEG output added unless they name a DICOM output type."""
    asked = options.get("output_type") or []
    asked = [asked] if isinstance(asked, str) else list(asked)
    types = [t.strip() for item in asked for t in str(item).split(",") if t.strip()]
    if not any(t in DICOM_TYPES for t in types):
        types.append("dicom_seg")
    return {**options, "output_type": types}


def start_dicom_node(store, *, port: int, aet: str, dest: str | None, options: dict, quiet_seconds: float,
                     allowed_aets: list[str] | None, host: str = "",
                     notice: Callable[[str], None] | None = None) -> "DicomNode":
    """Start the node on ``host:port`` (all interfaces by default) as ``aet``; returns it running (``.stop()``).

    ``store``: the service's job store (``data``, ``submit``, ``get``, ``output_path``). ``allowed_aets``: the
    calling AE titles accepted (None: any). ``options``: the ``totalsegmentator()`` options of every job.
    """
    from totalseg import check_options

    opts = job_options(dict(options or {}))
    check_options(opts)  # a bad --dicom-options stops the start, not every job later
    node = DicomNode(store, aet=_checked_aet(aet, "--dicom-aet"), dest=parse_dest(dest) if dest else None,
                     options=opts, quiet_seconds=float(quiet_seconds),
                     allowed_aets=[_checked_aet(a, "--dicom-allowed-aets") for a in allowed_aets or []] or None,
                     notice=notice or notice_printer(False))
    node.start(host, port)
    return node


class DicomNode:
    """A running node: a Storage SCP, a thread that submits quiet series and one that sends results."""

    def __init__(self, store, *, aet: str, dest: tuple[str, str, int] | None, options: dict,
                 quiet_seconds: float, allowed_aets: list[str] | None, notice: Callable[[str], None]):
        self.store, self.aet, self.dest, self.options = store, aet, dest, options
        self.quiet_seconds, self.allowed_aets, self.notice = quiet_seconds, allowed_aets, notice
        self.root = Path(store.data) / "dicom"
        self.db_path = Path(store.data) / "dicom_node.sqlite"
        self.port: int | None = None
        self._lock = threading.Lock()  # a series folder is not renamed while an instance is put into it
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server = None

    # -- start and stop ------------------------------------------------------------------------------------
    def start(self, host: str, port: int) -> None:
        import logging

        # pynetdicom's own log (debug level) shows dataset elements, patient's name among them: keep it quiet.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        for sub in ("tmp", "incoming", "staged"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for part in (self.root / "tmp").iterdir():  # instances cut off by a stop: their sender got no success
            part.unlink(missing_ok=True)
        self._open_db()
        self._listen(host, port)
        for loop in (self._watch_series, self._send_results):
            thread = threading.Thread(target=self._every_tick, args=(loop,), daemon=True,
                                      name=f"dicom-node-{loop.__name__}")
            thread.start()
            self._threads.append(thread)
        self.notice(f"DICOM node {self.aet} listening on port {self.port}"
                    + (f", sending results to {self.dest[0]}@{self.dest[1]}:{self.dest[2]}" if self.dest else ""))
        if not self.allowed_aets:
            self.notice("WARNING: the DICOM node accepts any calling AE title; restrict it with --dicom-allowed-aets")

    def _listen(self, host: str, port: int) -> None:
        """The Storage SCP: CT/MR images and C-ECHO, from the allowed calling AE titles, to our AE title."""
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.aet)
        for sop_class in [VERIFICATION, *IMAGE_SOP_CLASSES]:
            ae.add_supported_context(sop_class, _TRANSFER_SYNTAXES if sop_class != VERIFICATION else None)
        ae.require_called_aet = True
        ae.require_calling_aet = list(self.allowed_aets or [])  # empty: any
        ae.maximum_associations = 16
        try:
            self._server = ae.start_server((host, port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store),
                                                         (evt.EVT_C_ECHO, lambda event: 0x0000)])
        except OSError as e:
            raise UserError(f"cannot listen for DICOM on port {port}: {e.strerror or e}; choose another "
                            "--dicom-port") from None
        self.port = self._server.server_address[1]

    def stop(self) -> None:
        """Stop listening and let the threads end (what is pending stays in the database for the next start)."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        for thread in self._threads:
            thread.join(timeout=_TIMEOUT * 3)

    def _every_tick(self, loop: Callable[[], None]) -> None:
        while not self._stopping.wait(_TICK):
            try:
                loop()
            except Exception as e:  # noqa: BLE001 - the node keeps running; the next tick tries again
                self.notice(f"WARNING: DICOM node: {_one_line(e)}")

    # -- database ------------------------------------------------------------------------------------------
    def _db(self):
        return transaction(self.db_path)

    def _open_db(self) -> None:
        with self._db() as db:
            for table in _SCHEMA:
                db.execute(table)
            # A send that failed before the last stop is tried again now, from the first back-off step.
            db.execute("UPDATE sends SET state = 'pending', attempts = 0, next_try = 0 "
                       "WHERE state IN ('pending', 'failed')")

    # -- receiving -----------------------------------------------------------------------------------------
    def _on_store(self, event) -> int:
        """C-STORE: the instance written whole (temporary name, then renamed) into its series folder."""
        ds = event.dataset
        series = str(ds.get("SeriesInstanceUID", "") or "")
        instance = str(event.request.AffectedSOPInstanceUID or "")
        if not (_UID.fullmatch(series) and _UID.fullmatch(instance)) or len(series) > 64 or len(instance) > 64:
            self.notice("WARNING: DICOM node: refused an instance without a valid series or instance UID")
            return _FAILED_STORE
        tmp = self.root / "tmp" / f"{secrets.token_hex(8)}.part"
        try:
            with open(tmp, "wb") as f:
                f.write(event.encoded_dataset(include_meta=True))
                f.flush()
                os.fsync(f.fileno())
            with self._lock:
                folder = self.root / "incoming" / series
                folder.mkdir(exist_ok=True)
                os.replace(tmp, folder / f"{instance}.dcm")
                self._count_instance(series, folder, event.assoc.requestor.ae_title)
        except OSError as e:  # e.g. the disk is full: the sender learns it and may send again later
            tmp.unlink(missing_ok=True)
            self.notice(f"WARNING: DICOM node: cannot store an instance: {e.strerror or e}")
            return _OUT_OF_RESOURCES
        return 0x0000

    def _count_instance(self, series: str, folder: Path, calling: str) -> None:
        with self._db() as db:
            row = db.execute("SELECT n FROM series WHERE uid = ? AND state = 'receiving'", (series,)).fetchone()
            if row is None:
                n = db.execute("INSERT INTO series (uid, folder, state, instances, last_seen, calling) "
                               "VALUES (?, ?, 'receiving', 1, ?, ?)",
                               (series, str(folder), time.time(), str(calling).strip())).lastrowid
                self.notice(f"DICOM node: receiving series #{n}")
            else:
                db.execute("UPDATE series SET instances = instances + 1, last_seen = ? WHERE n = ?",
                           (time.time(), row["n"]))

    # -- series to jobs ------------------------------------------------------------------------------------
    def _watch_series(self) -> None:
        """Submit every series quiet for ``quiet_seconds``; collect the results of the jobs that ended."""
        with self._db() as db:
            quiet = db.execute("SELECT * FROM series WHERE state = 'receiving' AND last_seen <= ?",
                               (time.time() - self.quiet_seconds,)).fetchall()
            staged = db.execute("SELECT * FROM series WHERE state = 'staged'").fetchall()
            running = db.execute("SELECT * FROM series WHERE state = 'submitted'").fetchall()
        for row in quiet:
            self._stage(row)
        for row in [*staged, *quiet]:
            self._submit(row["n"])
        for row in running:
            self._collect(row)

    def _stage(self, row: sqlite3.Row) -> None:
        """Move a quiet series out of ``incoming``: an instance arriving later starts a new series folder."""
        staged = self.root / "staged" / str(row["n"])
        if not Path(row["folder"]).is_dir():  # removed by hand while the node was stopped
            self._set_series(row["n"], "failed")
            self.notice(f"WARNING: DICOM node: the files of series #{row['n']} are gone; send it again")
            return
        with self._lock:
            with self._db() as db:
                if db.execute("SELECT last_seen FROM series WHERE n = ?", (row["n"],)).fetchone()[0] \
                        != row["last_seen"]:
                    return  # an instance came in meanwhile: not quiet after all
                os.replace(row["folder"], staged)
                db.execute("UPDATE series SET state = 'staged', folder = ? WHERE n = ?", (str(staged), row["n"]))

    def _submit(self, n: int) -> None:
        with self._db() as db:
            row = db.execute("SELECT * FROM series WHERE n = ?", (n,)).fetchone()
        if row["state"] != "staged":
            return
        if not Path(row["folder"]).is_dir():  # the node stopped between submitting and noting the job
            self._set_series(n, "failed")
            self.notice(f"WARNING: DICOM node: series #{n} was lost in a restart while being submitted; send it again")
            return
        try:
            job = self.store.submit(Path(row["folder"]), self.options, origin="dicom")
        except Exception as e:  # noqa: BLE001 - e.g. a full disk: this series fails, the node goes on
            self._set_series(n, "failed")
            self.notice(f"WARNING: DICOM node: series #{n} not submitted: {_one_line(e)}")
            return
        self._set_series(n, "submitted", job)
        self.notice(f"DICOM node: series #{n} ({row['instances']} instances) is job {job}")

    def _collect(self, row: sqlite3.Row) -> None:
        """A job that ended: its DICOM outputs queued for sending (or the failure noted)."""
        try:
            job = self.store.get(row["job"])
        except UserError:
            job = {"state": "cancelled", "error": "the job was deleted"}
        if job["state"] not in ("done", "failed", "cancelled"):
            return
        if job["state"] != "done":
            self._set_series(row["n"], "failed")
            self.notice(f"WARNING: DICOM node: job {row['job']} {job['state']}"
                        + (f": {job['error']}" if job.get("error") else ""))
            return
        paths = [str(self.store.output_path(row["job"], name)) for name in job["files"]
                 if name.lower().endswith(".dcm")]
        with self._db() as db:
            if self.dest:
                db.executemany("INSERT INTO sends (job, path, state) VALUES (?, ?, 'pending')",
                               [(row["job"], p) for p in paths])
            db.execute("UPDATE series SET state = 'done' WHERE n = ?", (row["n"],))
        if not paths:
            self.notice(f"WARNING: DICOM node: job {row['job']} wrote no DICOM output (no class found?)")
        elif not self.dest:
            self.notice(f"DICOM node: job {row['job']} done; no destination set, its outputs stay in the job")

    def _set_series(self, n: int, state: str, job: str | None = None) -> None:
        with self._db() as db:
            db.execute("UPDATE series SET state = ?, job = COALESCE(?, job) WHERE n = ?", (state, job, n))
        if state in ("failed", "submitted") and Path(self.root / "staged" / str(n)).is_dir():
            shutil.rmtree(self.root / "staged" / str(n), ignore_errors=True)

    # -- sending -------------------------------------------------------------------------------------------
    def _send_results(self) -> None:
        """Every send that is due, over one association: a C-ECHO, then one C-STORE per file."""
        with self._db() as db:
            due = db.execute("SELECT * FROM sends WHERE state = 'pending' AND next_try <= ? ORDER BY n",
                             (time.time(),)).fetchall()
        if not due or not self.dest:
            return
        try:
            results = send_files(self.aet, self.dest, [Path(r["path"]) for r in due])
        except Exception as e:  # noqa: BLE001 - unreachable, refused, no echo, unreadable: all wait for a retry
            results = [_one_line(e)] * len(due)
        for row, error in zip(due, results):
            self._note_send(row, error)

    def _note_send(self, row: sqlite3.Row, error: str | None) -> None:
        attempts = row["attempts"] + 1
        with self._db() as db:
            if error is None:
                db.execute("UPDATE sends SET state = 'sent', attempts = ?, error = NULL WHERE n = ?",
                           (attempts, row["n"]))
            else:
                give_up = attempts >= _ATTEMPTS_PER_RUN
                wait = min(_RETRY_FIRST * 2 ** (attempts - 1), _RETRY_MAX)
                db.execute("UPDATE sends SET state = ?, attempts = ?, next_try = ?, error = ? WHERE n = ?",
                           ("failed" if give_up else "pending", attempts, time.time() + wait, error, row["n"]))
        name = Path(row["path"]).name
        if error is None:
            self.notice(f"DICOM node: sent {name} of job {row['job']}")
        elif attempts >= _ATTEMPTS_PER_RUN:
            self.notice(f"WARNING: DICOM node: gave up sending {name} of job {row['job']} after {attempts} tries "
                        f"({error}); it is sent again when the service restarts")
        else:
            self.notice(f"WARNING: DICOM node: sending {name} of job {row['job']} failed ({error}); "
                        f"retrying in {min(_RETRY_FIRST * 2 ** (attempts - 1), _RETRY_MAX):.0f} s")


def send_files(aet: str, dest: tuple[str, str, int], paths: list[Path]) -> list[str | None]:
    """C-ECHO, then C-STORE each file to ``dest`` (AE title, host, port) over one association.

    Returns one entry per file: None when stored, else why not. Raises ``OSError`` when no association or
    echo succeeds (nothing was sent).
    """
    import pydicom
    from pynetdicom import AE

    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = _TIMEOUT
    for sop_class, syntax in {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}:
        ae.add_requested_context(sop_class, list(dict.fromkeys([syntax, *_TRANSFER_SYNTAXES[:2]])))
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(dest[1], dest[2], ae_title=dest[0])
    if not assoc.is_established:
        raise OSError(f"{dest[0]}@{dest[1]}:{dest[2]} refused the association or is not reachable")
    try:
        echo = assoc.send_c_echo()
        if _status(echo) not in _SUCCESS:
            raise OSError(f"{dest[0]} did not answer the C-ECHO")
        return [_store_one(assoc, ds) for ds in datasets]
    finally:
        if assoc.is_established:
            assoc.release()


def _store_one(assoc, ds) -> str | None:
    try:
        status = _status(assoc.send_c_store(ds))
    except (ValueError, RuntimeError) as e:  # e.g. no accepted presentation context for its class
        return _one_line(e)
    return None if status in _SUCCESS else f"C-STORE status 0x{status:04X}" if status >= 0 else "no answer"


def _status(status) -> int:
    """The Status of a DIMSE response (-1 when none came: aborted, timed out)."""
    return int(status.Status) if status is not None and "Status" in status else -1


def _checked_aet(aet: str, flag: str) -> str:
    title = str(aet).strip()
    if not 0 < len(title) <= 16 or "\\" in title or not title.isascii() or not title.isprintable():
        raise UserError(f"AE title {aet!r} is not 1-16 printable ASCII characters without '\\'; fix {flag}")
    return title


def _one_line(error) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__
