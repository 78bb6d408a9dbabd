#!/usr/bin/env python3
"""Write a TotalSegmentator weights home with random weights but the OFFICIAL network architecture.

For timing only: the segmentations are meaningless, but the networks have the size, depth and patch
size of the official v2 models, so inference cost (sliding window, convolutions, memory) matches the
real thing.

    python3 bench/make_random_weights.py --out DIR --ids 291 292 293 294 295 297 298 [--seed 0]

For each id the plans.json / dataset.json of the same folder in the template home
(default ../shared/data/fake_weights_tiny beside the checkout, which has all ids of `total`, `body` and `total_mr`)
are copied; the 3d_fullres configuration is changed to the official architecture:

  * 1.5 mm models (291-295, 299, 850, 851): PlainConvUNet, 6 stages, features 32-64-128-256-320-320,
    2 convs per stage (encoder 6x, decoder 5x), pool kernels [1,1,1] + 5x [2,2,2], conv kernels 6x [3,3,3],
    patch [128,128,128];
  * 3 mm models (297, 852): 5 stages (features 32-64-128-256-320), patch [128,112,112];
    NOTE: the patch is given in plans order, i.e. the axis order nnU-Net works in after
    NibabelIOWithReorient (RAS-canonical, then transposed to z, y, x): 128 along z, 112 along y and x.
    (Written elsewhere as "112x112x128" in x, y, z order.)
  * 6 mm models (298, 300, 853): 5 stages (32-64-128-256-320), patch [80,80,80].

The network is built with dynamic_network_architectures' PlainConvUNet exactly as nnU-Net builds it from
these (legacy-format) plans: conv_bias True, InstanceNorm3d(eps=1e-5, affine=True), no dropout,
LeakyReLU(inplace=True), deep_supervision False. Weights: torch.manual_seed(seed + id), then the
network's own initialize() (He init, as nnU-Net's get_network_from_plans applies it). Finally the
background bias of the output layer is raised so that, on a smooth random test volume, about
BG_FRACTION of the voxels are background and the rest is spread over the other classes: outputs are
neither all background nor all one class.

Output layout (what the official tool and ours expect as TOTALSEG_HOME_DIR):

    <out>/config.json
    <out>/nnunet/results/<Dataset folder>/<trainer>__nnUNetPlans__3d_fullres/{plans.json,dataset.json}
    <out>/nnunet/results/<Dataset folder>/<trainer>__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth

The checkpoint is a dict in the format nnU-Net's predictor loads (network_weights, init_args, trainer_name,
inference_allowed_mirroring_axes, current_epoch, optimizer_state, grad_scaler_state, logging, _best_ema).
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "shared" / "data" / "fake_weights_tiny"
BG_FRACTION = 0.9  # target share of background voxels on the calibration volume

# id -> (n_stages, patch_size in plans order (z, y, x))
ARCH_1_5MM = (6, [128, 128, 128])
ARCH_3MM = (5, [128, 112, 112])
ARCH_6MM = (5, [80, 80, 80])
ARCHITECTURES = {
    291: ARCH_1_5MM, 292: ARCH_1_5MM, 293: ARCH_1_5MM, 294: ARCH_1_5MM, 295: ARCH_1_5MM,
    299: ARCH_1_5MM, 850: ARCH_1_5MM, 851: ARCH_1_5MM,
    297: ARCH_3MM, 852: ARCH_3MM,
    298: ARCH_6MM, 300: ARCH_6MM, 853: ARCH_6MM,
}
BASE_FEATURES = 32
MAX_FEATURES = 320

CONFIG_JSON = {
    "totalseg_id": "totalseg_BENCH001",
    "send_usage_stats": False,
    "prediction_counter": 0,
    "statistics_disclaimer_shown": True,
}


def official_configuration(conf: dict, n_stages: int, patch: list[int]) -> dict:
    """The template's 3d_fullres configuration with the official architecture (legacy plans format)."""
    conf = copy.deepcopy(conf)
    conf.pop("architecture", None)  # we write the legacy flat format, as the v2 weight releases do
    conf.update({
        "patch_size": list(patch),
        "UNet_class_name": "PlainConvUNet",
        "UNet_base_num_features": BASE_FEATURES,
        "unet_max_num_features": MAX_FEATURES,
        "n_conv_per_stage_encoder": [2] * n_stages,
        "n_conv_per_stage_decoder": [2] * (n_stages - 1),
        "num_pool_per_axis": [n_stages - 1] * 3,
        "pool_op_kernel_sizes": [[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1),
        "conv_kernel_sizes": [[3, 3, 3]] * n_stages,
    })
    return conf


def build_network(conf: dict, n_classes: int) -> nn.Module:
    """PlainConvUNet as nnU-Net 2.x builds it from legacy plans (plans_handler.ConfigurationManager)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    n_stages = len(conf["n_conv_per_stage_encoder"])
    features = [min(conf["UNet_base_num_features"] * 2 ** i, conf["unet_max_num_features"])
                for i in range(n_stages)]
    return PlainConvUNet(
        input_channels=1,
        n_stages=n_stages,
        features_per_stage=features,
        conv_op=nn.Conv3d,
        kernel_sizes=conf["conv_kernel_sizes"],
        strides=conf["pool_op_kernel_sizes"],
        n_conv_per_stage=conf["n_conv_per_stage_encoder"],
        num_classes=n_classes,
        n_conv_per_stage_decoder=conf["n_conv_per_stage_decoder"],
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        dropout_op=None,
        dropout_op_kwargs=None,
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    )


def calibration_volume(seed: int, size: int = 64) -> torch.Tensor:
    """A smooth random volume, roughly unit variance (like a CT-normalised patch)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 1, size, size, size, generator=g)
    for _ in range(3):
        x = nn.functional.avg_pool3d(x, 5, stride=1, padding=2)
    x = (x - x.mean()) / x.std()
    return x


