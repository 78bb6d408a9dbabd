"""``segment_cohort``: every case of a cohort through one set of loaded models, resumable and failure-isolated.

The cohort folder holds ``<case_id>/`` per finished case (exactly what ``TotalSegmentator`` writes for it),
``cases.csv`` (a row per case: done or failed, with the error) and, with statistics, ``statistics.csv``.
What is on disk decides what a rerun does: a case folder means done (skipped), a ``failed`` row is
skipped unless ``retry_failed``, anything else (never started, or cut off) is run again.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from totalseg.batch.discover import Case, discover_cases
from totalseg.batch.layout import case_folder, clear_staging, cohort_lock
from totalseg.batch.progress import CohortBar
from totalseg.batch.stats_table import STATS_CSV, STATS_PARQUET, parquet_available, statistics_rows, \
    write_statistics_table
from totalseg.batch.table import CASES_CSV, DONE, FAILED, CaseRow, read_rows, write_rows
from totalseg.errors import UserError
from totalseg.notice import notice_printer
from totalseg.run.engine import chosen_engine

_TABLES = (CASES_CSV, STATS_CSV, STATS_PARQUET)


@dataclass
class CohortResult:
    """What a run left: every case's row (cohort order), and the counts."""

    rows: list[CaseRow]
    skipped: int = 0  # done before this run
    files: list[Path] = field(default_factory=list)  # the tables written

    @property
    def failed(self) -> list[CaseRow]:
        return [r for r in self.rows if r.status == FAILED]

    @property
    def done(self) -> list[CaseRow]:
        return [r for r in self.rows if r.status == DONE]


def segment_cohort(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                   retry_failed: bool = False, quiet: bool = False, device: str | None = None,
                   engine: str | None = None, predictor=None, in_flight: int = 2, ray: bool | str | None = None,
                   ray_cpus_per_worker: int | None = None, ray_workers: int | None = None,
                   **options: Any) -> CohortResult:
    """Segment every case of ``inputs`` (folders, files, .txt/.csv lists) into ``out_dir``.

    ``options``: those of :func:`totalseg.totalsegmentator` (task, fast, ml, statistics, ...), the same for
    every case. ``predictor``: a loaded :class:`totalseg.Predictor` to reuse (else one is made from ``device``
    and ``engine``). ``in_flight``: cases in progress at once (2: one reads/writes while the other runs the
    networks). ``ray``: a cluster address, or True ($RAY_ADDRESS, this machine's cluster, or a new one). Returns a :class:`CohortResult`;
    failed cases are rows, not exceptions.
    """
    _check_options(options)
    if in_flight < 1:
        raise UserError(f"in_flight (--in-flight) must be at least 1 (got {in_flight})")
    if predictor is not None and (device is not None or engine is not None or ray):
        raise UserError("device and engine are the predictor's; with a predictor give neither (nor ray)")
    engine = chosen_engine(engine)
    cases = discover_cases(inputs)
    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise UserError(f"the output {out} is a file; give a folder for the cohort")
    say = notice_printer(quiet)
    keep = _models_per_case(options, say, quiet, install=not ray)
    out.mkdir(parents=True, exist_ok=True)
    with cohort_lock(out):
        clear_staging(out, _TABLES)
        rows, todo, skipped = _resume(cases, read_rows(out), out, retry_failed)
        order = [c.case_id for c in cases]
        write_rows(out, _in_order(rows, order))
        if len(todo) < len(cases):
            say(f"{len(cases)} cases: {skipped} already done, {len(cases) - len(todo) - skipped} failed before "
                f"(rerun with --retry-failed to retry them), {len(todo)} to run")
        case_options = {**options, "quiet": True}
        bar = CohortBar(len(todo), quiet)
        try:
            results = _runner(todo, out, case_options, device, engine, keep, predictor, in_flight, ray,
                              ray_cpus_per_worker, ray_workers, bar.note)
            _collect(results, rows, order, out, bar)
        finally:
            bar.close()
        clear_staging(out)
        files = [out / CASES_CSV]
        if options.get("statistics"):
            files += _statistics(out, cases, rows, say)
    return CohortResult([rows[i] for i in order], skipped, files)


def _check_options(options: dict[str, Any]) -> None:
    """Each case's options: the table's per-case options only, checked as a single run checks them."""
    from totalseg.run.options import collect, per_case_names, table

    for name in options:
        if name in table() and name not in per_case_names():
            raise UserError(f"{name} is not a per-case option in a cohort (each case folder gets its outputs and "
                            "run_report.json; pass quiet, device and engine to segment_cohort)")
    for name, o in table().items():
        if o.path_or_flag and options.get(name) not in (None, False, True):
            raise UserError(f"{name} takes no path in a cohort: its files go into each case folder")
    collect(options)


