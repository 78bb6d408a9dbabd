"""Radiomics features per class mask (``--radiomics``) → ``statistics_radiomics.json``.

Same layout and settings as the official tool (official-behaviour §4.12): for every ``*.nii.gz``
mask of the output folder, in sorted order, pyradiomics' ``shape`` and ``firstorder`` feature
classes are computed on the input image after resampling both to 3 mm (geometry tolerance 1e-3);
keys lose their ``original_`` prefix and values are rounded to 4 decimals. A mask that is all
zeros (or all ones), or on which pyradiomics fails, gets the 107 features of pyradiomics' default
set, all 0. pyradiomics is an optional extra: ``pip install "totalseg[radiomics]"``.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np

from totalseg.errors import UserError

SETTINGS = {"resampledPixelSpacing": [3, 3, 3], "geometryTolerance": 1e-3}
ENABLED_CLASSES = ("shape", "firstorder")
# pyradiomics' default feature set, in the order its feature classes list them.
DEFAULT_CLASSES = ("shape", "firstorder", "glcm", "gldm", "glrlm", "glszm", "ngtdm")
OUTPUT_NAME = "statistics_radiomics.json"


def _radiomics():
    try:
        import radiomics
        from radiomics import featureextractor
    except ImportError:
        raise UserError('--radiomics needs pyradiomics: pip install "totalseg[radiomics]" '
                        "(the pyradiomics-bhklab build)") from None
    # pyradiomics logs every resampling step at INFO/WARNING level.
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    return radiomics, featureextractor


def default_feature_names() -> list[str]:
    """The 107 names of pyradiomics' default feature set (``<class>_<feature>``)."""
    radiomics, _ = _radiomics()
    classes = radiomics.getFeatureClasses()
    return [f"{cls}_{name}" for cls in DEFAULT_CLASSES
            for name, deprecated in classes[cls].getFeatureNames().items() if not deprecated]


def _extractor():
    _, featureextractor = _radiomics()
    extractor = featureextractor.RadiomicsFeatureExtractor(**SETTINGS)
    extractor.disableAllFeatures()
    for cls in ENABLED_CLASSES:
        extractor.enableFeatureClassByName(cls)
    return extractor


def mask_features(image_path: str | os.PathLike, mask_path: str | os.PathLike,
                  warn: Callable[[str], None] = lambda m: None, extractor=None) -> dict[str, float]:
    """``{feature: value}`` of one binary mask file on the image file (rounded to 4 decimals)."""
    mask = np.asanyarray(nib.load(os.fspath(mask_path)).dataobj)
    features: dict[str, Any]
    if np.unique(mask).size > 1:
        extractor = extractor or _extractor()
        try:
            with warnings.catch_warnings():  # numpy warns on the empty slices of tiny masks
                warnings.simplefilter("ignore", RuntimeWarning)
                raw = extractor.execute(os.fspath(image_path), os.fspath(mask_path))
            features = {k[len("original_"):]: v for k, v in raw.items() if k.startswith("original_")}
        except Exception as err:  # pyradiomics raises plain exceptions for tiny or odd masks
            warn(f"radiomics failed for {Path(mask_path).name} ({err}); its features are set to 0")
            features = dict.fromkeys(default_feature_names(), 0)
    else:
        features = dict.fromkeys(default_feature_names(), 0)
    return {k: round(float(v), 4) for k, v in features.items()}


def _mask_name(path: Path) -> str:
    return path.name.split(".")[0]


def folder_features(image_path: str | os.PathLike, mask_dir: str | os.PathLike,
                    warn: Callable[[str], None] = lambda m: None) -> dict[str, dict[str, float]]:
    """``{mask name: features}`` for every ``*.nii.gz`` in ``mask_dir``, in sorted order."""
    masks = sorted(Path(mask_dir).glob("*.nii.gz"))
    extractor = _extractor()
    return {_mask_name(m): mask_features(image_path, m, warn, extractor) for m in masks}


def write_radiomics(image_path: str | os.PathLike, mask_dir: str | os.PathLike,
                    out_path: str | os.PathLike | None = None,
                    warn: Callable[[str], None] = lambda m: None) -> Path:
    """Compute :func:`folder_features` and write them (JSON, indent 4, atomically); returns the path.

    ``out_path`` defaults to ``<mask_dir>/statistics_radiomics.json``.
    """
    from totalseg.write.statistics import write_statistics

    features = folder_features(image_path, mask_dir, warn)
    target = Path(out_path) if out_path is not None else Path(mask_dir) / OUTPUT_NAME
    write_statistics(features, target)
    return target
