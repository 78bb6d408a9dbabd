"""Cohorts: many cases through one set of loaded models (``totalseg_batch``, :func:`segment_cohort`).

Modules by job: ``discover`` (inputs to cases and ids), ``table`` (cases.csv), ``layout`` (case folders,
staging, the run lock), ``worker`` (one case), ``run_local`` / ``run_ray`` (where cases run),
``stats_table`` (statistics.csv), ``progress`` (the bar), ``cohort`` (the whole run). Torch loads when a
case runs, ray only with ``ray=``.

For case-by-case work in a notebook, :class:`totalseg.Predictor` holds the loaded models::

    from totalseg import Predictor
    from totalseg.batch import segment_cohort

    with Predictor(device="gpu") as predictor:
        segment_cohort(["scans/"], "out/", predictor=predictor, fast=True, statistics=True)
        predictor.segment("another.nii.gz", "out_another/", fast=True)   # same models, still loaded
"""
from __future__ import annotations

from totalseg.batch.cohort import CohortResult, segment_cohort

__all__ = ["CohortResult", "segment_cohort"]
