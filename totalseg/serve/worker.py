"""The worker: one process that holds a ``Predictor`` (models loaded once, kept between jobs) and runs the
queued jobs of a job store one at a time; and ``WorkerProcess``, which starts it, restarts it when it dies
and kills it to cancel a job.

A job's outputs are written into ``jobs/<id>/run<attempt>/`` and renamed to ``jobs/<id>/output/`` when
complete; what the job's messages say goes to ``jobs/<id>/log.txt``, not to the service's log (it may name
the series). The case report is written when it is first asked for (``write_report``, by the web server),
so that the worker's time goes to segmentation only.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Callable

from totalseg.errors import UserError
from totalseg.serve.lifetime import die_with_parent
from totalseg.serve.jobs import JobStore

# Options the service sets itself: where things run and where files go are the service's, not the job's.
SERVICE_OPTIONS = {"device": "the service's -d", "engine": "the service's --engine", "crop_path": "no server paths",
                   "save_probabilities": "no server paths"}
PER_CLASS = "segmentations"  # the per-class folder, published as segmentations.zip


def check_job_options(options: dict) -> None:
    """Refuse (one-line UserError) options a job may not set, then check the rest as ``totalsegmentator`` does."""
    from totalseg import check_options

    if not isinstance(options, dict):
        raise UserError('options must be a JSON object of totalsegmentator() options, e.g. {"fast": true}')
    for name, why in SERVICE_OPTIONS.items():
        if options.get(name) not in (None, False):
            raise UserError(f"option {name!r} cannot be set for a job ({why}); leave it out")
    for name in ("statistics", "report"):
        if options.get(name) not in (None, False, True):
            raise UserError(f"option {name!r} takes true or false for a job; the file comes with the outputs")
    check_options(options)


def _types(options: dict) -> list[str]:
    types = options.get("output_type", "nifti")
    return [types] if isinstance(types, str) else list(types)


def run_arguments(options: dict, run_dir: Path) -> tuple[Path, dict]:
    """``(output, options)`` to call ``segment`` with: every file lands in ``run_dir``."""
    options = dict(options)
    if options.get("report"):
        options["report"] = run_dir / "run_report.json"
    if _types(options) != ["nifti"]:
        return run_dir, options  # DICOM outputs: the writer names the files inside the folder
    if options.get("ml"):
        return run_dir / "segmentation.nii.gz", options
    return run_dir / PER_CLASS, options


def publish(run_dir: Path) -> list[str]:
    """The per-class folder zipped (its statistics and preview moved beside the zip); returns the names of
    the outputs (the files directly in ``run_dir``)."""
    folder = run_dir / PER_CLASS
    if folder.is_dir():
        masks = sorted(p for p in folder.iterdir() if p.name.endswith(".nii.gz"))
        with zipfile.ZipFile(run_dir / f"{PER_CLASS}.zip", "w", zipfile.ZIP_STORED) as z:
            for mask in masks:  # already gzip-compressed: stored as they are
                z.write(mask, f"{PER_CLASS}/{mask.name}")
        for other in folder.iterdir():
            if not other.name.endswith(".nii.gz"):
                os.replace(other, run_dir / other.name)
    return sorted(p.name for p in run_dir.iterdir() if p.is_file() and not p.name.startswith("."))


def report_segmentation(output_dir: Path) -> Path | None:
    """What the case report shows: the per-class folder or the multilabel NIfTI (None: DICOM outputs only)."""
    for path in [output_dir / PER_CLASS, output_dir / "segmentation.nii.gz",
                 *sorted(output_dir.glob("*_segmentation.nii.gz"))]:
        if path.exists():
            return path
    return None


class _ProgressLog:
    """A stand-in for stderr during a job: lines go to the job's log; stage messages move its progress, and
    so do the tiles of a model run (``tiles``, the predictor's progress function)."""

    PREDICTED = 0.6  # a (first) model run has ended
    STAGES = (("Predicting", 0.15), ("  running ", 0.25), ("  loaded in", 0.35), ("  predicted in", PREDICTED),
              ("  resampled back", 0.7), ("  saved in", 0.8))

    def __init__(self, log, set_progress: Callable[[float], None]):
        self.log, self.set_progress, self.progress = log, set_progress, 0.05
        self.round_start = self.shown = 0.05

    def write(self, text: str) -> int:
        self.log.write(text)
        for line in text.splitlines():
            for start, value in self.STAGES:
                if line.startswith(start):
                    # each model of a multi-model task starts a new round: creep on, below the outputs' stage
                    self._move(max(value, min(self.progress + 0.05, 0.75)))
        return len(text)

    def tiles(self, model: str, done: int, total: int) -> None:
        """A model run's tiles move the progress from where the run began to where its end is said."""
        if done == 0:
            self.round_start = self.progress
            return
        end = max(self.PREDICTED, min(self.round_start + 0.05, 0.75))
        self._move(self.round_start + (end - self.round_start) * done / max(total, 1), every=0.01)

    def _move(self, value: float, every: float = 0.0) -> None:
        """Raise the progress; stored when it moved by ``every`` (tiles: not a database write per tile)."""
        self.progress = max(self.progress, value)
        if self.progress - self.shown >= every and self.progress > self.shown:
            self.shown = self.progress
            self.set_progress(self.progress)

    def flush(self) -> None:
        self.log.flush()

    def isatty(self) -> bool:
        return False


def run_job(store: JobStore, segment: Callable, job: dict, predictor=None) -> None:
    """Run one claimed job to its end (done or failed) with ``segment(input, output, **options)``;
    ``predictor``: the one behind ``segment``, whose tiles then move the job's progress."""
    job_id, attempt = job["id"], job["attempts"]
    folder = store.job_dir(job_id)
    run_dir = folder / f"run{attempt}"
    shutil.rmtree(run_dir, ignore_errors=True)
    progress = lambda p: store.set_progress(job_id, p)  # noqa: E731
    try:
        run_dir.mkdir()
        with open(folder / "log.txt", "a", buffering=1) as log:  # lines on disk at once: a kill loses none
            stages = _ProgressLog(log, progress)
            stderr, sys.stderr = sys.stderr, stages
            if predictor is not None:
                predictor.progress = stages.tiles
            try:
                progress(0.05)
                output, options = run_arguments(job["options"], run_dir)
                segment(store.input_path(job_id), output, **options)
                progress(0.8)
                files = publish(run_dir)
            finally:
                sys.stderr = stderr
                if predictor is not None:
                    predictor.progress = None
        out = store.output_dir(job_id)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(run_dir, out)  # the outputs are complete or absent
        store.finish(job_id, attempt, files)
    except Exception as e:  # any failure ends this job only; the worker goes on with the next
        shutil.rmtree(run_dir, ignore_errors=True)
        # the service's folders mean nothing to the client: "input.nii.gz", not /srv/.../input/input.nii.gz
        store.fail(job_id, attempt, _message(e).replace(f"{folder}/input/", "").replace(f"{folder}/", ""))


def write_report(store: JobStore, job_id: str) -> bool:
    """The job's case report (``totalseg_report``'s page) in ``jobs/<id>/report``; False when the job has no
    NIfTI segmentation to show (DICOM outputs only)."""
    from totalseg.report.build import write_case_report

    segmentation = report_segmentation(store.output_dir(job_id))
    if segmentation is None:
        return False
    write_case_report(store.input_path(job_id), segmentation, store.report_dir(job_id))
    return True


def _message(error: Exception) -> str:
    """One line for the job's ``error``."""
    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        extra = "; free space in the data folder" if error.errno == 28 else ""
        return f"{error.strerror}{extra}"
    if isinstance(error, MemoryError):
        return "out of memory; try fast or fastest, or a machine with more memory"
    return f"{type(error).__name__}: {error}"


def serve_forever(store: JobStore, segment: Callable, idle: float = 0.2, predictor=None) -> None:
    """Claim and run jobs until the parent process goes away (``predictor``: see :func:`run_job`)."""
    parent = os.getppid()
    while os.getppid() == parent:
        job = store.claim()
        if job is None:
            time.sleep(idle)
        else:
            run_job(store, segment, job, predictor)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m totalseg.serve.worker")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("-d", "--device", default="gpu")
    p.add_argument("--engine", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ray", default=None)
    args = p.parse_args(argv)
    die_with_parent()
    store = JobStore(args.data)
    if args.ray:
        from totalseg.serve.ray_jobs import ray_segment

        serve_forever(store, ray_segment(args.ray, args.device))
        return 0
    from totalseg import Predictor

    engine = args.engine or os.environ.get("TOTALSEG_ENGINE") or "exact"
    with Predictor(device=args.device, engine=engine, threads=args.threads, progress_bars=False) as predictor:
        serve_forever(store, predictor.segment, predictor=predictor)
    return 0


class WorkerProcess:
    """The worker as a child process, restarted when it dies (its running job queued again once)."""

    def __init__(self, store: JobStore, device: str = "gpu", engine: str | None = None,
                 threads: int | None = None, ray: str | None = None, say: Callable[[str], None] = print):
        self.store, self.say = store, say
        self.command = [sys.executable, "-m", "totalseg.serve.worker", "--data", str(store.data), "-d", device]
        for flag, value in (("--engine", engine), ("--threads", threads), ("--ray", ray)):
            if value is not None:
                self.command += [flag, str(value)]
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="worker-watch")

    def start(self) -> None:
        with self._lock:
            self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        log = open(self.store.data / "worker.log", "ab")
        self.process = subprocess.Popen(self.command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _watch(self) -> None:
        failures = 0
        while not self._stop.wait(0.2):
            with self._lock:
                if self._stop.is_set() or self.alive():
                    continue
                code = self.process.returncode
                requeued = self.store.recover()
                self.say(f"worker stopped (exit status {code}); restarting it"
                         + (f"; job {', '.join(requeued)} queued again" if requeued else ""))
                failures = failures + 1 if code not in (-signal.SIGKILL, 0) else 0
                if failures >= 5:  # it cannot start (a bad device?): wait before the next try
                    self._stop.wait(10)
                self.restarts += 1
                self._spawn()

    def restart(self) -> None:
        """Kill the worker now (cancelling its job); the watcher starts a new one."""
        with self._lock:
            if self.alive():
                self.process.kill()
                self.process.wait()
            self.store.recover()  # a job it had just claimed is queued again (a cancelled one stays cancelled)
            self.restarts += 1
            self._spawn()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self.alive():
                self.process.kill()
                self.process.wait()


if __name__ == "__main__":
    sys.exit(main())