def _models_per_case(options: dict[str, Any], say, quiet: bool, install: bool) -> int:
    """How many models one case may run (the predictor keeps them all loaded); checks the task and the
    ROI names, and installs missing weights first (as a single run would), before any case starts."""
    from totalseg.registry import get_task
    from totalseg.run.options import collect
    from totalseg.run.plan import plan_options, plan_run

    values = collect(options)
    models = plan_run(get_task(values.task), plan_options(values)).models()
    if install:
        from totalseg.install import ensure_installed, missing_models, source_from_environment

        if missing_models(models):
            ensure_installed(models, source_from_environment(), quiet=quiet, say=say)
    other = {"total": "total_mr", "total_mr": "total"}.get(values.task)  # a DICOM series' modality may switch them
    if other is not None:
        try:
            models = [*models, *plan_run(get_task(other), plan_options(values)).models()]
        except UserError:
            pass  # options that fit only the task asked for: that task's cases fail on their own
    return len({m.id for m in models})


def _resume(cases: list[Case], old: dict[str, CaseRow], out: Path,
            retry_failed: bool) -> tuple[dict[str, CaseRow], list[Case], int]:
    """The table as the disk says it is, the cases to run, and how many were done already."""
    rows: dict[str, CaseRow] = {}
    todo: list[Case] = []
    skipped = 0
    for case in cases:
        row = old.get(case.case_id)
        if case_folder(out, case.case_id).is_dir():
            skipped += 1  # the folder is the proof; a missing or stale row is rebuilt
            rows[case.case_id] = row if row and row.status == DONE else CaseRow(case.case_id, str(case.input),
                                                                                DONE)
        elif row is not None and row.status == FAILED and not retry_failed:
            rows[case.case_id] = row
        else:
            todo.append(case)
    running = {c.case_id for c in todo}
    for case_id, row in old.items():  # rows of cases not in this run's inputs stay
        if case_id not in rows and case_id not in running:
            rows[case_id] = row
    return rows, todo, skipped


def _runner(todo, out, options, device, engine, keep, predictor, in_flight, ray, cpus, workers,
            note) -> Iterator[CaseRow]:
    """The rows of the cases run, locally or on Ray, as they finish."""
    if not todo:
        return iter(())
    if ray:
        from totalseg.batch.run_ray import RaySettings, run_ray

        env = {k: v for k, v in os.environ.items() if k.startswith("TOTALSEG_")}
        settings = RaySettings(None if ray is True else str(ray), cpus, workers, env)
        return run_ray(todo, out, options, device or "gpu", engine, keep, settings, note)
    from totalseg.batch.run_local import run_local
    from totalseg.batch.worker import CaseRunner

    if predictor is None:
        from totalseg.run.predictor import Predictor

        predictor = Predictor(device or "gpu", engine, keep_models=keep, notice=note, progress_bars=False)
    predictor.keep_models = max(predictor.keep_models, keep)  # else each case would load its models again
    return run_local(todo, out, options, CaseRunner(predictor), in_flight)


def _in_order(rows: dict[str, CaseRow], order: list[str]) -> list[CaseRow]:
    """The table's rows: the cohort's cases in input order, then rows of cases from earlier inputs."""
    known = set(order)
    return [rows[i] for i in order if i in rows] + [r for i, r in rows.items() if i not in known]


def _collect(results: Iterator[CaseRow], rows: dict[str, CaseRow], order: list[str], out: Path,
             bar: CohortBar) -> None:
    """Record each finished case (the table rewritten atomically at once) and move the bar."""
    for row in results:
        rows[row.case_id] = row
        write_rows(out, _in_order(rows, order))
        bar.update(row)


def _statistics(out: Path, cases: list[Case], rows: dict[str, CaseRow], say) -> list[Path]:
    """statistics.csv (and .parquet) of every done case, from their statistics.json files."""
    done = [(c.case_id, case_folder(out, c.case_id)) for c in cases if rows[c.case_id].status == DONE]
    files = write_statistics_table(out, statistics_rows(done))
    if not parquet_available():
        say("NOTE: statistics.parquet not written: pyarrow is not installed (pip install pyarrow); "
            "statistics.csv has the same table")
    return files
