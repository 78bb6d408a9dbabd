"""totalseg: TotalSegmentator inference, faithful to the official masks, fast on CPU and GPU.

Imports stay light here: ``totalseg.totalsegmentator`` loads torch only when called.
"""
from __future__ import annotations

from totalseg.version import OFFICIAL_VERSION, __version__

__all__ = ["OFFICIAL_VERSION", "__version__", "totalsegmentator", "check_options", "Predictor"]


def totalsegmentator(*args, **kwargs):
    """Segment an image; see :func:`totalseg.run.api.totalsegmentator`."""
    from totalseg.run.api import totalsegmentator as _run

    return _run(*args, **kwargs)


def check_options(options: dict) -> None:
    """Refuse, with a one-line :class:`totalseg.errors.UserError`, keyword options of :func:`totalsegmentator`
    that are unknown, malformed or not honoured, before any input is read (a service checks a job's options
    with it when the job is submitted)."""
    from totalseg.run.api import check_options as _check

    _check(options)


def __getattr__(name: str):
    if name == "Predictor":  # imported on first use: torch stays unloaded until a model runs
        from totalseg.run.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'totalseg' has no attribute {name!r}")
