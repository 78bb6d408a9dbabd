"""Find installed models in the weights home and load them, keeping the last one loaded."""
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


# The model used last stays loaded (a run of many images with one model loads it once); another
# model replaces it, dropped before the new one loads. Keeping all five parts of `total` would
# hold ~0.6 GB to save ~0.3 s of loading each, next to minutes of inference.
_last: tuple[tuple, object] | None = None


def _load(folder: Path, configuration: str, folds: tuple[int, ...] | None, device: str):
    global _last
    from totalseg.predict.model import load_model

    key = (folder, configuration, folds, device)
    if _last is not None and _last[0] == key:
        return _last[1]
    _last = None
    loaded = load_model(folder, configuration, folds)
    loaded.kernel_checks = home.home_dir() / "kernel_checks" / f"{folder.parent.name}.json"
    if device != "cpu":
        loaded.networks = [net.to(device) for net in loaded.networks]
    _last = (key, loaded)
    return loaded


def load(model: Model, folds: tuple[int, ...] | None, device: str = "cpu"):
    """The model's networks; the model loaded last is kept for the next call."""
    return _load(model_folder(model), model.configuration, folds, device)
