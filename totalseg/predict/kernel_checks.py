"""Remembered answers to "does this shortcut give torch's exact numbers on this machine?".

Whether a convolution on a slab equals the same convolution on the whole map depends on the kernel
the library picks, which depends on shapes, thread count, CPU and torch version, not on the data.
The answers are kept in a small JSON file per model under ``<home>/kernel_checks/`` (the model
folders stay as installed), so the check (which needs the whole output once) runs on the first use
only. A place that cannot be written is fine: the check then runs in each process.
"""
from __future__ import annotations

import json
import platform
from functools import lru_cache
from pathlib import Path

from totalseg.errors import UserError
from totalseg.write.atomic import write_atomic


@lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> str:
    """torch version, intra-op threads and CPU: what the kernel choice depends on besides shapes."""
    import torch

    return f"torch {torch.__version__}|threads {torch.get_num_threads()}|{_cpu_name()}"


class KernelChecks:
    """A persistent ``key -> bool`` map in the JSON file ``path`` (or in memory only)."""

    def __init__(self, path: Path | None = None):
        self.path = None if path is None else Path(path)
        self._answers: dict[str, bool] = {}
        if self.path is not None:
            try:
                loaded = json.loads(self.path.read_text())
                self._answers = {k: v for k, v in loaded.items() if isinstance(v, bool)}
            except (OSError, ValueError, AttributeError):
                pass

    def get(self, key: str) -> bool | None:
        return self._answers.get(key)

    def put(self, key: str, value: bool) -> None:
        self._answers[key] = value
        if self.path is None:
            return
        text = json.dumps(self._answers, indent=1, sort_keys=True)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, lambda tmp: tmp.write_text(text))
        except (OSError, UserError):  # read-only home: remember for this process only
            pass
