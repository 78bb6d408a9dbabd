"""QC flags of a case: what a person should look at first. All flag rules of the report live here.

A flag is ``{"kind": ..., "text": ...}``; ``kind`` is one of :data:`KINDS` (the gallery filters by it), ``text``
says what was found. Sources:

* the run: failed runs, and the input-check warnings of the run report JSON (``--report``: its ``warnings``,
  one line each, or, read tolerantly, lists of objects under a key like ``input_checks``); without a run
  report the same checks (:func:`totalseg.load.image_checks.image_warnings`: not HU, modality, orientation) are run here
  on the image;
* the segmentation: masks cut by the field of view (from the statistics' ``incomplete``);
* the cohort: a class whose volume is far outside the cohort's distribution, a class missing where most
  cases have it.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

import numpy as np

Flag = dict[str, str]
Stats = Mapping[str, Mapping[str, Any]]  # {class: {"volume": mm3, "incomplete": bool, "centroid_vox": ...}}

KINDS = {
    "failed": "run failed",
    "not_hu": "not HU",
    "flipped": "flipped",
    "modality": "modality",
    "input_warning": "input warning",
    "volume_outlier": "volume outlier",
    "missing_class": "class missing",
    "cut_by_fov": "cut by FOV",
}

# Cohort checks.
MIN_CASES = 5  # fewer cases say nothing about a distribution
OUTLIER_Z = 3.5  # robust z-score of log volume
MIN_RATIO = 1.5  # and at least this factor from the median
MIN_MEDIAN_MM3 = 1000.0  # classes whose typical volume is below 1 ml are too noisy to compare
MISSING_SHARE = 0.8  # a class present in at least this share of the cases should be in every one
MAX_NAMES = 4  # names listed in one flag's text


def _flag(kind: str, text: str) -> Flag:
    return {"kind": kind, "text": text}


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES])
    return shown + (f" +{len(names) - MAX_NAMES}" if len(names) > MAX_NAMES else "")


def fov_flags(stats: Stats) -> list[Flag]:
    """Masks reaching into the border slices: cut off by the field of view."""
    cut = [name for name, entry in stats.items() if entry.get("incomplete") and float(entry.get("volume") or 0)]
    return [_flag("cut_by_fov", f"{len(cut)} masks cut by the field of view: {_names(cut)}")] if cut else []


def _kind_of(text: str) -> str:
    """The kind of an input-check line or code (the checks' wording: totalseg/load/image_checks.py)."""
    t = text.lower()
    if "flip" in t or "orient" in t:
        return "flipped"
    if "not hounsfield" in t or re.search(r"(^|[^a-z])not[ _-]?hu([^a-z]|$)", t):
        return "not_hu"
    if "field of view" in t or "cut off" in t or "cut_off" in t:
        return "cut_by_fov"
    if "modal" in t or re.search(r"(^|[^a-z])mr([^a-z]|$)", t) or "does not look like a ct" in t:
        return "modality"
    return "input_warning"


def report_flags(report: Mapping[str, Any] | None) -> list[Flag]:
    """Input-check warnings of a run report JSON: a list of texts or of objects under a key like ``warnings``,
    ``input_checks`` or ``checks``, or such a list inside an object (read tolerantly)."""
    if not isinstance(report, Mapping):
        return []
    flags = []
    for key, value in report.items():
        if not any(word in key.lower() for word in ("warning", "check")):
            continue
        items = value
        if isinstance(value, Mapping):  # {"not_hu": "...", ...} or {"warnings": [...]}
            inner = [v for k, v in value.items() if "warning" in k.lower() and isinstance(v, list)]
            items = inner[0] if inner else [
                {"code": k, "message": v} for k, v in value.items() if v not in (None, False, [], {}, "", "ok")]
        if not isinstance(items, list):
            continue
        for item in items:
            if isinstance(item, str):
                flags.append(_flag(_kind_of(item), item))
            elif isinstance(item, Mapping):
                if item.get("passed") is True or item.get("ok") is True:
                    continue
                code = str(item.get("code") or item.get("kind") or item.get("check") or item.get("name") or "")
                text = str(item.get("message") or item.get("text") or item.get("detail") or code)
                flags.append(_flag(_kind_of(code or text), text if text != "True" else code))
    return flags


def image_flags(image: np.ndarray, affine: np.ndarray, modality: str, task: str | None) -> list[Flag]:
    """The run's input checks, run here for a case without a run report."""
    from totalseg.load.image_checks import image_warnings
    from totalseg.volume import Volume

    lines = image_warnings(Volume(np.asarray(image), np.asarray(affine, dtype=float)), modality.lower(),
                           task or ("total_mr" if modality.upper() == "MR" else "total"))
    return [_flag(_kind_of(line), line) for line in lines]


def case_flags(*, status: str = "done", error: str = "", report: Mapping[str, Any] | None = None,
               image: np.ndarray | None = None, affine: np.ndarray | None = None, modality: str = "CT",
               task: str | None = None, stats: Stats | None = None) -> list[Flag]:
    """Every flag one case gets on its own (the cohort adds :func:`cohort_flags`)."""
    flags: list[Flag] = []
    if status != "done":
        flags.append(_flag("failed", f"run {status}: {error}".rstrip(": ")))
    checked = isinstance(report, Mapping) and any("warning" in k.lower() or "check" in k.lower() for k in report)
    if checked:
        flags += report_flags(report)
    elif image is not None and affine is not None:
        flags += image_flags(image, affine, modality, task)
    if stats is not None:  # the cut masks from the full statistics replace the run's one-line summary
        flags = [f for f in flags if f["kind"] != "cut_by_fov"] + fov_flags(stats)
    return flags


def cohort_flags(volumes: Mapping[str, Mapping[str, tuple[float, bool]]]) -> dict[str, list[Flag]]:
    """Flags from comparing cases: ``volumes`` is ``{case: {class: (volume mm3, incomplete)}}`` of done cases.

    A volume is an outlier when its log lies more than :data:`OUTLIER_Z` robust standard deviations (median
    absolute deviation) from the cohort's median and at least :data:`MIN_RATIO` times away from it; masks cut
    by the field of view are left out of that comparison. A class is missing when it is empty in a case but
    present in at least :data:`MISSING_SHARE` of the cases.
    """
    out: dict[str, list[Flag]] = {case: [] for case in volumes}
    if len(volumes) < MIN_CASES:
        return out
    classes = sorted({name for per_case in volumes.values() for name in per_case})
    high: dict[str, list[str]] = {case: [] for case in volumes}
    low: dict[str, list[str]] = {case: [] for case in volumes}
    missing: dict[str, list[str]] = {case: [] for case in volumes}
    for name in classes:
        present = {case: v[name] for case, v in volumes.items() if name in v and v[name][0] > 0}
        if len(present) >= MISSING_SHARE * len(volumes):
            for case, per_case in volumes.items():
                if case not in present:
                    missing[case].append(name)
        whole = {case: vol for case, (vol, incomplete) in present.items() if not incomplete}
        if len(whole) < MIN_CASES:
            continue
        logs = {case: math.log(vol) for case, vol in whole.items()}
        median = float(np.median(list(logs.values())))
        if math.exp(median) < MIN_MEDIAN_MM3:
            continue
        mad = 1.4826 * float(np.median([abs(x - median) for x in logs.values()]))
        scale = max(mad, math.log(MIN_RATIO) / OUTLIER_Z)  # near-identical volumes: only real jumps count
        for case, x in logs.items():
            if abs(x - median) / scale > OUTLIER_Z and abs(x - median) >= math.log(MIN_RATIO):
                ratio = math.exp(x - median)
                (high if ratio > 1 else low)[case].append(f"{name} {ratio:.1f}x")
    for case in volumes:
        if high[case] or low[case]:
            parts = high[case] + low[case]
            out[case].append(_flag("volume_outlier", f"volume far from the cohort median: {_names(parts)}"))
        if missing[case]:
            out[case].append(_flag("missing_class", f"missing where most cases have it: {_names(missing[case])}"))
    return out
