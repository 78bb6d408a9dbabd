"""Find installed models in the weights home and load each one once per process."""
from __future__ import annotations

from functools import lru_cache
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


@lru_cache(maxsize=16)
def _load(folder: Path, configuration: str, folds: tuple[int, ...] | None, device: str):
    from totalseg.predict.model import load_model

    loaded = load_model(folder, configuration, folds)
    if device != "cpu":
        loaded.networks = [net.to(device) for net in loaded.networks]
    return loaded


def load(model: Model, folds: tuple[int, ...] | None, device: str = "cpu"):
    """The model's networks, loaded once per process and kept for later calls."""
    return _load(model_folder(model), model.configuration, folds, device)
