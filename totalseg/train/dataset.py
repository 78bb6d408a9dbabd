"""A dataset in the TotalSegmentator layout -> an nnU-Net v2 raw dataset, with the paper's split.

Input: ``<case>/ct.nii.gz`` (or another image name), ``<case>/segmentations/<class>.nii.gz`` and an optional
``meta.csv`` (``;``-separated, columns ``image_id`` and ``split`` = train / val / test).
Output: ``Dataset<ID>_<name>/`` with ``imagesTr``, ``labelsTr``, ``imagesTs``, ``labelsTs`` (the test cases,
kept aside), ``dataset.json`` and ``splits_final.json`` (fold 0 = train / val of meta.csv).
"""
from __future__ import annotations

import csv
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np

from totalseg.errors import UserError
from totalseg.write.atomic import write_atomic

SPLITS = ("train", "val", "test")


@dataclass
class Converted:
    folder: Path
    splits: dict[str, list[str]]
    missing: dict[str, list[str]] = field(default_factory=dict)  # case -> classes without a mask file


def resolve_classes(spec: str | list[str] | dict[int, str]) -> dict[int, str]:
    """Label map from a class-map key (e.g. ``total_part1_organs``), a task name, or class names in order."""
    from totalseg.registry import class_map, get_task

    if isinstance(spec, dict):
        return {int(k): str(v) for k, v in spec.items()}
    if isinstance(spec, (list, tuple)):
        return {i + 1: str(n) for i, n in enumerate(spec)}
    try:
        return class_map(spec)
    except KeyError:
        pass  # not a class map: a task name
    task = get_task(spec)
    if len(task.modes["default"].models) > 1:
        raise UserError(f"task {spec} runs several models; convert one part at a time (e.g. "
                        "--classes total_part1_organs)")
    return dict(task.classes)


def read_meta(path: Path) -> dict[str, str]:
    """``image_id`` -> split from a TotalSegmentator ``meta.csv`` (``;``-separated)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f, delimiter=";"))
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror})") from None
    if not rows or not {"image_id", "split"} <= set(rows[0]):
        raise UserError(f"{path} needs the columns image_id and split (';'-separated)")
    out = {}
    for row in rows:
        split = (row["split"] or "").strip()
        if split not in SPLITS:
            raise UserError(f"{path}: case {row['image_id']} has split '{split}'; use train, val or test")
        out[row["image_id"].strip()] = split
    return out


def _cases(source: Path, image: str) -> list[str]:
    cases = sorted(p.name for p in source.iterdir() if (p / image).is_file())
    if not cases:
        raise UserError(f"no cases in {source}: expected <case>/{image} and <case>/segmentations/")
    return cases


def label_volume(case: Path, classes: dict[int, str], shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
    """One label volume; where masks overlap the class with the higher label wins. Returns (labels, missing)."""
    labels = np.zeros(shape, np.uint8 if max(classes) < 256 else np.uint16)
    missing = []
    for label, name in sorted(classes.items()):
        path = case / "segmentations" / f"{name}.nii.gz"
        if not path.is_file():
            missing.append(name)
            continue
        mask = np.asanyarray(nib.load(path).dataobj)
        if mask.shape != shape:
            raise UserError(f"{path} has shape {mask.shape}, the image {shape}")
        labels[mask > 0] = label
    return labels, missing


def _write_case(case: Path, image: str, images: Path, labels_dir: Path, classes: dict[int, str]) -> list[str]:
    img = nib.load(case / image)
    seg, missing = label_volume(case, classes, img.shape[:3])
    target = images / f"{case.name}_0000.nii.gz"
    if image.endswith(".nii.gz"):
        write_atomic(target, lambda tmp: shutil.copyfile(case / image, tmp))
    else:
        write_atomic(target, lambda tmp: nib.save(img, tmp))
    out = nib.Nifti1Image(seg, img.affine, img.header)
    out.set_data_dtype(seg.dtype)
    out.header.set_slope_inter(1, 0)
    write_atomic(labels_dir / f"{case.name}.nii.gz", lambda tmp: nib.save(out, tmp))
    return missing


def convert_dataset(source: Path, raw: Path, dataset_id: int, name: str, classes: dict[int, str],
                    meta: Path | None = None, image: str = "ct.nii.gz", channel: str = "CT",
                    say: Callable[[str], None] = lambda m: None, progress: bool = True) -> Converted:
    """Write ``raw/Dataset<ID>_<name>`` from ``source``; cases not in meta.csv are skipped (reported)."""
    from tqdm import tqdm

    source, raw = Path(source), Path(raw)
    if not 1 <= dataset_id <= 9999 or not re.match(r"^[A-Za-z0-9_\-]+$", name):
        raise UserError("dataset id must be 1..9999 and the name letters, digits, '_' or '-'")
    if not source.is_dir():
        raise UserError(f"the dataset folder does not exist: {source}")
    folder = raw / f"Dataset{dataset_id:03d}_{name}"
    cases = _cases(source, image)
    split_of = read_meta(Path(meta)) if meta else {c: "train" for c in cases}
    unknown = [c for c in cases if c not in split_of]
    if unknown:
        say(f"{len(unknown)} case(s) not in meta.csv are left out: {', '.join(unknown[:5])}")
    splits = {s: [c for c in cases if split_of.get(c) == s] for s in SPLITS}
    if not splits["train"]:
        raise UserError("no training cases: meta.csv marks none as train")
    missing = {}
    for c in tqdm([c for c in cases if c in split_of], desc="Converting", unit="case", disable=not progress):
        sub = ("imagesTs", "labelsTs") if split_of[c] == "test" else ("imagesTr", "labelsTr")
        dirs = [folder / s for s in sub]
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        lost = _write_case(source / c, image, dirs[0], dirs[1], classes)
        if lost:
            missing[c] = lost
    for c, lost in missing.items():
        say(f"case {c}: no mask for {', '.join(lost)} (background there)")
    _write_json(folder / "dataset.json", {
        "channel_names": {"0": channel}, "file_ending": ".nii.gz", "name": name,
        "labels": {"background": 0, **{n: k for k, n in sorted(classes.items())}},
        "numTraining": len(splits["train"]) + len(splits["val"]),
        "description": "converted from the TotalSegmentator layout by totalseg_dataset"})
    fold0 = {"train": splits["train"], "val": splits["val"] or splits["train"][:1]}
    _write_json(folder / "splits_final.json", [fold0])
    _write_json(folder / "split.json", splits)  # the test cases too, for totalseg_evaluate
    return Converted(folder, splits, missing)


def _write_json(path: Path, data) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n"))
