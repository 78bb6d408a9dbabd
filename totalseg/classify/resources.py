"""Where the contrast-phase and modality classifiers live, and how they get there.

Each classifier is an ensemble of five xgboost models saved as ``<stem>.json.<fold>`` (UBJSON bytes
despite the name, the official naming). They are kept in ``<home>/classifiers/`` beside the
weights, obtained like weights: fetched once from the official repository's resource files, or
imported from a local file or folder. The official phase classifier is a pickle
(``contrast_phase_classifiers_2024_07_19.pkl``, a dict of five ``XGBRegressor``); it is read through
an unpickler that only accepts the few xgboost and numpy names such a file holds, and its boosters
are re-saved in the ``.json.<fold>`` form, so no pickle is ever loaded twice.
"""
from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

from totalseg.errors import UserError
from totalseg.home import home_dir
from totalseg.write.atomic import write_atomic

PHASE = "contrast_phase_classifiers_2024_07_19"
MODALITY = "modality_classifiers_2025_02_24"
MODALITY_NORMALIZED = "modality_classifiers_normalized_2025_02_24"
STEMS = (PHASE, MODALITY, MODALITY_NORMALIZED)
FOLDS = 5

# The official package's resource folder (the files are dated, so their content never changes).
RESOURCE_URL = "https://raw.githubusercontent.com/wasserth/TotalSegmentator/master/totalsegmentator/resources/"
# What is downloaded for each classifier: the phase models only exist as a pickle upstream.
_REMOTE = {PHASE: [f"{PHASE}.pkl"],
           MODALITY: [f"{MODALITY}.json.{k}" for k in range(FOLDS)],
           MODALITY_NORMALIZED: [f"{MODALITY_NORMALIZED}.json.{k}" for k in range(FOLDS)]}


def classifier_dir() -> Path:
    """``<home>/classifiers``: the classifiers fetched or imported into the weights home."""
    return home_dir() / "classifiers"


def fold_files(folder: Path, stem: str) -> list[Path]:
    return [Path(folder) / f"{stem}.json.{k}" for k in range(FOLDS)]


