"""One case for the report: the input image and its segmentation as one label image on the image's grid.

The segmentation is a folder of per-class masks (``<class>.nii.gz``, what TotalSegmentator writes by default)
or a multilabel file with the label table (``--ml``). Label ids (and so the label-table colours) are those of
the task whose classes the masks are named after, so a folder and a multilabel file of one run look the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from totalseg.errors import InputError

_NIFTI = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Case:
    """Image and labels on one voxel grid, the grid's affine, and the classes ``{label id: name}``."""

    image: np.ndarray
    labels: np.ndarray  # uint8 or uint16, 0 = background
    affine: np.ndarray
    zooms: tuple[float, float, float]
    classes: dict[int, str]
    modality: str  # "CT" or "MR": which window presets and input checks apply
    task: str | None  # the task the classes belong to, when one matches


def _stem(path: Path) -> str | None:
    for suffix in _NIFTI:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def mask_files(folder: Path) -> dict[str, Path]:
    """``{class name: file}`` of the NIfTI masks in ``folder``."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = _stem(path)
        if name is not None and path.is_file():
            files.setdefault(name, path)
    return files


def match_task(names: list[str]) -> tuple[str | None, dict[int, str]]:
    """The task whose class map holds most of ``names`` (first in the registry's order on ties), and its map.

    Names outside that map get the ids after its largest one, in sorted order.
    """
    from totalseg.registry import get_task, task_names

    best, best_map, best_hits = None, {}, 0
    wanted = set(names)
    for task in task_names():
        classes = get_task(task).classes
        hits = len(wanted & set(classes.values()))
        if hits > best_hits:
            best, best_map, best_hits = task, dict(classes), hits
    table = {k: v for k, v in best_map.items()}
    extra = sorted(wanted - set(table.values()))
    top = max(table, default=0)
    table.update({top + i: name for i, name in enumerate(extra, start=1)})
    return best, table


def task_modality(task: str | None) -> str:
    """``MR`` for the MR tasks of the registry, else ``CT``."""
    from totalseg.registry import get_task

    if task is None:
        return "CT"
    return "MR" if str(get_task(task).modality).upper().startswith("MR") else "CT"


def _read(path: Path) -> nib.Nifti1Image:
    try:
        return nib.load(str(path))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except Exception as err:  # nibabel raises several kinds for damaged files
        raise InputError(f"{path}: not a readable NIfTI image ({' '.join(str(err).split())})") from None


def _label_dtype(top: int) -> type:
    return np.uint8 if top < 256 else np.uint16


def load_segmentation(source: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, dict[int, str], str | None]:
    """Label image, ``{id: name}`` (all classes, present or not) and matched task of a folder or ``--ml`` file."""
    from totalseg.write.labelmap import load_multilabel_nifti

    source = Path(source)
    if not source.exists():
        raise InputError(f"{source} does not exist; give the output folder of masks or the --ml file")
    if source.is_dir():
        files = mask_files(source)
        if not files:
            raise InputError(f"{source} holds no NIfTI masks (<class>.nii.gz)")
        task, classes = match_task(list(files))
        ids = {name: k for k, name in classes.items()}
        classes = {k: v for k, v in classes.items() if v in files}  # a roi subset lists its classes only
        labels = np.zeros(shape, dtype=_label_dtype(max(classes)))
        for name, path in files.items():
            data = np.asanyarray(_read(path).dataobj)
            if data.shape[:3] != tuple(shape):
                raise InputError(f"{path} has shape {data.shape}, the image {tuple(shape)}; give the "
                                 "segmentation of this image")
            labels[data.reshape(data.shape[:3]) > 0.5] = ids[name]
        return labels, classes, task
    img, table = load_multilabel_nifti(source)
    data = np.asanyarray(img.dataobj)
    if data.shape[:3] != tuple(shape):
        raise InputError(f"{source} has shape {data.shape}, the image {tuple(shape)}; give the segmentation "
                         "of this image")
    task, _ = match_task(list(table.values()))
    top = max(max(table, default=0), int(data.max()) if data.size else 0)
    labels = np.asarray(data.reshape(data.shape[:3])).astype(_label_dtype(top), copy=False)
    return labels, {int(k): str(v) for k, v in sorted(table.items())}, task


def _load_image(source: Path):
    """The input image as TotalSegmentator reads it (NIfTI file or DICOM folder/zip): an ``InputImage``."""
    from totalseg.load.image import load_image

    return load_image(source, warn=lambda message: None)  # the run already showed its input warnings


def load_case(image: Path, segmentation: Path, modality: str | None = None) -> Case:
    """Load ``image`` and ``segmentation`` (see :func:`load_segmentation`) into a :class:`Case`."""
    loaded = _load_image(Path(image))
    data = np.asarray(loaded.volume.data)
    if data.ndim != 3:
        raise InputError(f"{image}: a 3D image is expected, got shape {data.shape}")
    labels, classes, task = load_segmentation(Path(segmentation), data.shape)
    affine = np.asarray(loaded.volume.affine, dtype=float)
    zooms = tuple(float(z) for z in loaded.header.get_zooms()[:3])  # as statistics.json measures volumes
    return Case(image=data, labels=labels, affine=affine, zooms=zooms, classes=classes,
                modality=(modality or task_modality(task)).upper(), task=task)
