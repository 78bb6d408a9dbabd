"""Dice and NSD as in the TotalSegmentator paper: ``metrics`` (per mask pair), ``run`` (a dataset, tables, plot)."""
from __future__ import annotations

from totalseg.evaluate.metrics import dice, nsd, surface_distances
from totalseg.evaluate.run import evaluate

__all__ = ["dice", "evaluate", "nsd", "surface_distances"]
