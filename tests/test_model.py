"""nnU-Net result folders: both plans formats, DDP prefixes, several folds, tile geometry."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import DATA
from totalseg.predict.model import load_model, read_plans
from totalseg.predict.sliding_window import gaussian_weights, tile_starts

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


def test_module_prefix_and_fold_average(result_folder):
    ckpt = torch.load(result_folder / "fold_0" / "checkpoint_final.pth", weights_only=True)
    ckpt["network_weights"] = {"module." + k: v for k, v in ckpt["network_weights"].items()}
    (result_folder / "fold_1").mkdir()
    torch.save(ckpt, result_folder / "fold_1" / "checkpoint_final.pth")
    one = load_model(result_folder, "3d_fullres", (0,))
    both = load_model(result_folder, "3d_fullres", None)  # every fold found
    assert len(both.networks) == 2
    x = torch.randn(1, 1, 32, 32, 32)
    assert torch.equal(_forward(one, x), _forward(both, x))


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