@torch.no_grad()
def favour_background(net: nn.Module, seed: int) -> float:
    """Raise the last seg layer's background bias so ~BG_FRACTION of calibration voxels are background."""
    net.eval()
    logits = net(calibration_volume(seed))[0]  # (C, z, y, x)
    margin = logits[1:].max(0).values - logits[0]  # > 0 where some foreground class wins
    shift = torch.quantile(margin.flatten().float(), BG_FRACTION).item()
    seg_layer = net.decoder.seg_layers[-1]
    seg_layer.bias[0] += shift
    return shift


def model_dir(template: Path, dataset_id: int) -> Path:
    results = template / "nnunet" / "results"
    hits = sorted(results.glob(f"Dataset{dataset_id:03d}_*"))
    if len(hits) != 1:
        raise SystemExit(f"make_random_weights: dataset {dataset_id} not found (once) in {results}: {hits}")
    trainers = sorted(p for p in hits[0].iterdir() if p.is_dir() and p.name.endswith("__3d_fullres"))
    if len(trainers) != 1:
        raise SystemExit(f"make_random_weights: expected one 3d_fullres trainer folder in {hits[0]}: {trainers}")
    return trainers[0]


def make_one(template: Path, out: Path, dataset_id: int, seed: int) -> dict:
    if dataset_id not in ARCHITECTURES:
        raise SystemExit(f"make_random_weights: no official architecture known for id {dataset_id} "
                         f"(known: {sorted(ARCHITECTURES)})")
    n_stages, patch = ARCHITECTURES[dataset_id]
    src = model_dir(template, dataset_id)
    dst = out / src.relative_to(template)
    plans = json.loads((src / "plans.json").read_text())
    dataset_json = json.loads((src / "dataset.json").read_text())
    src_ckpt = torch.load(src / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    trainer_name = src_ckpt.get("trainer_name") or src.name.split("__")[0]

    plans["configurations"]["3d_fullres"] = official_configuration(
        plans["configurations"]["3d_fullres"], n_stages, patch)
    n_classes = len(dataset_json["labels"])

    torch.manual_seed(seed + dataset_id)
    net = build_network(plans["configurations"]["3d_fullres"], n_classes)
    net.apply(net.initialize)  # nnU-Net's default init for PlainConvUNet (InitWeights_He(1e-2))
    shift = favour_background(net, seed + dataset_id)

    dst.mkdir(parents=True, exist_ok=True)
    (dst / "fold_0").mkdir(exist_ok=True)
    (dst / "plans.json").write_text(json.dumps(plans, indent=4))
    (dst / "dataset.json").write_text(json.dumps(dataset_json, indent=4))
    # any other small files of the template folder (none today) come along unchanged
    for f in src.iterdir():
        if f.is_file() and not (dst / f.name).exists():
            shutil.copy2(f, dst / f.name)
    ckpt = {
        "network_weights": net.state_dict(),
        "optimizer_state": None,
        "grad_scaler_state": None,
        "logging": {},
        "_best_ema": None,
        "current_epoch": 1000,
        "init_args": {
            "plans": plans,
            "configuration": "3d_fullres",
            "fold": 0,
            "dataset_json": dataset_json,
            "device": "cpu",
        },
        "trainer_name": trainer_name,
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    torch.save(ckpt, dst / "fold_0" / "checkpoint_final.pth")
    n_params = sum(p.numel() for p in net.parameters())
    return {"id": dataset_id, "folder": str(dst.relative_to(out)), "stages": n_stages, "patch": patch,
            "classes": n_classes, "params": n_params, "bg_bias_shift": round(shift, 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="weights home to write (created)")
    ap.add_argument("--ids", required=True, type=int, nargs="+", help="dataset ids, e.g. 291 292 293 294 295 297 298")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE,
                    help=f"home to take plans.json/dataset.json/trainer names from (default {DEFAULT_TEMPLATE})")
    args = ap.parse_args(argv)

    torch.set_num_threads(max(1, torch.get_num_threads()))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(CONFIG_JSON, indent=4))
    t0 = time.perf_counter()
    for dataset_id in args.ids:
        t = time.perf_counter()
        info = make_one(args.template, args.out, dataset_id, args.seed)
        info["seconds"] = round(time.perf_counter() - t, 1)
        print(json.dumps(info), flush=True)
    print(f"make_random_weights: wrote {len(args.ids)} model(s) to {args.out} in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
