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


def roi_features(labels: np.ndarray, data: np.ndarray, class_map: dict[int, str]) -> list[float]:
    """Median of the min-max normalised intensities (of the int16 image) in each ROI organ; 0.0 if absent."""
    ct = np.asarray(data).astype(np.int16).astype(np.float64)
    lo, hi = ct.min(), ct.max()
    norm = (ct - lo) / (hi - lo) if hi > lo else np.zeros_like(ct)
    ids = {name: k for k, name in class_map.items()}
    out = []
    for name in ROI_ORGANS:
        mask = labels == ids[name] if name in ids else None
        out.append(float(np.median(norm[mask]).round(5)) if mask is not None and mask.any() else 0.0)
    return out


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
    # quiet: the input checks of that inner total_mr run would call a CT "not an MR", which is the question here
    seg = totalsegmentator(img, None, ml=True, fast=True, task="total_mr", quiet=True, device=device)
    from totalseg.registry import get_task

    class_map = dict(get_task("total_mr").classes)
    return predict(roi_features(np.asanyarray(seg.dataobj), img.get_fdata(), class_map), boosters)
