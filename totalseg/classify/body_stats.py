"""Body weight, size, age and sex from a CT or MR scan (``totalseg_get_body_stats``, xgboost backend).

258 features, in the official order: the volume of 33 organs and 24 vertebrae (median statistics of
the fast ``total`` model, masks at the border excluded; for MR the vertebrae come from ``vertebrae_mr``),
the area of three tissue types on one axial slice through each vertebra's centroid (as if the slice were
1 mm thick, inside ``body_trunc``), then the same structures' median intensities. Five xgboost models
per target (``<target>_<modality>_classifiers_2026_03_24_fold<k>.json``, binary payloads despite the
suffix) are averaged. They live in ``<weights>/body_stats_models_2026_03_24/``, fetched once from the
official weights release like the segmentation models.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from totalseg.errors import UserError

ORGANS = ("gluteus_maximus_left", "hip_right", "spinal_cord", "heart", "spleen", "hip_left", "clavicula_left",
          "scapula_left", "gluteus_maximus_right", "gallbladder", "humerus_right", "gluteus_minimus_right",
          "autochthon_left", "gluteus_minimus_left", "scapula_right", "femur_right", "pancreas", "prostate",
          "aorta", "liver", "iliopsoas_left", "clavicula_right", "brain", "gluteus_medius_left", "humerus_left",
          "gluteus_medius_right", "kidney_left", "femur_left", "kidney_right", "autochthon_right",
          "iliopsoas_right", "lung_left", "lung_right")
VERTEBRAE = tuple(f"vertebrae_{v}" for v in ("C1", "C2", "C3", "C4", "C5", "C6", "C7", "T1", "T2", "T3", "T4",
                                              "T5", "T6", "T7", "T8", "T9", "T10", "T11", "T12", "L1", "L2",
                                              "L3", "L4", "L5"))
TISSUES = ("subcutaneous_fat", "torso_fat", "skeletal_muscle")
TISSUE_SLICES = tuple(f"{t}_{v}" for t in TISSUES for v in VERTEBRAE)
LOBES = {"lung_right": ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"),
         "lung_left": ("lung_upper_lobe_left", "lung_lower_lobe_left")}

TARGETS = ("weight", "size", "age", "sex")
UNITS = {"weight": "kg", "size": "cm", "age": "years", "sex": None}
MODELS_FOLDER = "body_stats_models_2026_03_24"
MODELS_RELEASE = "v2.5.0-weights"
FOLDS = 5
BORDER = 2  # pixels: a tissue mask this close to the slice edge is cut off, its slice feature is 0
TASKS = {"ct": {"total": "total", "tissue": "tissue_types", "body": "body"},
         "mr": {"total": "total_mr", "tissue": "tissue_types_mr", "body": "body_mr"}}

Say = Callable[[str], None]


# ------------------------------------------------------------------------------------------ models
def models_dir() -> Path:
    from totalseg.home import weights_dir

    return weights_dir() / MODELS_FOLDER


def model_base(folder: Path, target: str, modality: str) -> Path:
    return Path(folder) / f"{target}_{modality}_classifiers_2026_03_24.json"


def fold_path(base: Path, fold: int) -> Path:
    """``<stem>_fold<k><suffix>`` beside ``base`` (the official naming)."""
    base = Path(base)
    return base.with_name(f"{base.stem}_fold{fold}{base.suffix}")


def all_model_files(folder: Path) -> list[Path]:
    """Every file of the release folder (both modalities, all targets and folds)."""
    return [fold_path(model_base(folder, t, m), k) for m in ("ct", "mr") for t in TARGETS for k in range(FOLDS)]


def fold_indices(fold: int | str | None) -> list[int]:
    """``all``/None: the five folds; else the one fold 0-4."""
    if fold is None or str(fold) == "all":
        return list(range(FOLDS))
    try:
        k = int(fold)
    except ValueError:
        k = -1
    if k not in range(FOLDS):
        raise UserError(f"fold must be 0-{FOLDS - 1} or 'all' (got {fold})")
    return [k]


def _model_root(extracted: Path) -> Path:
    """The folder of an extracted release zip that holds the model files."""
    if (extracted / MODELS_FOLDER).is_dir():
        return extracted / MODELS_FOLDER
    return extracted


def fetch_models(quiet: bool = False, say: Say = lambda m: None) -> Path:
    """Download the release zip into the weights folder (once); every file is checked by loading it."""
    from totalseg.install.archive import extract_archive
    from totalseg.install.download import download_file
    from totalseg.install.source import GITHUB_RELEASES, source_from_environment

    source = source_from_environment()
    url = f"{source.mirror or GITHUB_RELEASES}/{MODELS_RELEASE}/{MODELS_FOLDER}.zip"
    target = models_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    say(f"Downloading the body stats models ({MODELS_FOLDER}) ...")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        zip_path = Path(tmp) / f"{MODELS_FOLDER}.zip"
        download_file(url, zip_path, quiet=quiet, timeout=source.timeout, retries=source.retries)
        (Path(tmp) / "x").mkdir()
        extract_archive(zip_path, Path(tmp) / "x", where=url)
        root = _model_root(Path(tmp) / "x")
        missing = [f.name for f in all_model_files(root) if not f.is_file()]
        if missing:
            raise UserError(f"{url} lacks {missing[0]}{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}")
        for f in all_model_files(root):
            _load(f, "sex" if f.name.startswith("sex_") else "weight")
        if not target.is_dir():  # a parallel fetch may have won: its files are as good
            os.replace(root, target)
    return target


def _load(path: Path, target: str):
    """One fold model as the official estimator class (a classifier for sex, else a regressor)."""
    import xgboost as xgb

    model = xgb.XGBClassifier(device="cpu") if target == "sex" else xgb.XGBRegressor(device="cpu")
    try:
        # From bytes: the payload is binary whatever the suffix says.
        model.load_model(bytearray(Path(path).read_bytes()))
    except FileNotFoundError:
        raise UserError(f"the body stats model {path} does not exist; give -mf the base path of the "
                        f"fold files (<name>.json for <name>_fold0.json ...)") from None
    except (OSError, xgb.core.XGBoostError) as err:
        first = (str(err).strip().splitlines() or ["unreadable"])[0]
        raise UserError(f"{path} is not an xgboost model ({first[:120]})") from None
    return model


def load_models(base: Path, target: str, folds: Sequence[int]) -> list:
    return [_load(fold_path(base, k), target) for k in folds]


def ensure_models(model_file: Path | None, quiet: bool, say: Say) -> None:
    """The default models present (fetched when absent), unless ``model_file`` replaces them."""
    if model_file is not None or all(f.is_file() for f in all_model_files(models_dir())):
        return
    try:
        fetch_models(quiet, say)
    except UserError as err:
        raise UserError(f"the body stats models are not in {models_dir()} and could not be fetched ({err}); "
                        "pass -mf with the base path of local model files") from None


# ---------------------------------------------------------------------------------------- features
def combine_lung_lobes(stats: Mapping[str, Mapping[str, float]]) -> dict:
    """``stats`` plus ``lung_left``/``lung_right``: summed lobe volumes, volume-weighted mean intensity."""
    out = dict(stats)
    for lung, lobes in LOBES.items():
        filled = [stats[lobe] for lobe in lobes if stats[lobe]["volume"] > 0]
        volume = sum(stats[lobe]["volume"] for lobe in lobes)
        weight = sum(s["volume"] for s in filled)
        weighted = sum(s["intensity"] * s["volume"] for s in filled)
        out[lung] = {"volume": volume, "intensity": weighted / weight if weight > 0 else 0.0}
    return out


def touches_border(mask: np.ndarray, width: int = BORDER) -> bool:
    """Whether a 2D mask has a pixel in the outer ``width`` rows or columns."""
    return bool(mask[:width].any() or mask[-width:].any() or mask[:, :width].any() or mask[:, -width:].any())


def tissue_slices(ct: np.ndarray, zooms, vertebrae: np.ndarray, vertebra_ids: Mapping[str, int],
                  tissue: np.ndarray, tissue_ids: Mapping[str, int], trunc: np.ndarray,
                  use_border: bool = False, say: Say = lambda m: None) -> dict:
    """Per tissue and vertebra: pixel area (mm², i.e. mm³ of a 1 mm slice) and median intensity on the
    axial slice through the vertebra's centroid, inside the trunk; zeros when absent or cut off."""
    area = zooms[0] * zooms[1] * 1.0  # header zooms (float32) as the official, for the same rounding
    out = {}
    for vert in VERTEBRAE:
        z_hits = np.nonzero(vertebrae == vertebra_ids[vert])[2]
        if z_hits.size == 0:
            out.update({f"{t}_{vert}": {"volume": 0.0, "intensity": 0.0} for t in TISSUES})
            continue
        z = int(np.mean(z_hits))
        labels = np.where(trunc[:, :, z], tissue[:, :, z], 0)
        for t in TISSUES:
            mask = labels == tissue_ids[t]
            cut = not use_border and mask.any() and touches_border(mask)
            if cut:
                say(f"Skipping {t}_{vert} because it touches the image border.")
            if not mask.any() or cut:
                out[f"{t}_{vert}"] = {"volume": 0.0, "intensity": 0.0}
            else:
                out[f"{t}_{vert}"] = {"volume": (mask.sum() * area).round(3),
                                      "intensity": np.median(ct[:, :, z][mask]).round(5)}
    return out


