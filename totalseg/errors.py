"""Errors that reach the user as one line (exit status 1), never as a traceback."""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, options or environment, with what to do about it."""


class InputError(UserError):
    """The input image cannot be used."""


class WeightsError(UserError):
    """Model weights are missing or unusable."""


class LicenseError(UserError):
    """A licensed task was asked for without a valid licence."""


# The one message for running out of memory (a single run, or a cohort's case).
OUT_OF_MEMORY = "out of memory; try --fast, -bs (crop to the body first) or -fs (three chunks along z)"
