"""Messages for the user: one line each on stderr, nothing with ``quiet``."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

Notice = Callable[[str], None]


def notice_printer(quiet: bool = False) -> Notice:
    """A function that prints a message on its own line to stderr (does nothing when ``quiet``)."""
    def notice(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)
    return notice


@contextmanager
def timed(notice: Notice, done: str) -> Iterator[None]:
    """Say ``done`` with the seconds the block took (as the official tool reports each stage)."""
    start = time.perf_counter()
    yield
    notice(f"  {done} in {time.perf_counter() - start:.2f}s")
