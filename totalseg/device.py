"""Device names of the official command line (gpu, gpu:N, cpu, mps) to torch devices."""
from __future__ import annotations

import re
from typing import Callable

from totalseg.errors import UserError


def device_kind(device) -> str:
    """The kind of a torch device, given by name ("cuda:1", "cpu", "meta") or as a ``torch.device``:
    "cuda", "cpu", "mps" or "meta". The one way to ask "which device?" (a name's prefix and a
    ``torch.device``'s ``type`` are the same string), so callers need not import torch for it."""
    return str(device).split(":", 1)[0]


def check_device(name: str) -> None:
    if name not in ("gpu", "cpu", "mps") and not re.fullmatch(r"gpu:\d+", name):
        raise UserError(f"unknown device '{name}'; use gpu, gpu:N, cpu or mps")


def select_device(name: str, notice: Callable[[str], None]) -> str:
    """The torch device for ``name``; without CUDA (or that GPU) fall back to the CPU with a notice."""
    check_device(name)
    if name == "cpu":
        return "cpu"
    import torch

    if name == "mps":
        if torch.backends.mps.is_available():
            return "mps"
        notice("MPS is not available; running on the CPU.")
        return "cpu"
    index = int(name.split(":")[1]) if ":" in name else 0
    if torch.cuda.is_available() and index < torch.cuda.device_count():
        return f"cuda:{index}"
    notice("No GPU found (or not that one); running on the CPU. This is slower: use --fast for a quick result.")
    return "cpu"
