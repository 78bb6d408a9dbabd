#!/usr/bin/env python3
"""Write tiny random-weight models, in the official layout, for datasets that ../shared's
fake_weights_tiny lacks (today: 301, heartchambers_highres).

They follow fake_weights_tiny's recipe (PlainConvUNet 4-8-16-32, patch 32³, CTNormalization with the
same intensity properties, plans spacing 2.5×0.7×0.7 mm when the official task lets nnU-Net resample),
with the dataset folder, trainer, configuration and labels of our registry. The official tool and ours
then run the same networks, so their outputs can be compared (tests/data/oracle_extra).

    python3 tests/data/make_tiny_models.py --out tests/data/tiny_weights --ids 301
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from make_random_weights import build_network, favour_background  # noqa: E402

from totalseg.registry import get_model  # noqa: E402

TEMPLATE = ROOT.parent / "shared" / "data" / "fake_weights_tiny" / "nnunet" / "results" / \
    "Dataset150_icb_v0" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
NNUNET_SPACING = [2.5, 0.7, 0.7]  # (z, y, x), as fake_weights_tiny uses for nnU-Net-resampled tasks


def make_model(out: Path, dataset_id: int, spacing_xyz: list[float] | None) -> Path:
    model = get_model(dataset_id)
    plans = json.loads((TEMPLATE / "plans.json").read_text())
    conf = copy.deepcopy(plans["configurations"]["3d_fullres"])
    conf["spacing"] = NNUNET_SPACING if spacing_xyz is None else list(reversed(spacing_xyz))
    plans["configurations"] = {model.configuration: conf}
    plans["dataset_name"] = model.folder
    labels = {"background": 0, **{name: k for k, name in sorted(model.classes.items())}}
    dataset_json = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1000, "file_ending": ".nii.gz"}

    torch.manual_seed(dataset_id)
    net = build_network(conf, len(labels))
    net.apply(net.initialize)
    favour_background(net, dataset_id)

    dst = out / "nnunet" / "results" / model.folder / model.subfolder
    (dst / "fold_0").mkdir(parents=True, exist_ok=True)
    (dst / "plans.json").write_text(json.dumps(plans, indent=4))
    (dst / "dataset.json").write_text(json.dumps(dataset_json, indent=4))
    checkpoint = {
        "network_weights": net.state_dict(), "optimizer_state": None, "grad_scaler_state": None, "logging": {},
        "_best_ema": None, "current_epoch": 1000,
        "init_args": {"plans": plans, "configuration": model.configuration, "fold": 0,
                      "dataset_json": dataset_json, "device": "cpu"},
        "trainer_name": model.subfolder.split("__")[0], "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    torch.save(checkpoint, dst / "fold_0" / "checkpoint_final.pth")
    return dst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ids", type=int, nargs="+", required=True)
    ap.add_argument("--spacing", type=float, nargs=3, help="resample spacing (x, y, z) of the task; default: "
                                                           "nnU-Net resamples (2.5×0.7×0.7 mm plans)")
    args = ap.parse_args(argv)
    for dataset_id in args.ids:
        print(make_model(args.out, dataset_id, args.spacing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
