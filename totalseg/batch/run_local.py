"""Run a cohort's cases in this process: one predictor, ``in_flight`` cases at a time on threads.

With two cases in flight, one case's reading, resampling and writing overlap with the other's networks
(the predictor runs one network at a time; see :mod:`totalseg.batch.worker`). The threads are daemons:
an interrupted run stops at once, and the cases it leaves unfinished are redone by the next run.
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from totalseg.batch.discover import Case
from totalseg.batch.table import FAILED, CaseRow
from totalseg.batch.worker import CaseRunner, one_line


def run_local(cases: Sequence[Case], out_dir: Path, options: Mapping[str, Any], runner: CaseRunner,
              in_flight: int = 2) -> Iterator[CaseRow]:
    """Run ``cases``; yields each case's row as it finishes (in the order they finish)."""
    todo: queue.Queue[Case] = queue.Queue()
    for case in cases:
        todo.put(case)
    finished: queue.Queue[CaseRow] = queue.Queue()

    def work() -> None:
        while True:
            try:
                case = todo.get_nowait()
            except queue.Empty:
                return
            try:
                finished.put(runner.run(case, out_dir, options))
            except BaseException as e:  # noqa: BLE001 - the main thread must get a row for every case
                finished.put(CaseRow(case.case_id, str(case.input), FAILED, one_line(e)))

    for _ in range(max(1, min(in_flight, len(cases)))):
        threading.Thread(target=work, name="totalseg-case", daemon=True).start()
    for _ in cases:
        yield finished.get()