# ----------------------------------------------------------------------------------------- pickle
class _Captured:
    """Stands in for a class of the pickle: keeps the state it is given, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _Model(_Captured):
    """An ``XGBRegressor`` / ``XGBClassifier`` of the pickle."""


class _Booster(_Captured):
    """An ``xgboost.core.Booster`` of the pickle: its state holds the raw model bytes."""


def _numpy_reconstruct():
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return core.multiarray._reconstruct, core.multiarray.scalar


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the names an xgboost-estimator pickle needs; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        import codecs
        import copyreg

        import numpy as np

        reconstruct, scalar = _numpy_reconstruct()
        if module in ("xgboost.sklearn", "xgboost") and name in ("XGBRegressor", "XGBClassifier", "XGBModel"):
            return _Model
        if module in ("xgboost.core", "xgboost") and name == "Booster":
            return _Booster
        allowed = {
            ("builtins", "bytearray"): bytearray, ("__builtin__", "bytearray"): bytearray,
            ("builtins", "object"): object, ("__builtin__", "object"): object,
            ("_codecs", "encode"): codecs.encode,
            ("copyreg", "_reconstructor"): copyreg._reconstructor,
            ("copy_reg", "_reconstructor"): copyreg._reconstructor,
            ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
        }
        if (module, name) in allowed:
            return allowed[(module, name)]
        if module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            if name == "_reconstruct":
                return reconstruct
            if name == "scalar":
                return scalar
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a classifier file")


def _booster_bytes(obj: Any) -> bytes:
    """The serialised booster buffer an unpickled estimator (or bare booster) carries."""
    if isinstance(obj, _Model) and isinstance(obj.state, dict):
        obj = obj.state.get("_Booster")
    if isinstance(obj, _Booster) and isinstance(obj.state, dict):
        raw = obj.state.get("handle")
        if isinstance(raw, (bytes, bytearray)) and raw:
            return bytes(raw)
    raise UserError("the classifier pickle does not hold fitted xgboost models")


def boosters_from_pickle(path: str | os.PathLike) -> list[bytes]:
    """Serialised booster buffers of the models of an official classifier pickle, in fold order."""
    try:
        data = Path(path).read_bytes()
        obj = _RestrictedUnpickler(io.BytesIO(data)).load()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, IndexError) as err:
        raise UserError(f"{path} is not a usable classifier pickle ({err})") from None
    if isinstance(obj, dict):
        models = [obj[k] for k in sorted(obj)]
    elif isinstance(obj, (list, tuple)):
        models = list(obj)
    else:
        raise UserError(f"{path} is not a usable classifier pickle (a {type(obj).__name__} inside)")
    return [_booster_bytes(m) for m in models]


# ------------------------------------------------------------------------------------- load/save
def _load_booster(raw: bytes, source: str):
    import xgboost as xgb

    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(raw))  # from memory: no "unknown file extension" warning
    except xgb.core.XGBoostError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unreadable"
        raise UserError(f"{source} is not an xgboost model ({first})") from None
    return booster


def _unserialize_booster(raw: bytes, source: str):
    """A booster from the bytes a pickled ``Booster`` carries (xgboost's serialisation buffer,
    model plus training configuration, not the plain model format)."""
    import xgboost as xgb

    booster = xgb.Booster.__new__(xgb.Booster)
    try:
        # Only the raw buffer is handed over: the rest of the pickled state is ignored.
        booster.__setstate__({"handle": bytearray(raw)})
    except xgb.core.XGBoostError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unreadable"
        raise UserError(f"{source} does not hold usable xgboost models ({first})") from None
    return booster


def load_boosters(path: str | os.PathLike, stem: str) -> list:
    """The ensemble from ``path``: a folder holding ``<stem>.json.0..4``, or an official pickle."""
    import xgboost as xgb  # noqa: F401  (fail early with a clear import error)

    p = Path(path)
    if p.is_dir():
        files = fold_files(p, stem)
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UserError(f"{p} lacks {', '.join(missing)}; give the folder with the five "
                            f"{stem}.json.<k> files or the official .pkl")
        return [_load_booster(f.read_bytes(), str(f)) for f in files]
    if p.is_file():
        head = p.read_bytes()[:2]
        if head[:1] == b"\x80":  # pickle protocol 2+
            return [_unserialize_booster(raw, str(p)) for raw in boosters_from_pickle(p)]
        raise UserError(f"{p} is not a classifier pickle; give the official .pkl or a folder with the "
                        f"five {stem}.json.<k> files")
    raise UserError(f"the classifier path {p} does not exist")


def _write_atomic(data: bytes, target: Path) -> None:
    write_atomic(target, lambda tmp: tmp.write_bytes(data))


def import_classifiers(source: str | os.PathLike, stem: str, dest: Path | None = None) -> list[Path]:
    """Copy an ensemble (folder of ``.json.<k>`` files or official pickle) into the home.

    Every model is checked by loading it before anything is written; returns the written files.
    """
    boosters = load_boosters(source, stem)
    if len(boosters) != FOLDS:
        raise UserError(f"{source} holds {len(boosters)} models; the {stem} ensemble has {FOLDS}")
    folder = Path(dest) if dest is not None else classifier_dir()
    folder.mkdir(parents=True, exist_ok=True)
    targets = fold_files(folder, stem)
    for booster, target in zip(boosters, targets):
        _write_atomic(bytes(booster.save_raw(raw_format="ubj")), target)
    return targets


def fetch_classifiers(stem: str, quiet: bool = False, dest: Path | None = None) -> list[Path]:
    """Download an ensemble from the official repository into the home (once)."""
    from totalseg.install.download import download_file

    folder = Path(dest) if dest is not None else classifier_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as tmp:
        for name in _REMOTE[stem]:
            download_file(RESOURCE_URL + name, Path(tmp) / name, quiet=quiet)
        source = Path(tmp) / _REMOTE[stem][0] if len(_REMOTE[stem]) == 1 else Path(tmp)
        return import_classifiers(source, stem, folder)


def classifiers(stem: str, path: str | os.PathLike | None = None, quiet: bool = False) -> list:
    """The five boosters of ``stem``: from ``path`` if given, else from the home, fetched if absent."""
    if path is not None:
        return load_boosters(path, stem)
    folder = classifier_dir()
    if not all(f.is_file() for f in fold_files(folder, stem)):
        try:
            fetch_classifiers(stem, quiet=quiet)
        except UserError as err:
            raise UserError(f"the {stem} classifiers are not in {folder} and could not be fetched ({err}); "
                            "pass -m with the official file or a folder holding them") from None
    return load_boosters(folder, stem)


def remove_classifiers(stem: str) -> None:
    """Delete an ensemble from the home (e.g. to fetch it again)."""
    for f in fold_files(classifier_dir(), stem):
        f.unlink(missing_ok=True)


__all__ = ["PHASE", "MODALITY", "MODALITY_NORMALIZED", "RESOURCE_URL", "classifier_dir", "fold_files",
           "boosters_from_pickle", "load_boosters", "import_classifiers", "fetch_classifiers",
           "classifiers", "remove_classifiers"]
