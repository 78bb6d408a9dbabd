"""``totalsegmentator.python_api``: the official Python entry point, forwarded to :mod:`totalseg.run.api`.

Importing this module does not import torch; a call to :func:`totalsegmentator` does.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from totalseg.run.api import totalsegmentator
from totalseg.device import check_device
from totalseg.errors import UserError

if TYPE_CHECKING:
    import torch

__all__ = ["totalsegmentator", "validate_device_type_api", "select_device"]


def validate_device_type_api(value: str) -> str:
    """``value`` if it names a device (gpu, gpu:N, cpu, mps), else ValueError (as the official)."""
    try:
        check_device(value)
    except UserError as err:
        raise ValueError(str(err)) from None
    return value


def select_device(device: str) -> "torch.device":
    """The torch device for ``device``; without CUDA (or that GPU) the CPU, with a printed notice."""
    import torch

    from totalseg.device import select_device as _select

    return torch.device(_select(device, print))
