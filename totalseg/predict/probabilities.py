"""nnU-Net's probabilities of one model run (``-sp``): what nnU-Net's export writes as ``<case>.npz`` and
``<case>.pkl`` when asked to save probabilities.

The probabilities are the softmax (float32) of the averaged fp16 logits, brought back to the grid of the
image nnU-Net was given (its own resampling, when the model's spacing differs), the voxels outside its
nonzero crop set to background (1 for class 0), in nnU-Net's axis order (z, y, x). The properties are the
ones nnU-Net's NIfTI reader and preprocessor record for that image.
"""
from __future__ import annotations

import io
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from totalseg.predict.model import Plans
from totalseg.predict.nnunet import _preprocess
from totalseg.predict.sliding_window import Runner, check_finite, predict_logits, to_host
from totalseg.prepare.nnunet_resample import resample_data, resample_slices, separate_axis, target_shape


@dataclass
class Probabilities:
    """One model's probabilities (float32, classes first, then z, y, x) and nnU-Net's properties dict."""

    values: np.ndarray
    properties: dict


def resampled_logits(logits: np.ndarray, shape: Sequence[int], spacing: Sequence[float], target: Sequence[float],
                     order: int = 1, order_z: int = 0, force_separate_z: bool | None = None,
                     **_: object) -> np.ndarray:
    """(C, *spatial) logits resampled to ``shape`` channel by channel, kept in their dtype (nnU-Net's export)."""
    axis = separate_axis(spacing, target, force_separate_z)
    out = np.empty((logits.shape[0], *shape), dtype=logits.dtype)
    for c in range(logits.shape[0]):
        for i, plane in resample_slices(logits[c], shape, axis, order, order_z):
            if axis is None:
                out[c] = plane
            else:
                out[(c, *(i if a == axis else slice(None) for a in range(3)))] = plane
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """float32 softmax over the first axis, as nnU-Net computes it (torch, on float32 copies of the logits)."""
    import torch

    with torch.inference_mode():
        return torch.softmax(torch.from_numpy(logits).float(), 0).numpy()


def reader_properties(affine: np.ndarray) -> dict:
    """What nnU-Net's NIfTI reader records of a canonical image with ``affine`` once saved and read back: the
    affine and spacing as the file stores them (float32), spacing in (z, y, x) order."""
    import nibabel as nib

    header = nib.Nifti1Image(np.zeros((1, 1, 1), dtype=np.uint8), affine).header
    stored = nib.Nifti1Header.from_fileobj(io.BytesIO(header.binaryblock))  # the file's float32 values
    read = stored.get_best_affine()
    return {"nibabel_stuff": {"original_affine": read, "reoriented_affine": read.copy()},
            "spacing": [float(z) for z in stored.get_zooms()[:3][::-1]]}


def model_probabilities(image_xyz: np.ndarray, affine: np.ndarray, plans: Plans, runner: Runner,
                        step: float) -> tuple[np.ndarray, Probabilities]:
    """Labels on the grid of canonical ``image_xyz`` (as :func:`totalseg.predict.nnunet.segment` gives them)
    and the model's probabilities with nnU-Net's properties, from one pass of the networks."""
    properties = reader_properties(affine)
    spacing_xyz = properties["spacing"][::-1]
    full_shape = tuple(int(s) for s in np.array(image_xyz.shape[::-1])[list(plans.transpose_forward)])
    spacing = np.array(spacing_xyz[::-1], dtype=np.float64)[list(plans.transpose_forward)]
    data, box = _preprocess(image_xyz, plans)
    shape = tuple(int(s) for s in data.shape[1:])
    properties.update(shape_before_cropping=full_shape,
                      bbox_used_for_cropping=[[b.start, b.stop] for b in box],
                      shape_after_cropping_and_before_resampling=shape)
    target = target_shape(shape, spacing, plans.spacing)
    if tuple(target) != shape:  # the model's spacing differs: nnU-Net resamples there and back itself
        data = resample_data(data, target, spacing, plans.spacing, **plans.resampling_data)
    logits = predict_logits(runner, data, plans.patch_size, step, plans.num_heads)
    check_finite(logits)
    logits = to_host(logits)
    if tuple(target) != shape:
        logits = resampled_logits(logits, shape, plans.spacing, spacing, **plans.resampling_probabilities)
    probs = softmax(logits)
    del logits
    dtype = np.uint8 if len(plans.labels) < 256 else np.uint16
    labels = np.zeros(full_shape, dtype=dtype)
    labels[box] = probs.argmax(0)
    values = np.zeros((probs.shape[0], *full_shape), dtype=np.float32)
    values[0] = 1  # outside the crop: background
    values[(slice(None), *box)] = probs
    del probs
    back = list(plans.transpose_backward)
    labels = np.ascontiguousarray(labels.transpose(back).transpose(2, 1, 0))
    return labels, Probabilities(values.transpose([0, *(a + 1 for a in back)]), properties)


def write_probabilities(probs: Probabilities, path: Path) -> tuple[Path, Path]:
    """``path`` (npz, array ``probabilities``) and the properties beside it with suffix ``.pkl``, each atomically,
    as the official tool names its copies of nnU-Net's files."""
    import pickle

    from totalseg.write.atomic import write_atomic

    path = Path(path)
    pkl = path.with_suffix(".pkl")
    path.parent.mkdir(parents=True, exist_ok=True)

    def npz(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy adds no .npz to the name
            np.savez_compressed(f, probabilities=probs.values)

    def properties(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            pickle.dump(probs.properties, f)

    write_atomic(path, npz)
    write_atomic(pkl, properties)
    return path, pkl


@contextmanager
def labeller_run(labeller, model, folds: tuple[int, ...] | None) -> Iterator[tuple[Plans, Runner]]:
    """``(plans, runner)`` of ``model`` on the labeller's device and weights, under its torch settings: the
    labeller's own loaded model where it has ``model_run`` (a Predictor: its engine, loaded once), else loaded
    here for the exact engine (these runs need the averaged logits, which ``model_labels`` does not return)."""
    model_run = getattr(labeller, "model_run", None)
    if model_run is not None:
        with model_run(model, folds) as pair:
            yield pair
        return
    from totalseg.device import device_kind
    from totalseg.predict.model import load_model
    from totalseg.weights import model_folder

    loaded = load_model(model_folder(model, getattr(labeller, "weights", None)), model.configuration, folds)
    device = getattr(labeller, "device", "cpu")
    networks = loaded.networks if device_kind(device) == "cpu" else [n.to(device) for n in loaded.networks]
    settings = getattr(labeller, "settings", None)
    with settings() if settings is not None else nullcontext():
        yield loaded.plans, Runner(networks, device)


def labeller_probabilities(labeller, model, folds: tuple[int, ...] | None, image_xyz: np.ndarray,
                           affine: np.ndarray, step: float) -> tuple[np.ndarray, Probabilities]:
    """:func:`model_probabilities` of ``model`` on the labeller's device and weights (:func:`labeller_run`)."""
    with labeller_run(labeller, model, folds) as (plans, runner):
        return model_probabilities(image_xyz, affine, plans, runner, step)
