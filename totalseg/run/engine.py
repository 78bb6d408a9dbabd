"""Which engine runs the networks, and on how many threads: the choices every layer asks about, with no
imports of their own (the option table, the predictor and the cohort runner all read them)."""
from __future__ import annotations

import os

from totalseg.errors import UserError

ENGINES = ("exact", "fast", "int8")


def check_engine(engine: str) -> str:
    """``engine`` if it is one of ENGINES; else the one-line refusal."""
    if engine not in ENGINES:
        raise UserError(f"unknown engine '{engine}'; use exact, fast or int8")
    return engine


def chosen_engine(engine: str | None) -> str:
    """``engine``, else ``$TOTALSEG_ENGINE`` (for scripts that cannot change their command line), else
    "exact"; checked."""
    return check_engine(engine or os.environ.get("TOTALSEG_ENGINE") or "exact")


def default_threads() -> int:
    """The cores this process may use (the official tool uses all of them on the CPU)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
