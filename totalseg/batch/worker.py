"""Segment one case of a cohort into its staging folder, then move it into place; never raise for a bad case.

Several threads may run cases on one predictor at once: the networks run one at a time (a lock around
``model_labels``), while the other threads read, resample and write their cases. Everything that touches
torch runs under that lock, so each case's files are those of a single run. A DICOM case runs alone: the
DICOM reader tells damaged files by the warnings pydicom raises, caught with ``warnings.catch_warnings``,
which swaps process-wide state; another thread's warnings (or its own catch_warnings) could then hide a
damaged file or fail a good one.
"""
from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from totalseg.batch.discover import Case
from totalseg.batch.layout import case_folder, discard, new_staging, publish
from totalseg.batch.table import DONE, FAILED, CaseRow
from totalseg.errors import OUT_OF_MEMORY, UserError
from totalseg.load.dicom import is_dicom_input
from totalseg.registry import Model

RUN_REPORT = "run_report.json"  # each case folder's: what TotalSegmentator -rp writes


class _Turns:
    """Cases that may run beside others share the runner; a case that must run alone waits until it has
    the runner to itself, and the others wait for it (they do not overtake a case waiting to run alone)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._shared, self._alone, self._waiting_alone = 0, False, 0

    @contextmanager
    def hold(self, alone: bool) -> Iterator[None]:
        with self._cond:
            if alone:
                self._waiting_alone += 1
                self._cond.wait_for(lambda: not self._alone and self._shared == 0)
                self._waiting_alone -= 1
                self._alone = True
            else:
                self._cond.wait_for(lambda: not self._alone and self._waiting_alone == 0)
                self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                if alone:
                    self._alone = False
                else:
                    self._shared -= 1
                self._cond.notify_all()


class _CaseView:
    """The predictor as one case sees it: the networks under the shared lock, and a note of each model run."""

    def __init__(self, predictor, lock: threading.Lock):
        self._predictor, self._lock = predictor, lock
        self.engine, self.device = predictor.engine, predictor.device
        self.used: list[Model] = []

    def model_labels(self, model: Model, *args, **kwargs):
        self.used.append(model)
        with self._lock:
            return self._predictor.model_labels(model, *args, **kwargs)

    @contextmanager
    def model_run(self, model: Model, folds):
        """The predictor's ``model_run`` under the shared lock (``-sp``, ``-ho``)."""
        self.used.append(model)
        with self._lock, self._predictor.model_run(model, folds) as pair:
            yield pair


def _report_warnings(report: Path) -> list[str]:
    """The warnings of a case's run report."""
    manifest = json.loads(report.read_text(encoding="utf-8"))
    return [str(w) for w in manifest.get("warnings", [])]


def one_line(exc: BaseException) -> str:
    """An exception as one line: a UserError's own message, anything else with its type."""
    if isinstance(exc, MemoryError):
        return OUT_OF_MEMORY
    text = " ".join(str(exc).split())
    return text if isinstance(exc, UserError) else f"{type(exc).__name__}: {text}".rstrip(": ")


def models_text(models: list[Model]) -> str:
    return ";".join(dict.fromkeys(f"{m.folder}@{m.release or 'licensed'}" for m in models))


class CaseRunner:
    """Runs cases with one loaded predictor, from one thread or several."""

    def __init__(self, predictor):
        self.predictor = predictor
        self._lock = threading.Lock()
        self._turns = _Turns()

    def run(self, case: Case, out_dir: Path, options: Mapping[str, Any]) -> CaseRow:
        """Segment ``case`` into ``out_dir/<case_id>/``; a failure is a ``failed`` row, never an exception."""
        from totalseg.version import __version__

        with self._turns.hold(alone=is_dicom_input(case.input)):
            started = time.time()
            view = _CaseView(self.predictor, self._lock)
            status, error, warnings = self._segment(case, out_dir, options, view)
        return CaseRow(case.case_id, str(case.input), status, error, f"{time.time() - started:.2f}", __version__,
                       models_text(view.used), " | ".join(warnings))

    @staticmethod
    def _segment(case: Case, out_dir: Path, options: Mapping[str, Any],
                 view: _CaseView) -> tuple[str, str, list[str]]:
        """Status, error and warnings of one attempt at ``case``."""
        from totalseg.run.options import collect
        from totalseg.run.setup import case_output
        from totalseg.run.steps import run

        staging = None
        try:
            if not case.input.exists():
                raise UserError(f"the input does not exist: {case.input}")
            staging = new_staging(out_dir, case.case_id)
            final = case_folder(out_dir, case.case_id)
            values = collect({**options, "report": staging / RUN_REPORT})
            output = case_output(staging, values)
            # The run report names the case folder the outputs are about to be renamed to.
            run(case.input, output, values, predictor=view,
                setup_changes={"report_output": final.absolute() / output.relative_to(staging)})
            warnings = _report_warnings(staging / RUN_REPORT)
            publish(staging, final)
            return DONE, "", warnings
        except Exception as e:  # noqa: BLE001 - one bad case must not stop the cohort
            return FAILED, one_line(e), []
        finally:
            if staging is not None:
                discard(staging)  # gone after a rename; a failed attempt's files go


class CaseWorker:
    """The body of a Ray actor: one predictor, loaded once, running the cases sent to it."""

    def __init__(self, device: str, engine: str, threads: int | None, keep_models: int):
        from totalseg.run.predictor import Predictor

        predictor = Predictor(device, engine, threads=threads, keep_models=keep_models, progress_bars=False,
                              notice=lambda _: None)
        self.runner = CaseRunner(predictor)

    def ready(self) -> bool:
        """Answered once the actor is up (its creation errors surface here)."""
        return True

    def run(self, case: Case, out_dir: str, options: dict) -> CaseRow:
        return self.runner.run(case, Path(out_dir), options)
