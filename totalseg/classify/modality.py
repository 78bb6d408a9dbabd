"""CT or MR (``totalseg_get_modality``), the official method.

Default: four whole-image features ``[mean, std, min, max]`` of the intensities go to five xgboost
classifiers; each votes 0 (CT) or 1 (MR) and the mean vote decides ("ct" below 0.5), its distance
from the losing side being the probability. ``normalized=True`` (``-n``) is for images whose
intensities are no longer HU / scanner values: the median of the min-max normalised intensities
in 16 structures of the fast ``total_mr`` segmentation are fed to the "normalized" ensemble.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

# Structures of the normalised-intensity features, in the order the official feeds them.
ROI_ORGANS = ("brain", "esophagus", "colon", "spinal_cord", "scapula_left", "scapula_right",
              "femur_left", "femur_right", "hip_left", "hip_right", "gluteus_maximus_left",
              "gluteus_maximus_right", "autochthon_left", "autochthon_right", "iliopsoas_left",
              "iliopsoas_right")


def image_features(data: np.ndarray) -> list[float]:
    """``[mean, std, min, max]`` of the whole image (float64, as ``get_fdata()`` gives)."""
    arr = np.asarray(data, dtype=np.float64)
    return [float(np.mean(arr)), float(np.std(arr)), float(np.min(arr)), float(np.max(arr))]


def predict(values: Sequence[float], boosters: Sequence) -> dict[str, Any]:
    """``{"modality": "ct"|"mr", "probability": p}`` from the five classifiers' votes."""
    import xgboost as xgb

    row = np.asarray([values], dtype=np.float64)
    votes = []
    for booster in boosters:
        names = booster.feature_names
        if names is not None and len(names) != row.shape[1]:
            from totalseg.errors import UserError
            raise UserError(f"the modality classifier expects {len(names)} features, not {row.shape[1]}; "
                            "give the matching official modality classifiers")
        # Fed by position, like the official (the normalized models' stored names are in another
        # order than the values fed to them); the names are attached only to pass xgboost's check.
        p = float(booster.predict(xgb.DMatrix(row, feature_names=names))[0])
        votes.append(1.0 if p > 0.5 else 0.0)  # the label XGBClassifier.predict gives
    mean = float(np.mean(votes))
    if mean < 0.5:
        return {"modality": "ct", "probability": float(1 - mean)}
    return {"modality": "mr", "probability": mean}


def modality(image, normalized: bool = False, model_path: str | os.PathLike | None = None,
             device: str = "gpu", quiet: bool = True, say: Callable[[str], None] = lambda m: None) -> dict:
    """Modality JSON for ``image`` (a path or nibabel image)."""
    import nibabel as nib

    from totalseg.classify.resources import MODALITY, MODALITY_NORMALIZED, classifiers

    boosters = classifiers(MODALITY_NORMALIZED if normalized else MODALITY, model_path, quiet=quiet)
    img = nib.load(os.fspath(image)) if isinstance(image, (str, os.PathLike)) else image
    if not normalized:
        return predict(image_features(img.get_fdata()), boosters)
    from totalseg.run.api import totalsegmentator

    say("Running the fast total_mr model...")
    # As the official: median statistics of normalised intensities on the fast model's grid. quiet: the input
    # checks of that inner total_mr run would call a CT "not an MR", which is the question here.
    _, stats = totalsegmentator(img, None, ml=True, fast=True, statistics=True, task="total_mr",
                                statistics_exclude_masks_at_border=False, stats_aggregation="median",
                                statistics_normalized_intensities=True, quiet=True, device=device)
    return predict([stats[organ]["intensity"] for organ in ROI_ORGANS], boosters)