def feature_vector(stats: Mapping[str, Mapping[str, float]], slices: Mapping[str, Mapping[str, float]]) -> list:
    """The 258 model inputs: volumes (structures, then slices), then intensities (same order)."""
    missing = [n for n in ORGANS + VERTEBRAE if n not in stats]
    if missing:
        raise UserError(f"the statistics lack {', '.join(missing[:4])}; they must be those of the total task")
    structures = ORGANS + VERTEBRAE
    return ([stats[n]["volume"] for n in structures] + [slices[n]["volume"] for n in TISSUE_SLICES]
            + [stats[n]["intensity"] for n in structures] + [slices[n]["intensity"] for n in TISSUE_SLICES])


# -------------------------------------------------------------------------------------- prediction
def predict_target(models: Sequence, features: Sequence[float], target: str) -> dict[str, Any]:
    """The fold ensemble's answer in the official JSON form (spread only with more than one fold)."""
    if target == "sex":
        probs = np.array([m.predict_proba([features])[0][1] for m in models])  # p(male), float32
        p = float(np.mean(probs))
        value = "M" if p >= 0.5 else "F"
        entry: dict[str, Any] = {"value": value, "unit": None}
        if len(probs) > 1:
            entry["probability"] = round(p if value == "M" else 1.0 - p, 4)
            entry["stddev"] = round(float(np.std(probs)), 4)
        return entry
    preds = np.array([m.predict([features])[0] for m in models])
    entry = {"value": round(float(np.mean(preds)), 2), "unit": UNITS[target]}
    if len(preds) > 1:
        entry.update(min=round(float(preds.min()), 2), max=round(float(preds.max()), 2),
                     stddev=round(float(np.std(preds)), 4))
    return entry


