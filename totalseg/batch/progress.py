"""The cohort's progress bar on stderr: cases done and failed, time left; per-case failures above it."""
from __future__ import annotations

import sys

from totalseg.batch.table import FAILED, CaseRow


class CohortBar:
    """A tqdm bar over the cases to run (nothing at all when ``quiet``)."""

    def __init__(self, total: int, quiet: bool, done: int = 0, failed: int = 0):
        from tqdm import tqdm

        self.done, self.failed = done, failed
        self._bar = tqdm(total=total, desc="cases", unit="case", file=sys.stderr, disable=quiet or total == 0,
                         dynamic_ncols=True, smoothing=0.1)
        self._bar.set_postfix(done=done, failed=failed)

    def note(self, message: str) -> None:
        """A line above the bar (the bar is redrawn below it)."""
        if not self._bar.disable:
            self._bar.write(message, file=sys.stderr)

    def update(self, row: CaseRow) -> None:
        if row.status == FAILED:
            self.failed += 1
            self.note(f"FAILED {row.case_id}: {row.error}")
        else:
            self.done += 1
        self._bar.set_postfix(done=self.done, failed=self.failed, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()
