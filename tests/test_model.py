"""nnU-Net result folders: both plans formats, DDP prefixes, the average of two different folds, tile geometry."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import DATA
from totalseg.predict.model import load_model, read_plans
from totalseg.predict.sliding_window import (Runner, gaussian_weights, predict_labels, predict_logits,
                                             tile_grid, tile_starts)

FOLDER = "Dataset297_TotalSegmentator_total_3mm_1559subj/nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres"


@pytest.fixture
def result_folder(tmp_path):
    src = DATA / "fake_weights_tiny" / "nnunet" / "results" / FOLDER
    if not src.is_dir():
        pytest.skip("fake weights not available")
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def _forward(model, x):
    with torch.inference_mode():
        return model.networks[0](x)


def test_architecture_format_builds_the_same_network(result_folder):
    legacy = load_model(result_folder, "3d_fullres", (0,))
    plans = json.loads((result_folder / "plans.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    p = legacy.plans
    conf["architecture"] = {"network_class_name": p.network_class, "arch_kwargs": p.network_kwargs,
                            "_kw_requires_import": list(p.requires_import)}
    for key in ("UNet_class_name", "UNet_base_num_features", "n_conv_per_stage_encoder",
                "n_conv_per_stage_decoder", "unet_max_num_features"):
        del conf[key]
    (result_folder / "plans.json").write_text(json.dumps(plans))
    modern = load_model(result_folder, "3d_fullres", (0,))
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_forward(legacy, x), _forward(modern, x))


def test_inherited_configuration(result_folder):
    plans = json.loads((result_folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres_high"] = {"inherits_from": "3d_fullres", "spacing": [1.0, 1.0, 1.0]}
    (result_folder / "plans.json").write_text(json.dumps(plans))
    high = read_plans(result_folder, "3d_fullres_high")
    assert high.spacing == (1.0, 1.0, 1.0) and high.patch_size == (32, 32, 32)


def _second_fold_with_module_prefix(result_folder) -> dict:
    """fold_1: fold 0's checkpoint with other random weights, saved with DDP's ``module.`` prefix."""
    ckpt = torch.load(result_folder / "fold_0" / "checkpoint_final.pth", weights_only=True)
    net = load_model(result_folder, "3d_fullres", (0,)).networks[0]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in net.parameters():  # each shared tensor once (the state dict repeats some under aliases)
            param += 0.5 * param.std().nan_to_num() * torch.randn(param.shape, generator=gen)
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    ckpt["network_weights"] = {"module." + k: v for k, v in weights.items()}
    (result_folder / "fold_1").mkdir()
    torch.save(ckpt, result_folder / "fold_1" / "checkpoint_final.pth")
    return weights


def _nnunet_fold_logits(net, data: np.ndarray, patch, step: float, num_heads: int) -> torch.Tensor:
    """One fold as nnU-Net's sliding window computes it on the CPU: each tile's float32 output times the
    fp16 Gaussian, added into fp16 sums, divided by the fp16 sum of the Gaussians."""
    x = torch.from_numpy(data)
    weight = torch.from_numpy(gaussian_weights(tuple(patch)).copy())
    logits = torch.zeros((num_heads, *x.shape[1:]), dtype=torch.float16)
    norm = torch.zeros(x.shape[1:], dtype=torch.float16)
    with torch.inference_mode():
        for tile in tile_grid(x.shape[1:], patch, step):
            out = net(x[(slice(None), *tile)][None])[0]
            out *= weight
            logits[(slice(None), *tile)] += out
            norm[tile] += weight
    logits /= norm
    return logits


def test_module_prefix_and_fold_average(result_folder):
    """Two different folds (the second saved with a ``module.`` prefix): the prediction is nnU-Net's fold
    average, i.e. each fold's fp16 logits (divided by its Gaussian sum) summed in fp16, divided by 2."""
    weights = _second_fold_with_module_prefix(result_folder)
    both = load_model(result_folder, "3d_fullres", None)  # every fold found
    assert len(both.networks) == 2
    state = both.networks[1].state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())  # prefix stripped, every weight loaded
    first = both.networks[0].state_dict()
    assert not all(torch.equal(first[k], v) for k, v in weights.items())

    patch, heads = both.plans.patch_size, both.plans.num_heads
    data = torch.randn(1, 40, 36, 48, generator=torch.Generator().manual_seed(0)).numpy()
    folds = [_nnunet_fold_logits(net, data, patch, 0.5, heads) for net in both.networks]
    expected = (folds[0] + folds[1]) / 2  # fp16, as nnU-Net's predict_logits_from_preprocessed_data
    averaged = predict_logits(Runner(both.networks), data, patch, 0.5, heads)
    assert averaged.dtype == torch.float16 and torch.equal(averaged, expected)
    assert not torch.equal(averaged, folds[0]) and not torch.equal(averaged, folds[1])
    # The labels are the argmax of the average, which differ from either fold's own labels.
    labels = predict_labels(Runner(both.networks), data, patch, 0.5, heads, np.uint8)
    assert np.array_equal(labels, expected.argmax(0).numpy())
    for fold in folds:
        assert not np.array_equal(labels, fold.argmax(0).numpy())
    # A single fold, through the same engine, is that fold's own sliding window.
    one = load_model(result_folder, "3d_fullres", (1,))
    assert torch.equal(predict_logits(Runner(one.networks), data, patch, 0.5, heads), folds[1])


def test_tile_starts_match_nnunet_examples():
    # Worked example of the spec: a (60, 202, 244) image with 128^3 tiles at step 0.8.
    assert tile_starts(128, 128, 0.8) == [0]  # 60 slices are padded to one tile
    assert tile_starts(202, 128, 0.8) == [0, 74]
    assert tile_starts(244, 128, 0.8) == [0, 58, 116]
    starts = tile_starts(244, 32, 0.5)
    assert starts[0] == 0 and starts[-1] == 212 and max(np.diff(starts)) <= 16


def test_gaussian_has_no_zeros_and_peaks_at_ten():
    g = gaussian_weights((32, 32, 32))
    assert g.dtype == np.float16 and g.min() > 0 and g.max() == np.float16(10)
