"""Contrast phase of a CT (``totalseg_get_phase``), the official method.

Twenty features: the median intensity (HU) of 16 structures in the fast ``total`` segmentation and
of 4 neck vessels in the ``headneck_bones_vessels`` segmentation (0.0 for those when the brain is
not in view, i.e. its volume is at most 100 mm³), masks at the border included. Five xgboost
regressors predict the time since contrast injection (s); their mean decides the phase.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

ORGANS = ("liver", "pancreas", "urinary_bladder", "gallbladder", "heart", "aorta", "inferior_vena_cava",
          "portal_vein_and_splenic_vein", "iliac_vena_left", "iliac_vena_right", "iliac_artery_left",
          "iliac_artery_right", "pulmonary_vein", "brain", "colon", "small_bowel")
NECK_VESSELS = ("internal_carotid_artery_right", "internal_carotid_artery_left",
                "internal_jugular_vein_right", "internal_jugular_vein_left")
FEATURES = tuple(f"{name}_intensity" for name in ORGANS + NECK_VESSELS)
# Brain volume (mm³) above which the head/neck model runs for the neck vessel features.
BRAIN_MIN_VOLUME = 100.0

# (upper bound of the time since injection in s, phase, probability), first match wins.
_PHASES = ((5, "native", 1.0), (10, "native", 0.7), (20, "arterial_early", 0.7),
           (30, "arterial_early", 1.0), (50, "arterial_late", 1.0), (60, "arterial_late", 0.7),
           (90, "portal_venous", 1.0), (100, "portal_venous", 0.7))


def phase_of(pi_time: float) -> tuple[str, float]:
    """Phase name and its probability for a time since injection (official bins)."""
    for upper, phase, probability in _PHASES:
        if pi_time < upper:
            return phase, probability
    return "portal_venous", 0.3  # too few delayed-phase training cases upstream to name it


def needs_neck(stats_total: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether the brain is in view, so the head/neck model has to run."""
    return float(stats_total.get("brain", {}).get("volume", 0.0)) > BRAIN_MIN_VOLUME


def features(stats_total: Mapping[str, Mapping[str, Any]],
             stats_neck: Mapping[str, Mapping[str, Any]] | None = None) -> list[float]:
    """The 20 features in model order from statistics dicts (``{class: {"intensity": ...}}``).

    ``stats_neck`` None gives 0.0 for the neck vessels (brain not in view). A class missing from
    ``stats_total`` is an error: these must be the statistics of the ``total`` task.
    """
    from totalseg.errors import UserError

    missing = [name for name in ORGANS if name not in stats_total]
    if missing:
        raise UserError(f"the statistics lack {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}; "
                        "give the statistics.json of the total task (median, -sa median -sii)")
    values = [float(stats_total[name]["intensity"]) for name in ORGANS]
    for name in NECK_VESSELS:
        values.append(float(stats_neck[name]["intensity"]) if stats_neck is not None else 0.0)
    return values


def predict(values: Sequence[float], boosters: Sequence) -> dict[str, Any]:
    """``{pi_time, phase, probability, pi_time_min, pi_time_max, stddev}`` as the official JSON."""
    import xgboost as xgb

    row = np.asarray([values], dtype=np.float64)
    preds = []
    for booster in boosters:
        # The model's own feature names must match ours; a mismatch means a foreign model file.
        names = booster.feature_names
        if names is not None and tuple(names) != FEATURES:
            from totalseg.errors import UserError
            raise UserError("the phase classifier expects other features than the official one; "
                            "give the official contrast_phase_classifiers_2024_07_19 models")
        dm = xgb.DMatrix(row, feature_names=list(FEATURES) if names is not None else None)
        preds.append(float(booster.predict(dm)[0]))
    arr = np.array(preds, dtype=np.float32)  # xgboost returns float32 predictions
    pi_time = round(float(np.mean(arr)), 2)
    phase, probability = phase_of(pi_time)
    return {"pi_time": pi_time, "phase": phase, "probability": probability,
            "pi_time_min": round(float(arr.min()), 2), "pi_time_max": round(float(arr.max()), 2),
            "stddev": round(float(np.std(arr)), 4)}


def _median_statistics(image, device: str, quiet: bool, debug: bool, **task: Any) -> dict:
    """Statistics as the official phase classifier was trained on: median intensities, border masks included."""
    from totalseg.run.api import totalsegmentator

    _, stats = totalsegmentator(image, None, ml=True, statistics=True, statistics_exclude_masks_at_border=False,
                                stats_aggregation="median", quiet=quiet, device=device, debug=debug, **task)
    return stats


def segment_statistics(image, device: str = "gpu", quiet: bool = True, say: Callable[[str], None] = lambda m: None,
                       debug: bool = False) -> tuple[dict, dict | None]:
    """Median statistics (border masks included) of the fast total model, and of
    headneck_bones_vessels when the brain is in view, by running the models on ``image``."""
    say("Running the fast total model...")
    stats_total = _median_statistics(image, device, quiet, debug, fast=True)
    stats_neck = None
    if needs_neck(stats_total):
        say("Brain in view: running headneck_bones_vessels...")
        stats_neck = _median_statistics(image, device, quiet, debug, task="headneck_bones_vessels")
    return stats_total, stats_neck


def contrast_phase(image=None, stats_total: Mapping | None = None, stats_neck: Mapping | None = None,
                   model_path: str | os.PathLike | None = None, device: str = "gpu", quiet: bool = True,
                   say: Callable[[str], None] = lambda m: None, debug: bool = False) -> dict[str, Any]:
    """The official phase JSON for ``image`` (path or nibabel image) or for given statistics.

    With ``stats_total`` (a statistics dict of the total task) no model runs for those features;
    the neck vessel features come from ``stats_neck``, from ``stats_total`` when it holds them, or
    from running headneck_bones_vessels on ``image`` when the brain is in view.
    """
    from totalseg.classify.resources import PHASE, classifiers
    from totalseg.errors import UserError

    boosters = classifiers(PHASE, model_path, quiet=quiet)  # before any long model run
    if stats_total is None:
        if image is None:
            raise UserError("give an image or statistics")
        stats_total, stats_neck = segment_statistics(image, device, quiet, say, debug)
    elif stats_neck is None and needs_neck(stats_total):
        if all(name in stats_total for name in NECK_VESSELS):
            stats_neck = stats_total
        elif image is not None:
            say("Brain in view: running headneck_bones_vessels...")
            stats_neck = _median_statistics(image, device, quiet, debug, task="headneck_bones_vessels")
        else:
            raise UserError("the brain is in view, so the neck vessel statistics are needed; give the image too")
    return predict(features(stats_total, stats_neck), boosters)