def add_bmi_bsa(result: dict) -> dict:
    """BMI (kg/m²) and body surface area (Mosteller, m²) from the predicted weight and size."""
    weight, height = result["weight"]["value"], result["size"]["value"]
    result["bmi"] = {"value": round(weight / (height / 100.0) ** 2, 2), "unit": "kg/m^2"}
    result["bsa"] = {"value": round(float(np.sqrt(height * weight / 3600)), 2), "unit": "m^2"}
    return result


# ------------------------------------------------------------------------------------ segmentation
def segment(image, modality: str, device: str, license_number: str | None, say: Say):
    """Run the models: (statistics, vertebra labels, their ids, tissue labels, trunk mask)."""
    from totalseg import totalsegmentator
    from totalseg.registry import get_task

    tasks = TASKS[modality]
    common = dict(ml=True, quiet=True, device=device, nr_thr_resamp=1, nr_thr_saving=1)
    stats_opts = dict(statistics=True, statistics_exclude_masks_at_border=True, stats_aggregation="median")
    say("Running TotalSegmentator model")
    seg, stats = totalsegmentator(image, None, task=tasks["total"], fast=True, **stats_opts, **common)
    vert_task = tasks["total"]
    if modality == "mr":
        say("Running vertebrae_mr model")
        seg, vert_stats = totalsegmentator(image, None, task="vertebrae_mr", **stats_opts, **common)
        stats = {**stats, **vert_stats}
        vert_task = "vertebrae_mr"
    say("Running tissue types model")
    tissue = totalsegmentator(image, None, task=tasks["tissue"], license_number=license_number, **common)
    say("Running body model")
    body = totalsegmentator(image, None, task=tasks["body"], **common)
    ids = lambda task: {name: i for i, name in get_task(task).classes.items()}  # noqa: E731
    trunc = np.asanyarray(body.dataobj) == ids(tasks["body"])["body_trunc"]
    return (stats, np.asanyarray(seg.dataobj), ids(vert_task), np.asanyarray(tissue.dataobj),
            ids(tasks["tissue"]), trunc)


