"""Where an installed model lives in the weights home (loading is the predictor's job)."""
from __future__ import annotations

from pathlib import Path

from totalseg import home
from totalseg.errors import WeightsError
from totalseg.registry import Model

RELEASE_URL = "https://github.com/wasserth/TotalSegmentator/releases/download/{release}/{folder}.zip"


def model_folder(model: Model, weights: Path | None = None) -> Path:
    """The result folder of ``model``; a one-line error says which one is missing and how to get it."""
    root = home.weights_dir() if weights is None else weights
    folder = root / model.folder / model.subfolder
    if not (folder / "plans.json").is_file():
        if model.release:
            how = (f"download {RELEASE_URL.format(release=model.release, folder=model.folder)} "
                   f"and unzip it into {root}")
        else:
            how = "it is a licensed model: set a licence (totalseg_set_license -l KEY) and download it"
        raise WeightsError(f"model weights missing: {model.folder}/{model.subfolder} not found in {root}; {how}")
    return folder
