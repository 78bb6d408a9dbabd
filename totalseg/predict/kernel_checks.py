"""Remembered answers to "does this shortcut give torch's exact numbers on this machine?".

Whether a convolution on a slab equals the same convolution on the whole map depends on the kernel
the library picks, which depends on shapes, thread count, CPU and torch version, not on the data.
The answers are kept in a small JSON file per model under ``<home>/kernel_checks/`` (the model
folders stay as installed), so the check (which needs the whole output once) runs on the first use
only. A place that cannot be written is fine: the check then runs in each process.
"""
from __future__ import annotations

import json
import os
import platform
import secrets
from pathlib import Path



def machine_key() -> str:
    """torch version, intra-op threads and CPU: what the kernel choice depends on besides shapes."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"torch {torch.__version__}|threads {torch.get_num_threads()}|{cpu}"


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
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self._answers, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError:  # read-only weights: remember for this process only
            tmp.unlink(missing_ok=True)
