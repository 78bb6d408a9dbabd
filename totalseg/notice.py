"""Messages for the user: one line each on stderr, nothing with ``quiet``."""
from __future__ import annotations

import sys
from typing import Callable

Notice = Callable[[str], None]


def notice_printer(quiet: bool = False) -> Notice:
    """A function that prints a message on its own line to stderr (does nothing when ``quiet``)."""
    def notice(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)
    return notice
