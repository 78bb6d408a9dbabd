"""One nnU-Net v2 model applied to one image, as nnU-Net's predictor does it on the CPU.

Input and output are canonical (x, y, z) arrays; nnU-Net's own axis order (z, y, x) is used inside.
"""
from __future__ import annotations

import numpy as np

from totalseg.predict.model import Plans
from totalseg.predict.sliding_window import Runner, check_finite, predict_labels, predict_logits, to_host
from totalseg.prepare.normalise import nonzero_bbox, normalise_channel
from totalseg.prepare.nnunet_resample import resample_data, resampled_argmax, target_shape


def _preprocess(image_xyz: np.ndarray, plans: Plans):
    # nnU-Net reads (z, y, x) into a fresh C-ordered float32 array; the normalisation statistics of
    # ZScore models depend on that memory layout, so build exactly that one.
    data = np.empty((1, *image_xyz.shape[::-1]), dtype=np.float32)
    data[0] = image_xyz.transpose(2, 1, 0)
    data = data.transpose((0, *(a + 1 for a in plans.transpose_forward)))
    box = nonzero_bbox(data)
    data = data[(slice(None), *box)]
    for c, scheme in enumerate(plans.normalization):
        normalise_channel(data[c], scheme, plans.intensity_properties.get(str(c)),
                          plans.use_mask_for_norm[c])
    return data, box


def segment(image_xyz: np.ndarray, spacing_xyz, plans: Plans, runner: Runner, step: float) -> np.ndarray:
    """Label image (uint8, uint16 past 255 labels) on the grid of ``image_xyz`` predicted by the
    networks of ``runner`` for a model with ``plans``."""
    full_shape = np.array(image_xyz.shape[::-1])[list(plans.transpose_forward)]
    spacing = np.array(spacing_xyz[::-1], dtype=np.float64)[list(plans.transpose_forward)]
    data, box = _preprocess(image_xyz, plans)
    shape = data.shape[1:]
    target = target_shape(shape, spacing, plans.spacing)
    resampled = tuple(target) != tuple(shape)
    if resampled:  # the task gave no spacing: nnU-Net brings the image to the plans' spacing itself
        data = resample_data(data, target, spacing, plans.spacing, **plans.resampling_data)
    dtype = np.uint8 if len(plans.labels) < 256 else np.uint16
    if resampled:
        logits = predict_logits(runner, data, plans.patch_size, step, plans.num_heads)
        check_finite(logits)
        logits = to_host(logits)
        labels = resampled_argmax(logits, shape, plans.spacing, spacing, **plans.resampling_probabilities)
        del logits
    else:
        labels = predict_labels(runner, data, plans.patch_size, step, plans.num_heads, dtype)
    out = np.zeros(tuple(full_shape), dtype=dtype)
    out[box] = labels
    out = out.transpose(plans.transpose_backward)
    return np.ascontiguousarray(out.transpose(2, 1, 0))