def body_features(image, modality: str, device: str = "cpu", license_number: str | None = None,
                  use_border: bool = False, say: Say = lambda m: None) -> list:
    """The 258 features of ``image`` (a nibabel image, already in the orientation to slice)."""
    stats, vert, vert_ids, tissue, tissue_ids, trunc = segment(image, modality, device, license_number, say)
    if modality == "ct":
        stats = combine_lung_lobes(stats)
    say("Computing tissue slices")
    slices = tissue_slices(np.asanyarray(image.get_fdata()), image.header.get_zooms(), vert, vert_ids, tissue,
                           tissue_ids, trunc, use_border, say)
    return feature_vector(stats, slices)


def predict(features: Sequence[float], modality: str, model_file: Path | None = None,
            fold: int | str = "all", only_weight: bool = False, say: Say = lambda m: None) -> dict:
    """The result JSON from the features: each target's ensemble, then BMI and BSA."""
    folds = fold_indices(fold)
    result = {}
    for target in ("weight",) if only_weight else TARGETS:
        say(f"Predicting {target}...")
        # As the official: one -mf base path serves every target.
        base = model_file if model_file is not None else model_base(models_dir(), target, modality)
        result[target] = predict_target(load_models(base, target, folds), features, target)
    return result if only_weight else add_bmi_bsa(result)


def body_stats(image, modality: str, model_file: Path | None = None, fold: int | str = "all",
               only_weight: bool = False, skip_canonical: bool = False, device: str = "cpu",
               license_number: str | None = None, use_border: bool = False, quiet: bool = True,
               say: Say = lambda m: None) -> dict:
    """Predict weight, size, age and sex (plus BMI and BSA) of the patient in ``image`` (nibabel)."""
    import nibabel as nib

    if modality not in TASKS:
        raise UserError(f"modality must be 'ct' or 'mr' (got {modality})")
    fold_indices(fold)
    ensure_models(model_file, quiet, say)  # before the long model runs
    if not skip_canonical:
        image = nib.as_closest_canonical(image)  # the tissue slices are cut along the last axis
    features = body_features(image, modality, device, license_number, use_border, say)
    say("Preparing features and predicting")
    return predict(features, modality, model_file, fold, only_weight, say)
