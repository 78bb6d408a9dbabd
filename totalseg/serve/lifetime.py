"""A child process that must not outlive the service that started it."""
from __future__ import annotations

import signal


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when the service dies, so no orphan runs a job twice."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere serve_forever notices the new parent between jobs
